"""Monocular depth metrics (Eigen et al. 2014; the BTS/AdaBins evaluation), plus the MTL benchmarks' errors.

Over the valid pixels (ground truth > ``min_depth``, below ``depth_cap`` when set, inside the Eigen crop when
asked), with predictions clamped to ``[min_depth, depth_cap]``:

    abs_rel  = mean(|g - p| / g)              sq_rel   = mean((g - p)^2 / g)
    rmse     = sqrt(mean((g - p)^2))          rmse_log = sqrt(mean((log g - log p)^2))
    log10    = mean(|log10 g - log10 p|)      delta_k  = mean(max(g / p, p / g) < 1.25^k), k = 1, 2, 3
    silog    = 100 * sqrt(mean(e^2) - mean(e)^2), e = log p - log g

``image`` averaging computes each per image and averages over images (the depth literature's convention);
``pixel`` averaging pools every valid pixel of the split. ``abs_err`` = mean |g - p| and ``rel_err`` =
mean |g - p| / g are always pooled over pixels (the MTL benchmarks' absolute and relative error).
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import Tensor

from perception.utils.distributed import all_reduce_sum

# NYUv2 Eigen crop of a 480 x 640 image: rows 45:471, columns 41:601.
EIGEN_CROP = (45 / 480, 471 / 480, 41 / 640, 601 / 640)
# Per-pixel terms summed per image, in this order.
_TERMS = ("abs_rel", "sq_rel", "sq_err", "sq_log", "log10", "delta1", "delta2", "delta3", "e", "e2", "abs_err")


def eigen_crop_mask(height: int, width: int, device: torch.device | str = "cpu") -> Tensor:
    """Bool[H, W], true inside the Eigen crop scaled to ``(height, width)``."""
    y0, y1, x0, x1 = EIGEN_CROP
    mask = torch.zeros(height, width, dtype=torch.bool, device=device)
    mask[round(y0 * height):round(y1 * height), round(x0 * width):round(x1 * width)] = True
    return mask


def depth_terms(pred: Tensor, gt: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image sums of every per-pixel term over the valid pixels.

    Args:
        pred (Tensor[B, H, W]): predicted depth, positive.
        gt (Tensor[B, H, W]): ground-truth depth.
        valid (Tensor[B, H, W]): bool, pixels to evaluate.

    Returns:
        sums (Tensor[B, len(_TERMS)]) float64 and counts (Tensor[B]) of valid pixels.
    """
    pred = pred.double()
    gt = torch.where(valid, gt.double(), 1.0)
    pred = torch.where(valid, pred, 1.0)
    diff = gt - pred
    log_ratio = torch.log(pred) - torch.log(gt)
    ratio = torch.maximum(gt / pred, pred / gt)
    terms = torch.stack([
        diff.abs() / gt,
        diff.square() / gt,
        diff.square(),
        log_ratio.square(),
        (torch.log10(gt) - torch.log10(pred)).abs(),
        (ratio < 1.25).double(),
        (ratio < 1.25 ** 2).double(),
        (ratio < 1.25 ** 3).double(),
        log_ratio,
        log_ratio.square(),
        diff.abs(),
    ], dim=1)                                                           # [B, T, H, W]
    terms = terms * valid.unsqueeze(1)
    return terms.flatten(2).sum(-1), valid.flatten(1).sum(-1).double()


def scores_from_means(m: dict[str, Tensor]) -> dict[str, Tensor]:
    """The metrics from the means of the per-pixel terms (each a Tensor of any shape)."""
    return {
        "abs_rel": m["abs_rel"],
        "sq_rel": m["sq_rel"],
        "rmse": m["sq_err"].sqrt(),
        "rmse_log": m["sq_log"].sqrt(),
        "log10": m["log10"],
        "delta1": m["delta1"],
        "delta2": m["delta2"],
        "delta3": m["delta3"],
        "silog": 100.0 * (m["e2"] - m["e"].square()).clamp(min=0).sqrt(),
    }


_METRICS = tuple(scores_from_means({k: torch.zeros(()) for k in _TERMS}))


class DepthMetric:
    """Accumulates depth errors over a split on the predictions' device (no host synchronisation per update).

    Args:
        min_depth: ground truth below this is invalid; predictions are clamped to at least this.
        depth_cap: ground truth above this is invalid and predictions are clamped to it (0: no cap).
        eigen_crop: evaluate inside the Eigen crop only (scaled to each image's size).
        average: ``image`` or ``pixel`` (see the module docstring).
        device: where the sums live.
    """

    def __init__(self, min_depth: float = 1e-3, depth_cap: float = 0.0, eigen_crop: bool = False,
                 average: Literal["image", "pixel"] = "image", device: torch.device | str = "cpu") -> None:
        if average not in ("image", "pixel"):
            raise ValueError(f"depth metric average: got {average!r}, expected 'image' or 'pixel'")
        self.min_depth = min_depth
        self.depth_cap = depth_cap
        self.eigen_crop = eigen_crop
        self.average = average
        # [pixel sums of the terms (T), pixel count, sums over images of each image's metrics (M), image count]
        self.state = torch.zeros(len(_TERMS) + len(_METRICS) + 2, dtype=torch.float64, device=device)

    def update(self, pred: Tensor, gt: Tensor, sizes: Sequence[tuple[int, int]] | None = None) -> None:
        """Add a batch.

        Args:
            pred (Tensor[B, H, W]): predicted depth in metres.
            gt (Tensor[B, H, W]): ground truth in metres, 0 where unmeasured (and in the padding).
            sizes: each image's (h, w) before padding, for the Eigen crop (default: the whole map).
        """
        if pred.shape != gt.shape:
            raise ValueError(f"depth metric: prediction shape {tuple(pred.shape)} differs from the ground truth's "
                             f"{tuple(gt.shape)}")
        pred = pred.to(self.state.device)
        gt = gt.to(self.state.device)
        upper = self.depth_cap if self.depth_cap > 0 else None
        valid = gt > self.min_depth
        if upper is not None:
            valid &= gt <= upper
        if self.eigen_crop:
            valid &= self._crop_masks(gt.shape, sizes)
        pred = pred.clamp(min=max(self.min_depth, 1e-6), max=upper)
        sums, counts = depth_terms(pred, gt, valid)                      # [B, T], [B]
        has = (counts > 0).double()                                      # images without valid pixels count nowhere
        means = sums / counts.clamp(min=1).unsqueeze(1)
        per_image = scores_from_means({k: means[:, i] for i, k in enumerate(_TERMS)})   # metric -> [B]
        per_image = torch.stack([per_image[k] for k in _METRICS], dim=1) * has.unsqueeze(1)
        t, m = len(_TERMS), len(_METRICS)
        self.state[:t] += sums.sum(0)
        self.state[t] += counts.sum()
        self.state[t + 1:t + 1 + m] += per_image.sum(0)
        self.state[t + 1 + m] += has.sum()

    def _crop_masks(self, shape: torch.Size, sizes: Sequence[tuple[int, int]] | None) -> Tensor:
        b, h, w = shape
        masks = torch.zeros(b, h, w, dtype=torch.bool, device=self.state.device)
        for i in range(b):
            hi, wi = sizes[i] if sizes is not None else (h, w)
            masks[i, :hi, :wi] = eigen_crop_mask(hi, wi, self.state.device)
        return masks

    def reduce(self) -> None:
        """Sum over all processes (a no-op without torch.distributed)."""
        all_reduce_sum(self.state)

    def compute(self, prefix: str = "depth/") -> dict[str, float]:
        """All metrics (see the module docstring); zeros when no pixel was valid."""
        state = self.state.cpu()
        t, m = len(_TERMS), len(_METRICS)
        pixels, images = state[t], state[t + 1 + m]
        if pixels == 0:
            return {f"{prefix}{k}": 0.0 for k in (*_METRICS, "abs_err", "rel_err")}
        pooled = {k: state[i] / pixels for i, k in enumerate(_TERMS)}
        if self.average == "pixel":
            out = scores_from_means(pooled)
        else:
            out = {k: state[t + 1 + i] / images for i, k in enumerate(_METRICS)}
        out["abs_err"] = pooled["abs_err"]
        out["rel_err"] = pooled["abs_rel"]
        return {f"{prefix}{k}": float(v) for k, v in out.items()}
