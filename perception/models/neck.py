"""The feature pyramid shared by every head (Lin et al., "Feature Pyramid Networks", CVPR 2017).

torchvision's ``FeaturePyramidNetwork`` does the top-down pathway (it resizes by the lateral's own size, so odd
input sizes work); RetinaNet/FCOS-style P6 and P7 are added on top of P5 only when a head reads them, and P2 is
left out when none does.

CPU bf16 autocast: P6 and P7 are computed in float32. oneDNN's bf16 weight-gradient kernel for AVX-512 CPUs
(``jit_bf16:avx512_core``, torch 2.14) leaves the kernel taps that see only padding unwritten when a stride-2 3x3
convolution gets a map one pixel wide or high, as P7 (and P6) of a small input do: the gradient of those taps is
whatever the reused memory held (1e30, inf, NaN), and every step of the run is skipped. These two maps hold at
most 1/4096 of the image's pixels, so float32 costs next to nothing; CUDA autocast is left as it is.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7


class ExtraLevels(LastLevelP6P7):
    """torchvision's P6/P7 block (same parameters and state-dict keys), computed in float32 under CPU autocast."""

    def forward(self, p: list[Tensor], c: list[Tensor], names: list[str]) -> tuple[list[Tensor], list[str]]:
        x = p[-1] if self.use_P5 else c[-1]
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                p6 = self.p6(x.float())
                p7 = self.p7(F.relu(p6))
        else:
            p6 = self.p6(x)
            p7 = self.p7(F.relu(p6))
        return p + [p6, p7], names + ["p6", "p7"]


class FPN(nn.Module):
    """P2..P5 from C2..C5, plus P6/P7 (stride 64/128) when ``extra_levels`` is set.

    Args:
        in_channels: channels of C2..C5 (the backbone's ``out_channels``).
        out_channels: channels of every pyramid level.
        in_strides: strides of C2..C5.
        extra_levels: add P6 and P7, computed from P5, for the detection head.
        min_stride: the finest level computed; finer backbone levels are left out (no lateral, no output
            convolution: e.g. 8 when no head reads P2, which saves the pyramid's most costly level).
        conv: each level's output convolution: ``conv`` (torchvision's dense 3x3) or ``dwsep`` (a 3x3 depthwise
            convolution, then a 1x1 pointwise one with the bias; no norm or activation, like the dense one).

    Attributes:
        out_channels: channels of every level.
        strides: strides of the levels returned by ``forward``.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256, in_strides: Sequence[int] = (4, 8, 16, 32),
                 extra_levels: bool = True, min_stride: int | None = None, conv: str = "conv") -> None:
        super().__init__()
        if conv not in ("conv", "dwsep"):
            raise ValueError(f"neck conv: got {conv!r}, expected 'conv' or 'dwsep'")
        in_strides = tuple(in_strides)
        min_stride = in_strides[0] if min_stride is None else min_stride
        if min_stride not in in_strides:
            raise ValueError(f"FPN min_stride: got {min_stride}, expected one of the backbone's strides {in_strides}")
        self.first = in_strides.index(min_stride)
        extra = ExtraLevels(out_channels, out_channels) if extra_levels else None
        self.fpn = FeaturePyramidNetwork(list(in_channels)[self.first:], out_channels, extra_blocks=extra)
        if conv == "dwsep":  # torchvision's forward calls each layer block as a module: any module fits
            for i in range(len(self.fpn.layer_blocks)):
                self.fpn.layer_blocks[i] = _separable_output_conv(out_channels)
        self.out_channels = out_channels
        self.strides = in_strides[self.first:] + ((in_strides[-1] * 2, in_strides[-1] * 4) if extra_levels else ())

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        """Args: features: [C2, C3, C4, C5]. Returns: the levels of ``strides``: [P2, P3, P4, P5] (+ [P6, P7])."""
        named = OrderedDict((f"c{i + 2}", f) for i, f in enumerate(features) if i >= self.first)
        return list(self.fpn(named).values())


def _separable_output_conv(channels: int) -> nn.Sequential:
    """3x3 depthwise (no bias) then 1x1 pointwise convolution, initialised as torchvision initialises its
    FPN convolutions (Kaiming uniform with a = 1, zero bias)."""
    block = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
                          nn.Conv2d(channels, channels, 1))
    for m in block:
        nn.init.kaiming_uniform_(m.weight, a=1)
    nn.init.zeros_(block[1].bias)
    return block


def pyramid_output_parameters(neck: FPN) -> Iterator[nn.Parameter]:
    """The FPN's output convolutions (3x3 on P2..P5, and P6/P7): the last layer before the heads."""
    yield from neck.fpn.layer_blocks.parameters()
    if neck.fpn.extra_blocks is not None:
        yield from neck.fpn.extra_blocks.parameters()
