"""Configuration of the network: backbone, neck, the named task instances and how they share the trunk.

Each dataclass mirrors the constructor it feeds (``TimmBackbone``, ``FPN``, ``FCOSHead``, ...), so that every
part can be built from plain arguments without a config as well.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from perception.tasks import Task, build_tasks
from perception.tasks.depth.config import DepthConfig
from perception.tasks.detection.config import DetectionConfig
from perception.tasks.segmentation.config import SegmentationConfig

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
        prune: compute only the levels some head reads: no P2 (its lateral and output convolution, the
            pyramid's costliest level) when every head starts at stride 8. Off by default: the pyramid then
            always has P2..P5, as checkpoints of earlier versions expect. (P6/P7 are only ever computed when a
            head reads them.)
    """

    channels: int = 256
    prune: bool = False

    def validate(self) -> None:
        if self.channels <= 0:
            raise ValueError(f"channels: got {self.channels}, expected a positive int")


@dataclass
class ModelConfig:
    """The whole network.

    Attributes:
        tasks: the task instances, either a list of type names (each task is named after its type and takes its
            settings from the section of that name below, e.g. ``[detection, segmentation, depth]``), or a
            mapping ``name -> {type, label?, **settings}`` (``objects: {type: detection, num_classes: 8}``); see
            :func:`perception.tasks.build_tasks`.
        backbone: the timm feature extractor.
        neck: the feature pyramid.
        detection: settings of a ``detection`` task named in the list form.
        segmentation: settings of a ``segmentation`` task named in the list form.
        depth: settings of a ``depth`` task named in the list form.
        sharing: how the tasks share the trunk (backbone + FPN): ``hard`` (one trunk for all tasks), ``soft``
            (one trunk per task, pulled together by ``soft_sharing_weight`` * the summed squared distance of
            corresponding parameters) or ``cross_stitch`` (one backbone per task, stage outputs mixed by learned
            task-by-task matrices, Misra et al. 2016; one FPN per task).
        soft_sharing_weight: lambda of the ``soft`` sharing penalty.
        cross_stitch_init: initial self weight of the cross-stitch matrices (the others share ``1 -`` it; 1 is
            the identity: separate networks).
    """

    tasks: list[str] | dict[str, dict[str, Any]] = field(
        default_factory=lambda: ["detection", "segmentation", "depth"])
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    neck: NeckConfig = field(default_factory=NeckConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    depth: DepthConfig = field(default_factory=DepthConfig)
    sharing: Literal["hard", "soft", "cross_stitch"] = "hard"
    soft_sharing_weight: float = 1e-2
    cross_stitch_init: float = 0.9

    def build_tasks(self) -> dict[str, Task]:
        """The task instances, keyed by name, in their fixed order."""
        sections = {"detection": self.detection, "segmentation": self.segmentation, "depth": self.depth}
        return build_tasks(self.tasks, sections)

    @property
    def task_names(self) -> list[str]:
        return list(self.build_tasks())

    def validate(self) -> None:
        self.build_tasks()
        if self.soft_sharing_weight < 0:
            raise ValueError(f"soft_sharing_weight: got {self.soft_sharing_weight}, expected a value >= 0")
        if not 0.0 <= self.cross_stitch_init <= 1.0:
            raise ValueError(f"cross_stitch_init: got {self.cross_stitch_init}, expected a value in [0, 1]")
