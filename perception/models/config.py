"""Configuration of the network: backbone, neck, heads and the tasks switched on.

Each dataclass mirrors the constructor it feeds (``TimmBackbone``, ``FPN``, ``FCOSHead``, ...), so that every
part can be built from plain arguments without a config as well.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

TASKS = ("detection", "segmentation", "depth")

CITYSCAPES_THING_CLASSES = ["person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]
CITYSCAPES_CLASSES = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
]



def default_class_names(names: list[str], num_classes: int, known: list[str]) -> list[str]:
    """``names`` if given, else ``known`` when it has ``num_classes`` entries, else ``class_0``, ``class_1``, ..."""
    if names:
        return names
    return list(known) if num_classes == len(known) else [f"class_{i}" for i in range(num_classes)]


def check_classes(num_classes: int, names: list[str]) -> None:
    if num_classes < 1:
        raise ValueError(f"num_classes: got {num_classes}, expected at least 1")
    if names and len(names) != num_classes:
        raise ValueError(f"class_names: got {len(names)} names for num_classes={num_classes}")


@dataclass
class BackboneConfig:
    """A timm model used as a multi-scale feature extractor (strides 4, 8, 16, 32).

    Attributes:
        name: any timm model name that supports ``features_only`` (resnet18, convnext_tiny, ...).
        pretrained: ``false``; ``true`` for timm's own download (needs network); or a path to a local weights
            file (``.pth``/``.safetensors``), loaded with no network.
        freeze_at: 0 trains everything; 1 freezes the stem; k > 1 also freezes the first k - 1 stages.
        frozen_bn: replace every BatchNorm of the backbone by a frozen (affine, fixed statistics) one.
        drop_path_rate: stochastic depth for the models that support it.
    """

    name: str = "resnet18"
    pretrained: bool | str = False
    freeze_at: int = 0
    frozen_bn: bool = False
    drop_path_rate: float = 0.0

    def validate(self) -> None:
        if not 0 <= self.freeze_at <= 5:
            raise ValueError(f"freeze_at: got {self.freeze_at}, expected 0 (nothing frozen) to 5 (all stages)")


@dataclass
class NeckConfig:
    """The feature pyramid shared by all heads.

    Attributes:
        channels: channels of every pyramid level P2..P7.
    """

    channels: int = 256

    def validate(self) -> None:
        if self.channels <= 0:
            raise ValueError(f"channels: got {self.channels}, expected a positive int")


@dataclass
class DetectionConfig:
    """FCOS-style anchor-free detection head (Tian et al. 2019) on P3..P7.

    Attributes:
        num_classes: number of object classes (no background class).
        class_names: one name per class (defaults to the Cityscapes instance classes when they match in number).
        num_convs: conv-GN-ReLU layers in each of the classification and regression towers.
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
    prior_prob: float = 0.01
    center_sampling_radius: float = 1.5
    score_thresh: float = 0.2
    nms_thresh: float = 0.6
    topk_candidates: int = 1000
    detections_per_img: int = 100
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0

    def __post_init__(self) -> None:
        self.class_names = default_class_names(self.class_names, self.num_classes, CITYSCAPES_THING_CLASSES)

    def validate(self) -> None:
        check_classes(self.num_classes, self.class_names)


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
        self.class_names = default_class_names(self.class_names, self.num_classes, CITYSCAPES_CLASSES)

    def validate(self) -> None:
        check_classes(self.num_classes, self.class_names)


@dataclass
class DepthConfig:
    """Dense depth branch with the same 1/4-scale structure as the segmentation branch.

    Attributes:
        channels: channels of the branch's conv-GN-ReLU stages.
        parameterization: ``log`` predicts log-depth (unbounded); ``sigmoid`` predicts
            ``max_depth * sigmoid(x)`` (bounded by ``max_depth``).
        min_depth: predictions are clamped below to this many metres.
        max_depth: upper bound of the ``sigmoid`` parameterization and clamp of the ``log`` one.
        loss: ``silog`` (scale-invariant log loss, Eigen et al. 2014, as in BTS) or ``l1_log``.
        silog_lambda: variance weight of SILog (0.85 as in BTS; 1 is fully scale invariant).
        silog_scale: multiplier of SILog (10 in BTS).
        loss_max_depth: training ignores ground truth beyond this many metres (as no measurement), the way
            ``eval.depth_cap`` does in evaluation; ``null``: ``max_depth``, the most the head can predict;
            ``.inf``: no bound.
    """

    channels: int = 128
    parameterization: Literal["log", "sigmoid"] = "log"
    min_depth: float = 1e-3
    max_depth: float = 250.0
    loss: Literal["silog", "l1_log"] = "silog"
    silog_lambda: float = 0.85
    silog_scale: float = 10.0
    loss_max_depth: float | None = None

    def validate(self) -> None:
        if not 0 < self.min_depth < self.max_depth:
            raise ValueError(f"min_depth/max_depth: got {self.min_depth}/{self.max_depth}, "
                             "expected 0 < min_depth < max_depth")
        if self.loss_max_depth is not None and not self.loss_max_depth > self.min_depth:
            raise ValueError(f"loss_max_depth: got {self.loss_max_depth}, expected more than "
                             f"min_depth={self.min_depth} (or null: max_depth)")
        if not 0.0 <= self.silog_lambda <= 1.0:
            raise ValueError(f"silog_lambda: got {self.silog_lambda}, expected a value in [0, 1]")


@dataclass
class ModelConfig:
    """The whole network.

    Attributes:
        tasks: the heads switched on, any non-empty subset of ``detection``, ``segmentation``, ``depth``.
        backbone: the timm feature extractor.
        neck: the feature pyramid.
        detection: detection head settings (used when ``detection`` is in ``tasks``).
        segmentation: segmentation head settings.
        depth: depth head settings.
        sharing: how the tasks share the trunk (backbone + FPN): ``hard`` (one trunk for all tasks), ``soft``
            (one trunk per task, pulled together by ``soft_sharing_weight`` * the summed squared distance of
            corresponding parameters) or ``cross_stitch`` (one backbone per task, stage outputs mixed by learned
            task-by-task matrices, Misra et al. 2016; one FPN per task).
        soft_sharing_weight: lambda of the ``soft`` sharing penalty.
        cross_stitch_init: initial self weight of the cross-stitch matrices (the others share ``1 -`` it; 1 is
            the identity: separate networks).
    """

    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    neck: NeckConfig = field(default_factory=NeckConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    depth: DepthConfig = field(default_factory=DepthConfig)
    sharing: Literal["hard", "soft", "cross_stitch"] = "hard"
    soft_sharing_weight: float = 1e-2
    cross_stitch_init: float = 0.9

    def validate(self) -> None:
        check_tasks(self.tasks)
        if self.soft_sharing_weight < 0:
            raise ValueError(f"soft_sharing_weight: got {self.soft_sharing_weight}, expected a value >= 0")
        if not 0.0 <= self.cross_stitch_init <= 1.0:
            raise ValueError(f"cross_stitch_init: got {self.cross_stitch_init}, expected a value in [0, 1]")


def check_tasks(tasks) -> list[str]:
    """Return ``tasks`` as a list after checking each name; raise ``ValueError`` naming a bad one."""
    tasks = list(tasks)
    if not tasks:
        raise ValueError(f"tasks: got an empty list, expected a non-empty subset of {list(TASKS)}")
    for task in tasks:
        if task not in TASKS:
            import difflib

            close = difflib.get_close_matches(str(task), TASKS, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"tasks: unknown task {task!r}.{hint} Allowed: {', '.join(TASKS)}")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks: got {tasks}, each task may appear once")
    return tasks
