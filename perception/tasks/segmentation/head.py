"""Semantic segmentation head: the Panoptic-FPN semantic branch and a 1x1 classifier.

``forward`` returns logits at 1/4 scale; ``compute_loss`` upsamples them to the labels' size for the
cross-entropy; ``postprocess`` upsamples to the requested size and takes the arg-max.
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from perception.tasks.segmentation.loss import semantic_cross_entropy
from perception.ops.dense import SemanticFPNBranch, upsample


class SegmentationHead(nn.Module):
    """P2..P5 -> class logits at 1/4 of the input size (P3..P5 -> 1/8).

    Args:
        in_channels: channels of the pyramid levels.
        num_classes: number of semantic classes.
        channels: channels of the semantic branch.
        in_strides: strides of the levels it reads.
        ignore_index: label without loss.
        conv: the branch's unit, ``conv`` or ``dwsep``.
    """

    def __init__(self, in_channels: int, num_classes: int, channels: int = 128,
                 in_strides: Sequence[int] = (4, 8, 16, 32), ignore_index: int = 255, conv: str = "conv") -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"segmentation num_classes: got {num_classes}, expected at least 1")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.branch = SemanticFPNBranch(in_channels, channels, in_strides, conv)
        self.predictor = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.predictor.weight, std=0.01)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Args: features: [P2, P3, P4, P5]. Returns: logits Tensor[B, num_classes, H/4, W/4]."""
        return self.predictor(self.branch(features))

    def compute_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """Cross-entropy against Tensor[B, H, W] labels (``ignore_index`` for unlabelled pixels or images)."""
        return semantic_cross_entropy(logits, target, self.ignore_index)

    def postprocess(self, logits: Tensor, size: tuple[int, int]) -> Tensor:
        """Class ids Tensor[B, H, W] (int64) at ``size``."""
        return upsample(logits, size).argmax(1)
