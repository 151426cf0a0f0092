"""Settings of a monocular depth task."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class DepthConfig:
    """Dense depth branch with the same 1/4-scale structure as the segmentation branch.

    Attributes:
        channels: channels of the branch's conv-GN-ReLU stages.
        stride: output stride of the branch: 4 fuses P2..P5 at 1/4 of the input (Panoptic FPN); 8 fuses P3..P5
            at 1/8, a quarter of the pixels, and lets the neck skip P2 when no other head reads it.
        conv: the branch's unit: ``conv`` (3x3 conv-GN-ReLU) or ``dwsep`` (depthwise-separable).
        parameterization: ``log`` predicts log-depth (unbounded); ``sigmoid`` predicts
            ``max_depth * sigmoid(x)`` (bounded by ``max_depth``).
        min_depth: predictions are clamped below to this many metres.
        max_depth: upper bound of the ``sigmoid`` parameterization and clamp of the ``log`` one.
        loss: ``silog`` (scale-invariant log loss, Eigen et al. 2014, as in BTS) or ``l1_log``.
        silog_lambda: variance weight of SILog (0.85 as in BTS; 1 is fully scale invariant).
        silog_scale: multiplier of SILog (10 in BTS).
        loss_max_depth: training ignores ground truth beyond this many metres (as no measurement), the way
            ``eval.depth_cap`` does in evaluation; ``null``: ``max_depth``, the most the head can predict;
            ``.inf``: no bound.
    """

    channels: int = 128
    stride: Literal[4, 8] = 4
    conv: Literal["conv", "dwsep"] = "conv"
    parameterization: Literal["log", "sigmoid"] = "log"
    min_depth: float = 1e-3
    max_depth: float = 250.0
    loss: Literal["silog", "l1_log"] = "silog"
    silog_lambda: float = 0.85
    silog_scale: float = 10.0
    loss_max_depth: float | None = None

    def validate(self) -> None:
        if not 0 < self.min_depth < self.max_depth:
            raise ValueError(f"min_depth/max_depth: got {self.min_depth}/{self.max_depth}, "
                             "expected 0 < min_depth < max_depth")
        if self.loss_max_depth is not None and not self.loss_max_depth > self.min_depth:
            raise ValueError(f"loss_max_depth: got {self.loss_max_depth}, expected more than "
                             f"min_depth={self.min_depth} (or null: max_depth)")
        if not 0.0 <= self.silog_lambda <= 1.0:
            raise ValueError(f"silog_lambda: got {self.silog_lambda}, expected a value in [0, 1]")
