"""Configuration of the network: backbone, neck, the named task instances and how they share the trunk.

Each dataclass mirrors the constructor it feeds (``TimmBackbone``, ``FPN``, ``FCOSHead``, ...), so that every
part can be built from plain arguments without a config as well.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from perception.tasks import TASK_TYPES, Task, build_tasks
from perception.tasks.depth.config import DepthConfig
from perception.tasks.detection.config import DetectionConfig
from perception.tasks.segmentation.config import SegmentationConfig
from perception.utils.configurable import ConfigError, deep_merge, from_dict

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
        conv: the output convolution of each level: ``conv`` (a dense 3x3, as FPN) or ``dwsep`` (a 3x3
            depthwise and a 1x1 pointwise convolution: at 96 channels about an eighth of the multiply-adds).
    """

    channels: int = 256
    prune: bool = False
    conv: Literal["conv", "dwsep"] = "conv"

    def validate(self) -> None:
        if self.channels <= 0:
            raise ValueError(f"channels: got {self.channels}, expected a positive int")


# ``model.scale`` -> the trunk it sets (backbone and neck); each task type sizes its own head per scale in its
# ``Task.SCALES``. Chosen by measured multi-task cost (docs/scales.md).
SCALES: dict[str, dict[str, dict[str, Any]]] = {
    "n": {"backbone": {"name": "mobilenetv3_small_100"}, "neck": {"channels": 32, "prune": True}},
    "s": {"backbone": {"name": "mobilenetv3_large_100"}, "neck": {"channels": 64, "prune": True}},
    "m": {"backbone": {"name": "resnet18"}, "neck": {"channels": 96, "prune": True, "conv": "dwsep"}},
    "l": {"backbone": {"name": "resnet50"}, "neck": {"channels": 128, "prune": True, "conv": "dwsep"}},
}


def scale_preset(data: Mapping[str, Any], prefix: str = "model.") -> dict[str, Any]:
    """The ``model`` section ``data`` with its ``scale``'s settings merged under the keys it gives.

    The scale sets ``backbone``, ``neck`` and, for every task instance, its type's ``SCALES[scale]``: through the
    type's own section in the list form of ``tasks``, inside each entry in the mapping form. Whatever ``data``
    gives explicitly wins (it is what the YAML files, their ``_base_`` chains and the overrides set together).

    Raises:
        ConfigError: for an unknown scale, naming the allowed ones.
    """
    scale = data.get("scale")
    if scale is None:
        return dict(data)
    _check_scale(scale, prefix)
    out = deep_merge(SCALES[scale], data)
    tasks = data.get("tasks", _default_tasks())
    if isinstance(tasks, Mapping):
        entries = {}
        for name, entry in tasks.items():
            cls = TASK_TYPES.get(entry.get("type")) if isinstance(entry, Mapping) else None
            entries[name] = deep_merge(cls.SCALES.get(scale, {}), entry) if cls is not None else entry
        out["tasks"] = entries
    elif isinstance(tasks, (list, tuple)):
        for type_name in tasks:
            cls = TASK_TYPES.get(type_name) if isinstance(type_name, str) else None
            if cls is not None and type_name in ModelConfig.__dataclass_fields__:
                section = data.get(type_name, {})
                out[type_name] = deep_merge(cls.SCALES.get(scale, {}), section) if isinstance(section, Mapping) \
                    else section
    return out


def resolved_model_config(data: Mapping[str, Any], prefix: str = "model.") -> "ModelConfig":
    """The ``model`` section a checkpoint stores, which holds every key resolved when it was saved, built
    without merging its ``scale``'s preset again: a key the presets gained since (``neck.conv`` at m and l) keeps
    its default, which is the network of that time, not the preset's new value. ``scale`` itself is kept."""
    data = dict(data)
    scale = data.get("scale")
    cfg = from_dict(ModelConfig, {**data, "scale": None}, prefix)
    if scale is not None:
        _check_scale(scale, prefix)
    cfg.scale = scale
    return cfg


def _check_scale(scale: Any, prefix: str) -> None:
    if scale not in SCALES:
        raise ConfigError(f"{prefix}scale: got {scale!r}, expected one of {', '.join(SCALES)} (or null: the explicit "
                          "settings)")


def _default_tasks() -> list[str]:
    return ModelConfig.__dataclass_fields__["tasks"].default_factory()


@dataclass
class ModelConfig:
    """The whole network.

    Attributes:
        scale: ``n``, ``s``, ``m`` or ``l`` sets the backbone and every width and depth of the neck and the heads
            (see docs/scales.md); keys given explicitly still win. ``null``: only the explicit settings and the
            defaults below.
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
            task-by-task matrices, Misra et al. 2016; one FPN per task), ``mtan`` (one trunk; per task and
            pyramid level a learned attention mask multiplied into the shared level, after Liu et al. 2019) or
            ``adapters`` (one trunk; per task and level a residual bottleneck adapter started at zero).
        soft_sharing_weight: lambda of the ``soft`` sharing penalty.
        cross_stitch_init: initial self weight of the cross-stitch matrices (the others share ``1 -`` it; 1 is
            the identity: separate networks).
        mtan_reduction: ``mtan``: the attention masks' bottleneck has ``neck.channels / mtan_reduction`` channels.
        mtan_from_below: ``mtan``: each level's mask also reads the task's attended level below, as in the paper.
        adapter_channels: ``adapters``: the bottleneck channels r of every adapter.
    """

    scale: str | None = None
    tasks: list[str] | dict[str, dict[str, Any]] = field(
        default_factory=lambda: ["detection", "segmentation", "depth"])
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    neck: NeckConfig = field(default_factory=NeckConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    depth: DepthConfig = field(default_factory=DepthConfig)
    sharing: Literal["hard", "soft", "cross_stitch", "mtan", "adapters"] = "hard"
    soft_sharing_weight: float = 1e-2
    cross_stitch_init: float = 0.9
    mtan_reduction: int = 4
    mtan_from_below: bool = True
    adapter_channels: int = 16

    @classmethod
    def with_preset(cls, data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
        """``data`` with the settings of its ``scale`` merged under it (the hook of ``from_dict``)."""
        return scale_preset(data, prefix)

    def build_tasks(self) -> dict[str, Task]:
        """The task instances, keyed by name, in their fixed order."""
        sections = {"detection": self.detection, "segmentation": self.segmentation, "depth": self.depth}
        if self.scale is not None and isinstance(self.tasks, (list, tuple)):
            for type_name in self.tasks:  # a listed type without a section here takes its scale's settings
                if type_name in TASK_TYPES and type_name not in sections:
                    cls = TASK_TYPES[type_name]
                    sections[type_name] = from_dict(cls.Config, cls.SCALES.get(self.scale, {}), f"{type_name}.")
        return build_tasks(self.tasks, sections)

    @property
    def task_names(self) -> list[str]:
        return list(self.build_tasks())

    def validate(self) -> None:
        if self.scale is not None and self.scale not in SCALES:
            raise ValueError(f"scale: got {self.scale!r}, expected one of {', '.join(SCALES)} (or null)")
        self.build_tasks()
        if self.soft_sharing_weight < 0:
            raise ValueError(f"soft_sharing_weight: got {self.soft_sharing_weight}, expected a value >= 0")
        if not 0.0 <= self.cross_stitch_init <= 1.0:
            raise ValueError(f"cross_stitch_init: got {self.cross_stitch_init}, expected a value in [0, 1]")
        if not 1 <= self.mtan_reduction <= self.neck.channels:
            raise ValueError(f"mtan_reduction: got {self.mtan_reduction}, expected an integer from 1 to "
                             f"neck.channels ({self.neck.channels})")
        if self.adapter_channels < 1:
            raise ValueError(f"adapter_channels: got {self.adapter_channels}, expected a positive integer")
