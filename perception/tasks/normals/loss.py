"""Surface normal losses over the valid pixels (a ground-truth normal that is not the zero vector)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def valid_normals(target: Tensor) -> Tensor:
    """Bool[B, H, W]: pixels whose ground-truth normal (Tensor[B, H, W, 3]) is not the zero vector."""
    return target.abs().sum(-1) > 0


def normals_loss(pred: Tensor, target: Tensor, kind: str = "cosine") -> Tensor:
    """Mean over the batch's valid pixels of ``1 - cos`` (``cosine``) or ``|n_pred - n_true|_1`` (``l1``).

    Computed in float32; exactly 0, still attached to ``pred``'s graph, when no pixel is valid.

    Args:
        pred (Tensor[B, 3, H, W]): predicted normals (renormalised here, so any non-zero vector is fine).
        target (Tensor[B, H, W, 3]): ground-truth unit normals, 0 where there is none (and in the padding).
        kind: ``cosine`` or ``l1``.
    """
    if kind not in ("cosine", "l1"):
        raise ValueError(f"normals loss: got {kind!r}, expected 'cosine' or 'l1'")
    valid = valid_normals(target)
    pred = F.normalize(pred.float(), dim=1, eps=1e-6)
    # Labels read from files are only approximately unit length: normalise them too (zeros stay zeros).
    true = F.normalize(target.float().permute(0, 3, 1, 2), dim=1, eps=1e-6)
    if kind == "cosine":
        per_pixel = 1.0 - (pred * true).sum(1)
    else:
        per_pixel = (pred - true).abs().sum(1)
    # torch.where, not a product with the mask: the sum stays attached to the graph even with no valid pixel.
    return torch.where(valid, per_pixel, 0.0).sum() / valid.sum().clamp(min=1)
