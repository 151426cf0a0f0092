"""Settings of a semantic segmentation task."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from perception.tasks.common import check_classes, default_class_names
from perception.utils.cityscapes import cityscapes_class_names


@dataclass
class SegmentationConfig:
    """Panoptic-FPN semantic branch (Kirillov et al. 2019).

    Attributes:
        num_classes: number of semantic classes; label 255 (``ignore_index``) is ignored.
        class_names: one name per class (defaults to the 19 Cityscapes classes when they match in number).
        channels: channels of the branch's conv-GN-ReLU stages.
        stride: output stride of the branch: 4 fuses P2..P5 at 1/4 of the input (Panoptic FPN); 8 fuses P3..P5
            at 1/8, a quarter of the pixels, and lets the neck skip P2 when no other head reads it.
        conv: the branch's unit: ``conv`` (3x3 conv-GN-ReLU) or ``dwsep`` (depthwise-separable).
        ignore_index: label value that carries no loss.
    """

    num_classes: int = 19
    class_names: list[str] = field(default_factory=list)
    channels: int = 128
    stride: Literal[4, 8] = 4
    conv: Literal["conv", "dwsep"] = "conv"
    ignore_index: int = 255

    def __post_init__(self) -> None:
        self.class_names = default_class_names(self.class_names, self.num_classes, cityscapes_class_names())

    def validate(self) -> None:
        check_classes(self.num_classes, self.class_names)
