"""Depth losses in log space over valid pixels (ground truth > 0).

Both losses take the predicted log-depth, so the head's parameterisation (log or bounded sigmoid) stays the
head's business. Ground truth beyond ``max_depth`` counts as no measurement: stereo depth has no upper bound
(Cityscapes' smallest disparity code gives about 121 km), and a pixel the head cannot predict (it is clamped to
its own ``max_depth``) would only pull the loss towards an absurd target.
"""
from __future__ import annotations

import torch
from torch import Tensor


def valid_depth(gt: Tensor, max_depth: float | None = None) -> Tensor:
    """Bool Tensor of the pixels that carry a usable measurement: ``0 < gt`` (and ``gt <= max_depth`` when set)."""
    valid = gt > 0
    return valid & (gt <= max_depth) if max_depth is not None else valid


def silog_loss(pred_log: Tensor, gt: Tensor, lam: float = 0.85, scale: float = 10.0,
               max_depth: float | None = None) -> Tensor:
    """Scale-invariant log loss (Eigen et al. 2014, in the form BTS trains with), per image then averaged.

    ``scale * sqrt(mean(d^2) - lam * mean(d)^2)`` with ``d = pred_log - log(gt)`` over an image's valid pixels;
    the mean over the images that have at least one valid pixel. Exactly 0 (no NaN) if none has.

    Args:
        pred_log (Tensor[B, H, W]): predicted log-depth.
        gt (Tensor[B, H, W]): depth in metres, 0 (or less) where there is no measurement.
        lam: variance weight; 1 makes the loss fully scale invariant, 0 makes it an L2 on log-depth.
        scale: multiplier (10 in BTS).
        max_depth: ground truth beyond this many metres is no measurement (``None``: no bound).
    """
    valid = valid_depth(gt, max_depth)
    d = torch.where(valid, pred_log.float() - torch.log(gt.float().clamp(min=1e-6)), 0.0)  # [B, H, W]
    n = valid.flatten(1).sum(1)                                          # [B]
    n_safe = n.clamp(min=1)
    mean_d = d.flatten(1).sum(1) / n_safe
    mean_d2 = d.square().flatten(1).sum(1) / n_safe
    per_image = scale * torch.sqrt((mean_d2 - lam * mean_d.square()).clamp(min=1e-8))  # [B]
    has = (n > 0).to(per_image.dtype)
    return (per_image * has).sum() / has.sum().clamp(min=1)


def l1_log_loss(pred_log: Tensor, gt: Tensor, max_depth: float | None = None) -> Tensor:
    """Mean absolute log-depth error over all valid pixels of the batch; exactly 0 if there are none.

    Args:
        pred_log (Tensor[B, H, W]): predicted log-depth.
        gt (Tensor[B, H, W]): depth in metres, 0 (or less) where there is no measurement.
        max_depth: ground truth beyond this many metres is no measurement (``None``: no bound).
    """
    valid = valid_depth(gt, max_depth)
    d = torch.where(valid, pred_log.float() - torch.log(gt.float().clamp(min=1e-6)), 0.0)
    return d.abs().sum() / valid.sum().clamp(min=1)
