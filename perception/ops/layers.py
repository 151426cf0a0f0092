"""Small building blocks shared by the heads."""
from __future__ import annotations

from torch import nn


def num_groups(channels: int, max_groups: int = 32) -> int:
    """The largest group count <= ``max_groups`` that divides ``channels`` and leaves at least two channels per
    group (32 for the usual widths; a 1x1 map such as P7 of a small input still normalises over 2 values)."""
    groups = max(1, min(max_groups, channels // 2))
    while channels % groups:
        groups -= 1
    return groups


def conv_gn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 conv (no bias), GroupNorm, ReLU: the unit of every head tower."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.GroupNorm(num_groups(out_channels), out_channels),
        nn.ReLU(inplace=True),
    )


CONV_KINDS = ("conv", "dwsep")


def dwsep_gn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """Depthwise-separable unit: 3x3 depthwise conv, 1x1 pointwise conv (no biases), one GroupNorm, ReLU.

    About ``9 / out_channels + 1 / 9`` of the multiply-adds of :func:`conv_gn_relu` (one norm after the pair, as
    EfficientDet's separable head convolutions do).
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False),
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
        nn.GroupNorm(num_groups(out_channels), out_channels),
        nn.ReLU(inplace=True),
    )


def conv_unit(in_channels: int, out_channels: int, kind: str = "conv") -> nn.Sequential:
    """The unit of a head tower or branch: ``conv`` (:func:`conv_gn_relu`) or ``dwsep`` (:func:`dwsep_gn_relu`)."""
    if kind == "conv":
        return conv_gn_relu(in_channels, out_channels)
    if kind == "dwsep":
        return dwsep_gn_relu(in_channels, out_channels)
    raise ValueError(f"conv: got {kind!r}, expected one of {', '.join(CONV_KINDS)}")
