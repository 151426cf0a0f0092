"""Detection post-processing: the FCOS head's raw outputs (PyTorch) and the exported graph's outputs (numpy) to
boxes.

Both take the same steps: scores sqrt(class probability * centerness), per pyramid level the threshold and the
top-k, then the boxes of the kept candidates only, clipped, class-wise NMS, the best ``detections_per_img``.

- :func:`fcos_postprocess` (what ``FCOSHead.postprocess`` runs): decodes boxes only for the candidates that
  survive the threshold and top-k (their ltrb regressions and locations gathered), never for every location;
  torchvision's ``batched_nms``.
- :func:`fcos_postprocess_numpy` (the reference for ONNX callers): the graph ends at ``boxes`` (xyxy per
  location, network pixels; decoded in the graph with :func:`perception.ops.boxes.ltrb_to_boxes`, 4 additions
  per location) and ``scores`` (per location and class); the top-k is a partial selection and the greedy NMS
  stops once ``detections_per_img`` boxes are kept. The kept indices equal ``torchvision.ops.batched_nms``'s.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import batched_nms, clip_boxes_to_image

from perception.ops.boxes import ltrb_to_boxes


@torch.no_grad()
def fcos_postprocess(cls_logits: Tensor, box_regression: Tensor, centerness: Tensor, points: Tensor,
                     num_per_level: Sequence[int], image_size: tuple[int, int], score_thresh: float = 0.2,
                     nms_thresh: float = 0.6, topk_candidates: int = 1000, detections_per_img: int = 100
                     ) -> list[dict[str, Tensor]]:
    """Detections of each image from the FCOS head's raw outputs.

    Args:
        cls_logits (Tensor[B, A, C]): class logits of every location (levels concatenated).
        box_regression (Tensor[B, A, 4]): ltrb distances in input pixels.
        centerness (Tensor[B, A]): centerness logits.
        points (Tensor[A, 2]): (x, y) of every location.
        num_per_level: locations per level.
        image_size: (H, W) of the network input, to clip boxes to.
        score_thresh, nms_thresh, topk_candidates, detections_per_img: as ``FCOSHead``.

    Returns:
        per image ``{"boxes": Tensor[N, 4], "scores": Tensor[N], "labels": Tensor[N]}`` (float32 boxes and
        scores, int64 labels), input pixels, best first.
    """
    batch, locations, num_classes = cls_logits.shape
    if sum(num_per_level) != locations:
        raise ValueError(f"num_per_level sums to {sum(num_per_level)} but there are {locations} locations")
    # In place after the two sigmoids: one [B, A, C] buffer, the same values as sqrt(cls * ctr).
    scores = cls_logits.float().sigmoid().mul_(centerness.float().sigmoid().unsqueeze(-1)).sqrt_()
    scores = scores.reshape(batch, -1)                                                      # [B, A * C]
    # One threshold pass and one host sync for the whole batch; nonzero's order is ascending flat index, so each
    # (image, level) is one contiguous run of ``candidates``.
    image, flat = torch.nonzero(scores > score_thresh, as_tuple=True)
    bounds = torch.tensor([0, *np.cumsum(num_per_level).tolist()], device=flat.device) * num_classes
    segment = image * len(num_per_level) + torch.bucketize(flat, bounds[1:], right=True)
    counts = torch.bincount(segment, minlength=batch * len(num_per_level)).tolist()
    kept_scores = scores[image, flat]
    results, start = [], 0
    for b in range(batch):
        per_image, per_score = [], []
        for level in range(len(num_per_level)):
            n = counts[b * len(num_per_level) + level]
            keep, level_scores = flat[start:start + n], kept_scores[start:start + n]
            start += n
            if n > topk_candidates:
                level_scores, order = level_scores.topk(topk_candidates)
                keep = keep[order]
            per_image.append(keep)
            per_score.append(level_scores)
        keep, image_scores = torch.cat(per_image), torch.cat(per_score)
        location = torch.div(keep, num_classes, rounding_mode="floor")
        labels = keep % num_classes
        boxes = ltrb_to_boxes(points[location], box_regression[b, location].float())
        boxes = clip_boxes_to_image(boxes, image_size)
        best = batched_nms(boxes, image_scores, labels, nms_thresh)[:detections_per_img]
        results.append({"boxes": boxes[best], "scores": image_scores[best], "labels": labels[best]})
    return results


def pyramid_sizes(height: int, width: int, strides: Sequence[int] = (8, 16, 32, 64, 128)) -> list[tuple[int, int]]:
    """(h, w) of each detection level for a padded input of ``height x width`` (multiples of 32).

    Levels up to stride 32 divide the input exactly; P6 and P7 come from 3x3 stride-2 convolutions with padding
    1, so each halves the previous level rounding up.
    """
    sizes = []
    for stride in strides:
        if stride <= 32:
            sizes.append((height // stride, width // stride))
        else:
            h, w = sizes[-1]
            sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes


def box_iou_numpy(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box (ndarray[4]) with each of ``boxes`` (ndarray[N, 4]), xyxy."""
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def nms_numpy(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_keep: int | None = None
              ) -> np.ndarray:
    """Greedy NMS (torchvision.ops.nms semantics: drop boxes with IoU > threshold); indices by falling score.

    ``max_keep``: stop once that many are kept (greedy NMS decides its boxes best first, so these are the first
    ``max_keep`` of the full answer).
    """
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size and (max_keep is None or len(keep) < max_keep):
        best = order[0]
        keep.append(best)
        if order.size == 1:
            break
        rest = order[1:]
        order = rest[box_iou_numpy(boxes[best], boxes[rest]) <= iou_threshold]
    return np.asarray(keep, np.int64)


def batched_nms_numpy(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float,
                      max_keep: int | None = None) -> np.ndarray:
    """Class-wise NMS, as torchvision's ``batched_nms``: boxes of different classes never suppress each other
    (``max_keep`` as :func:`nms_numpy`)."""
    if boxes.size == 0:
        return np.zeros(0, np.int64)
    # The coordinate trick: shift each class to its own region so that one NMS pass never mixes classes.
    offsets = labels.astype(np.float64)[:, None] * (float(boxes.max()) + 1.0)
    return nms_numpy(boxes.astype(np.float64) + offsets, scores, iou_threshold, max_keep)


def topk_stable_numpy(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest ``values`` by falling value, ties by index: ``np.argsort(-values,
    kind="stable")[:k]`` by a partial selection (linear) and a sort of the ``k`` chosen only."""
    if len(values) <= k:
        return np.argsort(-values, kind="stable")
    kth = np.partition(values, len(values) - k)[len(values) - k]     # the k-th largest value
    above = np.flatnonzero(values > kth)
    chosen = np.sort(np.concatenate([above, np.flatnonzero(values == kth)[:k - len(above)]]))
    return chosen[np.argsort(-values[chosen], kind="stable")]


def fcos_postprocess_numpy(boxes: np.ndarray, scores: np.ndarray, num_per_level: Sequence[int],
                           image_size: tuple[int, int], score_thresh: float = 0.2, nms_thresh: float = 0.6,
                           topk_candidates: int = 1000, detections_per_img: int = 100
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detections of one image from the decoded head outputs.

    Args:
        boxes (ndarray[A, 4]): decoded xyxy box of every location (levels concatenated), network pixels.
        scores (ndarray[A, C]): score of every location and class.
        num_per_level: locations per level (from :func:`pyramid_sizes`).
        image_size: (H, W) of the network input, to clip to.
        score_thresh, nms_thresh, topk_candidates, detections_per_img: as ``FCOSHead``.

    Returns:
        boxes (ndarray[N, 4] float32), scores (ndarray[N] float32), labels (ndarray[N] int64), best first.
    """
    if sum(num_per_level) != len(boxes):
        raise ValueError(f"num_per_level sums to {sum(num_per_level)} but there are {len(boxes)} locations; "
                         "the input size or the strides do not match the exported network")
    num_classes = scores.shape[1]
    kept_boxes, kept_scores, kept_labels = [], [], []
    start = 0
    for n in num_per_level:
        flat = scores[start:start + n].reshape(-1)
        keep = np.flatnonzero(flat > score_thresh)
        if len(keep) > topk_candidates:
            keep = keep[topk_stable_numpy(flat[keep], topk_candidates)]
        kept_scores.append(flat[keep])
        kept_boxes.append(boxes[start:start + n][keep // num_classes])
        kept_labels.append(keep % num_classes)
        start += n
    out_boxes = np.concatenate(kept_boxes).astype(np.float32)
    out_boxes[:, 0::2] = out_boxes[:, 0::2].clip(0, image_size[1])
    out_boxes[:, 1::2] = out_boxes[:, 1::2].clip(0, image_size[0])
    out_scores = np.concatenate(kept_scores).astype(np.float32)
    out_labels = np.concatenate(kept_labels).astype(np.int64)
    keep = batched_nms_numpy(out_boxes, out_scores, out_labels, nms_thresh, detections_per_img)
    return out_boxes[keep], out_scores[keep], out_labels[keep]
