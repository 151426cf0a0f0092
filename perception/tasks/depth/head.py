"""Monocular depth head: the Panoptic-FPN-style 1/4-scale branch and a 1x1 predictor of one channel.

The raw output is decoded to metres by the chosen parameterisation:
``log`` (the output is log-depth, unbounded) or ``sigmoid`` (``max_depth * sigmoid(x)``, bounded). The loss
(SILog as in BTS, or L1 on log-depth) is computed in log space on the raw output upsampled to the labels' size.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perception.ops.dense import SemanticFPNBranch, upsample
from perception.tasks.depth.loss import l1_log_loss, silog_loss


class DepthHead(nn.Module):
    """P2..P5 -> raw depth map at 1/4 of the input size.

    Args:
        in_channels: channels of the pyramid levels.
        channels: channels of the branch.
        in_strides: strides of the levels it reads.
        parameterization: ``log`` or ``sigmoid``.
        min_depth, max_depth: clamp of the decoded depth in metres (and the bound of ``sigmoid``).
        loss: ``silog`` or ``l1_log``.
        silog_lambda, silog_scale: SILog's variance weight and multiplier.
        init_depth: initial prediction in metres (bias of the predictor).
        loss_max_depth: ground truth beyond this many metres is no measurement for the loss (default
            ``max_depth``: what the head cannot predict is not a target).
        conv: the branch's unit, ``conv`` or ``dwsep``.
    """

    def __init__(self, in_channels: int, channels: int = 128, in_strides: Sequence[int] = (4, 8, 16, 32),
                 parameterization: str = "log", min_depth: float = 1e-3, max_depth: float = 250.0,
                 loss: str = "silog", silog_lambda: float = 0.85, silog_scale: float = 10.0,
                 init_depth: float = 10.0, loss_max_depth: float | None = None, conv: str = "conv") -> None:
        super().__init__()
        if parameterization not in ("log", "sigmoid"):
            raise ValueError(f"depth parameterization: got {parameterization!r}, expected 'log' or 'sigmoid'")
        if loss not in ("silog", "l1_log"):
            raise ValueError(f"depth loss: got {loss!r}, expected 'silog' or 'l1_log'")
        self.parameterization = parameterization
        self.min_depth = min_depth
        self.max_depth = max_depth
        self.loss_max_depth = max_depth if loss_max_depth is None else loss_max_depth
        self.loss = loss
        self.silog_lambda = silog_lambda
        self.silog_scale = silog_scale
        self.branch = SemanticFPNBranch(in_channels, channels, in_strides, conv)
        self.predictor = nn.Conv2d(channels, 1, 1)
        nn.init.normal_(self.predictor.weight, std=0.01)
        init_depth = min(max(init_depth, min_depth * 2), max_depth / 2)
        bias = math.log(init_depth) if parameterization == "log" else -math.log(max_depth / init_depth - 1)
        nn.init.constant_(self.predictor.bias, bias)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Args: features: [P2, P3, P4, P5]. Returns: raw Tensor[B, 1, H/4, W/4]."""
        return self.predictor(self.branch(features))

    def log_depth(self, raw: Tensor) -> Tensor:
        """Log of the depth in metres that ``raw`` encodes (unclamped, differentiable)."""
        if self.parameterization == "log":
            return raw
        return math.log(self.max_depth) + F.logsigmoid(raw)

    def compute_loss(self, raw: Tensor, target: Tensor) -> Tensor:
        """Depth loss against Tensor[B, H, W] depth in metres (0 = no measurement; beyond ``loss_max_depth``
        ignored too)."""
        pred_log = self.log_depth(upsample(raw.float(), target.shape[-2:])).squeeze(1)
        if self.loss == "silog":
            return silog_loss(pred_log, target, self.silog_lambda, self.silog_scale, self.loss_max_depth)
        return l1_log_loss(pred_log, target, self.loss_max_depth)

    def postprocess(self, raw: Tensor, size: tuple[int, int]) -> Tensor:
        """Depth in metres, Tensor[B, H, W] at ``size``."""
        depth = torch.exp(self.log_depth(upsample(raw.float(), size))).squeeze(1)
        return depth.clamp(self.min_depth, self.max_depth)
