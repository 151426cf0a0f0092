"""Surface normal metrics (Eigen & Fergus 2015; the NYUv2 multi-task benchmarks' table).

Over the valid pixels (ground truth not the zero vector), with ``a`` the angle in degrees between the predicted
and the true normal (both normalised):

    mean   = mean(a)                 median = median(a)
    within_11.25, within_22.5, within_30 = share of pixels with a < 11.25, 22.5, 30 degrees (0..1)

Every value is pooled over all valid pixels of the split. So that the median can be reduced across processes
like the other metrics (a sum), the angles are counted in a histogram of ``bin_width``-degree bins (0.1 by
default) and the median is read from it, interpolated linearly inside its bin: it is exact to within one bin.
The mean and the shares are exact.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from perception.tasks.normals.loss import valid_normals
from perception.utils.distributed import all_reduce_sum

THRESHOLDS = (11.25, 22.5, 30.0)
METRICS = ("mean", "median", *(f"within_{t:g}" for t in THRESHOLDS))


def angular_errors(pred: Tensor, target: Tensor) -> Tensor:
    """Angles in degrees (float64) between the normals of ``pred`` and ``target`` (Tensor[..., 3] each)."""
    pred = torch.nn.functional.normalize(pred.double(), dim=-1, eps=1e-12)
    target = torch.nn.functional.normalize(target.double(), dim=-1, eps=1e-12)
    return torch.rad2deg(torch.acos((pred * target).sum(-1).clamp(-1.0, 1.0)))


class NormalsMetric:
    """Accumulates angular errors over a split on the predictions' device (no host synchronisation per update).

    Args:
        bin_width: width in degrees of the histogram the median is read from.
        device: where the sums live.
    """

    def __init__(self, bin_width: float = 0.1, device: torch.device | str = "cpu") -> None:
        if not 0 < bin_width <= 180:
            raise ValueError(f"normals metric bin_width: got {bin_width}, expected a value in (0, 180] degrees")
        self.bin_width = float(bin_width)
        self.num_bins = math.ceil(180.0 / self.bin_width - 1e-9)
        # [sum of angles, valid pixels, pixels within each threshold]; the histogram counts exactly in int64.
        self.sums = torch.zeros(2 + len(THRESHOLDS), dtype=torch.float64, device=device)
        self.histogram = torch.zeros(self.num_bins + 1, dtype=torch.int64, device=device)  # + a bin for invalid

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch.

        Args:
            pred (Tensor[B, H, W, 3]): predicted normals.
            target (Tensor[B, H, W, 3]): ground-truth normals, 0 where there is none (and in the padding).
        """
        if pred.shape != target.shape or pred.shape[-1:] != (3,):
            raise ValueError(f"normals metric: prediction shape {tuple(pred.shape)} and ground-truth shape "
                             f"{tuple(target.shape)} must be the same [..., 3]")
        device = self.sums.device
        pred, target = pred.to(device), target.to(device)
        valid = valid_normals(target)
        angle = torch.where(valid, angular_errors(pred, target), 0.0)
        weight = valid.double()
        terms = [angle.sum(), weight.sum(), *((weight * (angle < t)).sum() for t in THRESHOLDS)]
        self.sums += torch.stack(terms)
        bins = (angle / self.bin_width).long().clamp(max=self.num_bins - 1)
        bins = torch.where(valid, bins, self.num_bins)
        # index_add_ rather than bincount: a fixed output size, so no device-to-host sync.
        self.histogram.index_add_(0, bins.reshape(-1), torch.ones_like(bins.reshape(-1)))

    def reduce(self) -> None:
        """Sum over all processes (a no-op without torch.distributed)."""
        all_reduce_sum(self.sums)
        all_reduce_sum(self.histogram)

    def median(self) -> float:
        """The median angle in degrees from the histogram (linear inside its bin); 0 with no valid pixel."""
        counts = self.histogram[:self.num_bins].cpu().double()
        total = float(counts.sum())
        if total == 0:
            return 0.0
        cumulative = counts.cumsum(0)
        half = total / 2.0
        k = int(torch.searchsorted(cumulative, torch.tensor([half], dtype=torch.float64))[0])
        before = float(cumulative[k - 1]) if k > 0 else 0.0
        return (k + (half - before) / float(counts[k])) * self.bin_width

    def compute(self, prefix: str = "normals/") -> dict[str, float]:
        """All metrics (see the module docstring); zeros when no pixel was valid."""
        sums = self.sums.cpu()
        pixels = float(sums[1])
        if pixels == 0:
            return {f"{prefix}{k}": 0.0 for k in METRICS}
        out = {"mean": float(sums[0]) / pixels, "median": self.median()}
        out.update({f"within_{t:g}": float(sums[2 + i]) / pixels for i, t in enumerate(THRESHOLDS)})
        return {f"{prefix}{k}": v for k, v in out.items()}
