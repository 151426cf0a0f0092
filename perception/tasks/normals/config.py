"""Settings of a surface normals task."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class NormalsConfig:
    """Dense surface normals branch with the same 1/4-scale structure as the segmentation and depth branches.

    Attributes:
        channels: channels of the branch's conv-GN-ReLU stages.
        stride: output stride of the branch: 4 fuses P2..P5 at 1/4 of the input (Panoptic FPN); 8 fuses P3..P5
            at 1/8, a quarter of the pixels, and lets the neck skip P2 when no other head reads it.
        conv: the branch's unit: ``conv`` (3x3 conv-GN-ReLU) or ``dwsep`` (depthwise-separable).
        loss: ``cosine`` (1 - cos of the angle between predicted and true normal, as in MTAN) or ``l1`` (the L1
            distance between the two unit vectors), averaged over the valid pixels.
    """

    channels: int = 128
    stride: Literal[4, 8] = 4
    conv: Literal["conv", "dwsep"] = "conv"
    loss: Literal["cosine", "l1"] = "cosine"

    def validate(self) -> None:
        if self.channels <= 0:
            raise ValueError(f"channels: got {self.channels}, expected a positive int")
