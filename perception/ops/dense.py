"""The Panoptic-FPN semantic branch (Kirillov et al., "Panoptic Feature Pyramid Networks", CVPR 2019).

Each of P2..P5 goes through conv3x3-GN-ReLU stages, with a 2x upsampling after each stage, until it reaches the
1/4 scale; the four maps are summed (the last upsampling, shared by P3..P5, is done once on their sum). Both
dense heads (segmentation and depth) use this branch, each with its own weights and its own 1x1 predictor.
"""
from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from perception.ops.layers import conv_unit


class ScaleBranch(nn.Module):
    """conv-GN-ReLU stages (``conv``: dense 3x3, or ``dwsep``) that bring one pyramid level from ``stride`` to
    ``target_stride``."""

    def __init__(self, in_channels: int, channels: int, stride: int, target_stride: int, conv: str = "conv") -> None:
        super().__init__()
        num_up = max(0, (stride // target_stride).bit_length() - 1)  # log2(stride / target_stride)
        self.stages = nn.ModuleList(
            [conv_unit(in_channels if i == 0 else channels, channels, conv) for i in range(max(1, num_up))])
        self.num_up = num_up

    def forward(self, x: Tensor, sizes: Sequence[tuple[int, int]], last_upsample: bool = True) -> Tensor:
        """Args: sizes: the spatial sizes to upsample to after each stage (finest last); last_upsample: False
        stops before the final upsampling (the output then has ``sizes[-2]``, or the input's size)."""
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i < self.num_up and (last_upsample or i < self.num_up - 1):
                x = F.interpolate(x, size=sizes[i], mode="bilinear", align_corners=False)
        return x


class SemanticFPNBranch(nn.Module):
    """P2..P5 -> one feature map at the stride of P2 (1/4); or P3..P5 -> one map at 1/8.

    Args:
        in_channels: channels of the pyramid levels.
        channels: channels of the branch.
        in_strides: strides of the levels it reads (P2..P5: 4, 8, 16, 32); the output has the first one.
        conv: ``conv`` (3x3 conv-GN-ReLU stages) or ``dwsep`` (depthwise-separable stages).

    Attributes:
        out_channels: channels of the output map.
        stride: stride of the output map.
    """

    def __init__(self, in_channels: int, channels: int = 128, in_strides: Sequence[int] = (4, 8, 16, 32),
                 conv: str = "conv") -> None:
        super().__init__()
        self.stride = in_strides[0]
        self.scales = nn.ModuleList([ScaleBranch(in_channels, channels, s, self.stride, conv) for s in in_strides])
        self.out_channels = channels

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Args: features: [P2, P3, P4, P5] (or from P3). Returns: Tensor[B, channels, H/s, W/s], s the first
        level's stride."""
        sizes = [tuple(f.shape[-2:]) for f in features]
        # Level k upsamples through the sizes of levels k-1, ..., 0 so odd sizes line up exactly. Every level
        # from 1 on ends with the same bilinear map (level 1's size -> level 0's), which is linear: their sum is
        # upsampled once instead of each (the same values, one full-resolution resize instead of up to three).
        coarse = None
        for level, (branch, x) in enumerate(zip(self.scales[1:], features[1:]), start=1):
            y = branch(x, sizes[:level][::-1], last_upsample=False)
            coarse = y if coarse is None else coarse + y
        out = self.scales[0](features[0], [])
        if coarse is not None:
            out = out + F.interpolate(coarse, size=sizes[0], mode="bilinear", align_corners=False)
        return out


def upsample(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of Tensor[B, C, h, w] to ``size`` (no-op when it already has it)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
