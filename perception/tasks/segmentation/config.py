"""Settings of a semantic segmentation task."""
from __future__ import annotations

from dataclasses import dataclass, field

from perception.tasks.common import check_classes, default_class_names
from perception.utils.cityscapes import cityscapes_class_names


@dataclass
class SegmentationConfig:
    """Panoptic-FPN semantic branch (Kirillov et al. 2019).

    Attributes:
        num_classes: number of semantic classes; label 255 (``ignore_index``) is ignored.
        class_names: one name per class (defaults to the 19 Cityscapes classes when they match in number).
        channels: channels of the branch's conv-GN-ReLU stages.
        ignore_index: label value that carries no loss.
    """

    num_classes: int = 19
    class_names: list[str] = field(default_factory=list)
    channels: int = 128
    ignore_index: int = 255

    def __post_init__(self) -> None:
        self.class_names = default_class_names(self.class_names, self.num_classes, cityscapes_class_names())

    def validate(self) -> None:
        check_classes(self.num_classes, self.class_names)
