"""The feature pyramid shared by every head (Lin et al., "Feature Pyramid Networks", CVPR 2017).

torchvision's ``FeaturePyramidNetwork`` does the top-down pathway (it resizes by the lateral's own size, so odd
input sizes work); RetinaNet/FCOS-style P6 and P7 are added on top of P5 only when detection needs them.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Iterator, Sequence

from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7


class FPN(nn.Module):
    """P2..P5 from C2..C5, plus P6/P7 (stride 64/128) when ``extra_levels`` is set.

    Args:
        in_channels: channels of C2..C5 (the backbone's ``out_channels``).
        out_channels: channels of every pyramid level.
        in_strides: strides of C2..C5.
        extra_levels: add P6 and P7, computed from P5, for the detection head.

    Attributes:
        out_channels: channels of every level.
        strides: strides of the levels returned by ``forward``.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256, in_strides: Sequence[int] = (4, 8, 16, 32),
                 extra_levels: bool = True) -> None:
        super().__init__()
        extra = LastLevelP6P7(out_channels, out_channels) if extra_levels else None
        self.fpn = FeaturePyramidNetwork(list(in_channels), out_channels, extra_blocks=extra)
        self.out_channels = out_channels
        self.strides = tuple(in_strides) + ((in_strides[-1] * 2, in_strides[-1] * 4) if extra_levels else ())

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        """Args: features: [C2, C3, C4, C5]. Returns: [P2, P3, P4, P5] (+ [P6, P7])."""
        named = OrderedDict((f"c{i + 2}", f) for i, f in enumerate(features))
        return list(self.fpn(named).values())


def pyramid_output_parameters(neck: FPN) -> Iterator[nn.Parameter]:
    """The FPN's output convolutions (3x3 on P2..P5, and P6/P7): the last layer before the heads."""
    yield from neck.fpn.layer_blocks.parameters()
    if neck.fpn.extra_blocks is not None:
        yield from neck.fpn.extra_blocks.parameters()
