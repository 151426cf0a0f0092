"""FCOS losses (Tian et al., "FCOS: Fully Convolutional One-Stage Object Detection", ICCV 2019).

Sigmoid focal loss for classification, GIoU loss on decoded boxes and BCE for centerness, each normalised by the
number of positive locations, using torchvision's ops. Everything is masked rather than indexed, so there is no
host synchronisation and a batch without positives gives finite zeros.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from perception.ops.boxes import boxes_to_ltrb, ltrb_to_boxes


def centerness_target(ltrb: Tensor) -> Tensor:
    """FCOS centerness sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) of Tensor[..., 4] distances (>= 0)."""
    ltrb = ltrb.clamp(min=0)
    lr, tb = ltrb[..., 0::2], ltrb[..., 1::2]
    ratio = (lr.min(-1).values / lr.max(-1).values.clamp(min=1e-6)) * (
        tb.min(-1).values / tb.max(-1).values.clamp(min=1e-6))
    return ratio.sqrt()


def fcos_losses(cls_logits: Tensor, box_regression: Tensor, centerness: Tensor, points: Tensor,
                gt_classes: Tensor, gt_boxes: Tensor, positive: Tensor, image_mask: Tensor,
                focal_alpha: float = 0.25, focal_gamma: float = 2.0) -> dict[str, Tensor]:
    """The three FCOS losses over a batch, normalised by the number of positives (at least 1).

    Args:
        cls_logits (Tensor[B, A, C]): classification logits per location.
        box_regression (Tensor[B, A, 4]): predicted ltrb distances in pixels (>= 0).
        centerness (Tensor[B, A]): centerness logits.
        points (Tensor[A, 2]): location centres in pixels.
        gt_classes (Tensor[B, A]): matched class per location (any value where not positive).
        gt_boxes (Tensor[B, A, 4]): matched box per location (a finite, non-degenerate box where not positive).
        positive (Tensor[B, A]): bool, location is a positive.
        image_mask (Tensor[B]): bool, the image carries detection labels; other images contribute nothing
            (their locations are neither positives nor negatives).
        focal_alpha, focal_gamma: focal loss parameters.

    Returns:
        ``{"cls": ..., "box": ..., "ctr": ...}``, scalars.
    """
    num_classes = cls_logits.shape[-1]
    num_pos = positive.sum().clamp(min=1).to(torch.float32)

    # Classification over every location of the labelled images: one-hot targets at the positives.
    cls_target = F.one_hot(gt_classes.clamp(0, num_classes - 1), num_classes).to(cls_logits.dtype)
    cls_target = cls_target * positive.unsqueeze(-1)
    focal = sigmoid_focal_loss(cls_logits.float(), cls_target.float(), alpha=focal_alpha, gamma=focal_gamma,
                               reduction="none")                                  # [B, A, C]
    loss_cls = (focal.sum(-1) * image_mask.unsqueeze(-1)).sum() / num_pos

    # Box regression at the positives: GIoU between decoded prediction and the matched box.
    pred_boxes = ltrb_to_boxes(points.unsqueeze(0), box_regression.float())       # [B, A, 4]
    giou = generalized_box_iou_loss(pred_boxes, gt_boxes.float(), reduction="none")  # [B, A]
    loss_box = torch.where(positive, giou, 0.0).sum() / num_pos

    # Centerness at the positives.
    ctr_target = centerness_target(boxes_to_ltrb(points.unsqueeze(0), gt_boxes.float()))
    bce = F.binary_cross_entropy_with_logits(centerness.float(), ctr_target, reduction="none")
    loss_ctr = torch.where(positive, bce, 0.0).sum() / num_pos
    return {"cls": loss_cls, "box": loss_box, "ctr": loss_ctr}
