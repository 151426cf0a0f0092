"""Settings of a detection task (FCOS head, loss and post-processing)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from perception.tasks.common import check_classes, default_class_names
from perception.utils.cityscapes import cityscapes_instance_names


@dataclass
class DetectionConfig:
    """FCOS-style anchor-free detection head (Tian et al. 2019) on P3..P7 (or P3..P5).

    Attributes:
        num_classes: number of object classes (no background class).
        class_names: one name per class (defaults to the Cityscapes instance classes when they match in number).
        num_convs: conv-GN-ReLU layers in each of the classification and regression towers.
        tower: the towers' unit: ``conv`` (3x3 conv-GN-ReLU, as FCOS) or ``dwsep`` (depthwise 3x3 + pointwise
            1x1, GN, ReLU: about a seventh of the multiply-adds at 64 channels).
        max_stride: the coarsest level read: 128 (P3..P7, as FCOS) or 32 (P3..P5: no P6/P7 in the neck;
            objects larger than P5's range are assigned to P5).
        prior_prob: initial foreground probability of the classifier (bias init).
        center_sampling_radius: positives lie within this many strides of a box centre.
        score_thresh: post-processing score threshold on sqrt(cls * centerness).
        nms_thresh: IoU threshold of the class-wise NMS.
        topk_candidates: candidates kept per level before NMS.
        detections_per_img: detections kept per image after NMS.
        focal_alpha: alpha of the sigmoid focal loss.
        focal_gamma: gamma of the sigmoid focal loss.
    """

    num_classes: int = 8
    class_names: list[str] = field(default_factory=list)
    num_convs: int = 4
    tower: Literal["conv", "dwsep"] = "conv"
    max_stride: Literal[32, 64, 128] = 128
    prior_prob: float = 0.01
    center_sampling_radius: float = 1.5
    score_thresh: float = 0.2
    nms_thresh: float = 0.6
    topk_candidates: int = 1000
    detections_per_img: int = 100
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0

    def __post_init__(self) -> None:
        self.class_names = default_class_names(self.class_names, self.num_classes, cityscapes_instance_names())

    def validate(self) -> None:
        check_classes(self.num_classes, self.class_names)
