"""Semantic segmentation loss."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def semantic_cross_entropy(logits: Tensor, target: Tensor, ignore_index: int = 255) -> Tensor:
    """Pixel-wise cross-entropy averaged over the labelled pixels of the whole batch.

    Logits are upsampled (bilinear) to the target's size first, as in Panoptic FPN. A batch without one labelled
    pixel gives exactly 0 (with a graph, so every parameter still gets a zero gradient), never NaN.

    Args:
        logits (Tensor[B, C, h, w]): raw class scores, any resolution.
        target (Tensor[B, H, W]): class ids (int64), ``ignore_index`` where unlabelled.
        ignore_index: the label that carries no loss.
    """
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    loss_sum = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="sum")
    num_labelled = (target != ignore_index).sum().clamp(min=1)
    return loss_sum / num_labelled
