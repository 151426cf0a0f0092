"""Build the network a :class:`perception.models.config.ModelConfig` describes (any sharing mode)."""
from __future__ import annotations

from perception.models.backbone import TimmBackbone
from perception.models.config import ModelConfig
from perception.models.multitask import MultiTaskModel, build_heads
from perception.models.neck import FPN
from perception.models.sharing import build_sharing_model, build_task_adapted_model
from perception.tasks import Task


def build_neck(cfg: ModelConfig, backbone: TimmBackbone, tasks: dict[str, Task]) -> FPN:
    """The FPN of the hard-shared trunk: P6/P7 only if some head reads stride 64 or 128; P2 left out when no
    head reads it and ``neck.prune`` is set (off by default, so that the pyramid of older checkpoints stays).
    """
    strides = {s for task in tasks.values() for s in task.pyramid_strides()}
    finest = min(strides) if cfg.neck.prune else backbone.strides[0]
    return FPN(backbone.out_channels, cfg.neck.channels, backbone.strides,
               extra_levels=max(strides) > backbone.strides[-1], min_stride=finest, conv=cfg.neck.conv)


def build_model(cfg: ModelConfig) -> MultiTaskModel:
    """Build the network described by ``cfg`` (tasks, backbone, neck and head settings)."""
    tasks = cfg.build_tasks()
    bb = cfg.backbone
    backbone = TimmBackbone(bb.name, bb.pretrained, bb.freeze_at, bb.frozen_bn, bb.drop_path_rate)
    neck = build_neck(cfg, backbone, tasks)
    heads = build_heads(tasks, neck)
    if cfg.sharing in ("mtan", "adapters"):  # one trunk, task modules between the pyramid and the heads
        return build_task_adapted_model(cfg, backbone, neck, heads, tasks)
    if cfg.sharing != "hard":  # soft / cross-stitch: one trunk per task, built from this backbone
        return build_sharing_model(cfg, backbone, heads, tasks)
    return MultiTaskModel(backbone, neck, heads, tasks)
