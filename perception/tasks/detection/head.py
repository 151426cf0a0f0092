"""FCOS: anchor-free dense detection (Tian et al., ICCV 2019), as torchvision's FCOS behaves.

Three named pieces, as in torchvision: ``FCOSHead.forward`` returns raw tensors, ``FCOSHead.compute_loss``
assigns targets and computes the losses (``perception.tasks.detection.loss``), ``FCOSHead.postprocess``
thresholds, keeps the top-k per level, decodes those candidates' boxes and runs class-wise NMS
(``perception.tasks.detection.decode``).

Target assignment (per location and ground-truth box): the location lies inside the box, within
``center_sampling_radius`` strides of its centre, and its largest distance to a side lies in the level's range
(4 to 8 strides; the first level from 0, the last to infinity). A location matching several boxes takes the
smallest.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perception.ops.boxes import ltrb_to_boxes
from perception.tasks.detection.decode import fcos_postprocess
from perception.tasks.detection.loss import fcos_losses
from perception.ops.layers import conv_unit


MAX_LOG_DISTANCE = 7.0


class Scale(nn.Module):
    """A learnable scalar multiplier (one per pyramid level for the box regression)."""

    def __init__(self, init: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def make_points(sizes: Sequence[tuple[int, int]], strides: Sequence[int], device: torch.device,
                dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Location centres of every level, concatenated level by level in row-major order.

    Args:
        sizes: (H, W) of each level.
        strides: stride of each level.

    Returns:
        points (Tensor[A, 2]) as (x, y) pixel centres ``(j + 0.5) * stride``, and the stride of each (Tensor[A]).
    """
    points, point_strides = [], []
    for (h, w), s in zip(sizes, strides):
        ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) * s
        xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) * s
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1))
        point_strides.append(torch.full((h * w,), float(s), device=device, dtype=dtype))
    return torch.cat(points), torch.cat(point_strides)


def pad_targets(boxes: Sequence[Tensor], labels: Sequence[Tensor], device: torch.device
                ) -> tuple[Tensor, Tensor, Tensor]:
    """Per-image boxes and labels padded to one batch tensor (at least one slot per image).

    Returns:
        gt_boxes (Tensor[B, M, 4]) padded with a unit box, gt_labels (Tensor[B, M]) padded with 0, and
        gt_valid (Tensor[B, M]) bool.
    """
    num = max([len(b) for b in boxes] + [1])
    batch = len(boxes)
    gt_boxes = torch.tensor([0.0, 0.0, 1.0, 1.0], device=device).repeat(batch, num, 1)
    gt_labels = torch.zeros(batch, num, dtype=torch.int64, device=device)
    gt_valid = torch.zeros(batch, num, dtype=torch.bool, device=device)
    for i, (b, l) in enumerate(zip(boxes, labels)):
        n = len(b)
        if n:
            gt_boxes[i, :n] = b.to(device=device, dtype=torch.float32)
            gt_labels[i, :n] = l.to(device)
            gt_valid[i, :n] = True
    return gt_boxes, gt_labels, gt_valid


def fcos_assign(points: Tensor, point_strides: Tensor, num_per_level: Sequence[int], gt_boxes: Tensor,
                gt_valid: Tensor, center_sampling_radius: float = 1.5) -> tuple[Tensor, Tensor]:
    """Match every location to at most one ground-truth box (batched, no host synchronisation).

    Args:
        points (Tensor[A, 2]): location centres.
        point_strides (Tensor[A]): stride of each location.
        num_per_level: number of locations of each level, in order.
        gt_boxes (Tensor[B, M, 4]): padded ground-truth boxes.
        gt_valid (Tensor[B, M]): bool, which slots are real boxes.
        center_sampling_radius: positives lie within this many strides of the box centre.

    Returns:
        matched (Tensor[B, A]) index of the matched box (0 where none) and positive (Tensor[B, A]) bool.
    """
    # Scale range of each location: (4 * stride, 8 * stride), open at the first and last level.
    lower = point_strides * 4
    upper = point_strides * 8
    lower[: num_per_level[0]] = 0
    upper[-num_per_level[-1]:] = float("inf")

    x = points[None, :, None, 0]                                                   # [1, A, 1]
    y = points[None, :, None, 1]
    x0, y0, x1, y1 = (gt_boxes[:, None, :, k] for k in range(4))                   # [B, 1, M]
    ltrb = torch.stack([x - x0, y - y0, x1 - x, y1 - y], dim=-1)                   # [B, A, M, 4]
    inside = ltrb.min(-1).values > 0
    max_dist = ltrb.max(-1).values
    in_range = (max_dist > lower[None, :, None]) & (max_dist < upper[None, :, None])
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    radius = (point_strides * center_sampling_radius)[None, :, None]
    near_centre = ((cx - x).abs() < radius) & ((cy - y).abs() < radius)
    match = inside & in_range & near_centre & gt_valid[:, None, :]                # [B, A, M]

    area = ((x1 - x0) * (y1 - y0)).expand_as(match)
    cost = torch.where(match, area, torch.full_like(area, float("inf")))
    min_cost, matched = cost.min(dim=-1)                                           # [B, A]
    return matched, torch.isfinite(min_cost)


class FCOSHead(nn.Module):
    """Classification, box-regression and centerness towers shared across pyramid levels.

    Args:
        in_channels: channels of the pyramid levels.
        num_classes: number of object classes.
        strides: strides of the levels it reads (P3..P7: 8 .. 128).
        num_convs: conv-GN-ReLU layers per tower.
        tower: the towers' unit, ``conv`` or ``dwsep`` (:func:`perception.ops.layers.conv_unit`).
        prior_prob: initial foreground probability.
        center_sampling_radius, score_thresh, nms_thresh, topk_candidates, detections_per_img,
        focal_alpha, focal_gamma: see :class:`perception.tasks.detection.config.DetectionConfig`.
    """

    def __init__(self, in_channels: int, num_classes: int, strides: Sequence[int] = (8, 16, 32, 64, 128),
                 num_convs: int = 4, prior_prob: float = 0.01, center_sampling_radius: float = 1.5,
                 score_thresh: float = 0.2, nms_thresh: float = 0.6, topk_candidates: int = 1000,
                 detections_per_img: int = 100, focal_alpha: float = 0.25, focal_gamma: float = 2.0,
                 tower: str = "conv") -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"detection num_classes: got {num_classes}, expected at least 1")
        self.num_classes = num_classes
        self.strides = tuple(strides)
        self.center_sampling_radius = center_sampling_radius
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.topk_candidates = topk_candidates
        self.detections_per_img = detections_per_img
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

        self.cls_tower = nn.Sequential(*[conv_unit(in_channels, in_channels, tower) for _ in range(num_convs)])
        self.box_tower = nn.Sequential(*[conv_unit(in_channels, in_channels, tower) for _ in range(num_convs)])
        self.cls_logits = nn.Conv2d(in_channels, num_classes, 3, padding=1)
        self.box_pred = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.ctr_pred = nn.Conv2d(in_channels, 1, 3, padding=1)
        self.scales = nn.ModuleList([Scale(1.0) for _ in self.strides])
        self._init_weights(prior_prob)

    def _init_weights(self, prior_prob: float) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, features: Sequence[Tensor]) -> dict:
        """Raw predictions of every location, levels concatenated.

        Args:
            features: [P3, ..., P7] (the levels of ``strides``).

        Returns:
            ``cls_logits`` (Tensor[B, A, C]), ``box_regression`` (Tensor[B, A, 4], ltrb distances in pixels,
            > 0), ``centerness`` (Tensor[B, A], logits), ``points`` (Tensor[A, 2]) and ``point_strides``
            (Tensor[A]), and ``num_per_level`` (tuple of ints, locations per level).
        """
        cls_per_level, box_per_level, ctr_per_level, sizes = [], [], [], []
        # The box and centerness predictors read the same map: one 3x3 convolution with their 4 + 1 filters
        # stacked (the same values as the two; a convolution with 1 output channel costs about what one with 5
        # does on the CPU).
        box_ctr_weight = torch.cat([self.box_pred.weight, self.ctr_pred.weight])
        box_ctr_bias = torch.cat([self.box_pred.bias, self.ctr_pred.bias])
        for level, (x, stride) in enumerate(zip(features, self.strides)):
            cls_feature = self.cls_tower(x)
            box_ctr = F.conv2d(self.box_tower(x), box_ctr_weight, box_ctr_bias, padding=1)
            # Distances in units of the level's stride as exp(x) (as the FCOS paper does), never a ReLU: trained
            # from scratch, a ReLU'd regression can be pushed below 0 everywhere early on and never recover (its
            # GIoU loss stays at 1). Float32 and the clamp (e^7 ~ 1100 strides) keep exp finite under AMP.
            log_ltrb = self.scales[level](box_ctr[:, :4]).float().clamp(max=MAX_LOG_DISTANCE)
            ltrb = torch.exp(log_ltrb) * stride
            cls_per_level.append(self.cls_logits(cls_feature).flatten(2).transpose(1, 2))  # [B, HW, C]
            box_per_level.append(ltrb.flatten(2).transpose(1, 2))                        # [B, HW, 4]
            ctr_per_level.append(box_ctr[:, 4].flatten(1))                               # [B, HW]
            sizes.append((x.shape[-2], x.shape[-1]))
        points, point_strides = make_points(sizes, self.strides, features[0].device)
        return {
            "cls_logits": torch.cat(cls_per_level, dim=1),
            "box_regression": torch.cat(box_per_level, dim=1),
            "centerness": torch.cat(ctr_per_level, dim=1),
            "points": points,
            "point_strides": point_strides,
            "num_per_level": tuple(h * w for h, w in sizes),
        }

    def compute_loss(self, outputs: dict[str, Tensor], boxes: Sequence[Tensor], labels: Sequence[Tensor],
                     image_mask: Tensor) -> dict[str, Tensor]:
        """Assign targets and compute the FCOS losses.

        Args:
            outputs: what ``forward`` returned.
            boxes: per image Tensor[N_i, 4] ground-truth boxes (x0, y0, x1, y1) in input pixels.
            labels: per image Tensor[N_i] class ids.
            image_mask (Tensor[B]): bool, the image carries detection labels.

        Returns:
            ``{"cls", "box", "ctr"}`` scalar losses.
        """
        device = outputs["cls_logits"].device
        points = outputs["points"]
        gt_boxes, gt_labels, gt_valid = pad_targets(boxes, labels, device)
        gt_valid = gt_valid & image_mask.to(device)[:, None]
        matched, positive = fcos_assign(points, outputs["point_strides"], outputs["num_per_level"],
                                        gt_boxes, gt_valid, self.center_sampling_radius)
        matched_boxes = torch.gather(gt_boxes, 1, matched[..., None].expand(-1, -1, 4))   # [B, A, 4]
        # Away from positives use a box around the location so that GIoU and centerness stay finite.
        stride_box = ltrb_to_boxes(points, outputs["point_strides"][:, None].expand(-1, 4) / 2)
        matched_boxes = torch.where(positive[..., None], matched_boxes, stride_box.unsqueeze(0))
        matched_classes = torch.gather(gt_labels, 1, matched)
        return fcos_losses(outputs["cls_logits"], outputs["box_regression"], outputs["centerness"], points,
                           matched_classes, matched_boxes, positive, image_mask.to(device),
                           self.focal_alpha, self.focal_gamma)

    @torch.no_grad()
    def postprocess(self, outputs: dict[str, Tensor], image_size: tuple[int, int],
                    score_thresh: float | None = None) -> list[dict[str, Tensor]]:
        """Scores sqrt(cls * centerness), threshold, top-k per level, class-wise NMS, top detections.

        Args:
            outputs: what ``forward`` returned.
            image_size: (H, W) of the network input, to clip boxes to.
            score_thresh: this call's score threshold (default: the head's ``score_thresh``).

        Returns:
            per image ``{"boxes": Tensor[N, 4], "scores": Tensor[N], "labels": Tensor[N]}``, in input pixels.
        """
        thresh = self.score_thresh if score_thresh is None else score_thresh
        return fcos_postprocess(outputs["cls_logits"], outputs["box_regression"], outputs["centerness"],
                                outputs["points"], outputs["num_per_level"], image_size, thresh, self.nms_thresh,
                                self.topk_candidates, self.detections_per_img)
