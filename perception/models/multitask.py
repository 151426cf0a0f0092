"""The multi-task network: one timm backbone and one FPN shared by detection, segmentation and depth heads.

    pyramid = neck(backbone(images))                 # shared: P2..P5 (+ P6, P7 for detection)
    outputs = {task: head(levels of pyramid)}        # raw tensors per task

Any non-empty subset of the tasks can be switched on; a single-task baseline is this same model with one task.
Losses (``compute_losses``) and post-processing (``postprocess``) are separate, named steps.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Sequence

from torch import Tensor, nn

from perception.data.batch import Batch
from perception.models.backbone import TimmBackbone
from perception.models.config import TASKS, ModelConfig, check_tasks
from perception.models.heads import DepthHead, FCOSHead, SegmentationHead
from perception.models.neck import FPN

# Which pyramid levels each head reads: detection P3..P7, the dense heads P2..P5.
HEAD_LEVELS = {"detection": slice(1, None), "segmentation": slice(0, 4), "depth": slice(0, 4)}


class MultiTaskModel(nn.Module):
    """Backbone + FPN + one head per task.

    Args:
        backbone: the shared feature extractor (C2..C5).
        neck: the shared feature pyramid.
        heads: task name -> head.
    """

    def __init__(self, backbone: TimmBackbone, neck: FPN, heads: dict[str, nn.Module]) -> None:
        super().__init__()
        check_tasks(heads.keys())
        self.backbone = backbone
        self.neck = neck
        self.heads = nn.ModuleDict(heads)

    @property
    def tasks(self) -> list[str]:
        return list(self.heads.keys())

    def forward_features(self, images: Tensor) -> list[Tensor]:
        """The shared representation: [P2, P3, P4, P5] (+ [P6, P7]).

        Args:
            images (Tensor[B, 3, H, W]): RGB, values 0..255 (uint8 or float).
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images: expected a Tensor[B, 3, H, W] of RGB images, got shape {tuple(images.shape)}")
        return self.neck(self.backbone(images))

    def forward_heads(self, pyramid: Sequence[Tensor], tasks: Iterable[str] | None = None) -> dict:
        """Raw outputs of the heads in ``tasks`` (all by default), keyed by task."""
        tasks = self.tasks if tasks is None else self._check_subset(tasks)
        return {task: self.heads[task](pyramid[HEAD_LEVELS[task]]) for task in tasks}

    def forward(self, images: Tensor, tasks: Iterable[str] | None = None, return_features: bool = False):
        """Raw outputs keyed by task: ``detection`` a dict of tensors, ``segmentation`` logits, ``depth`` raw.

        Args:
            images (Tensor[B, 3, H, W]): RGB, values 0..255.
            tasks: run only these heads (default: all).
            return_features: also return the shared pyramid, as ``(outputs, pyramid)``, for methods that work on
                the shared representation (MGDA-UB); it goes through ``forward`` so that wrappers such as
                DistributedDataParallel see the whole computation.
        """
        pyramid = self.forward_features(images)
        outputs = self.forward_heads(pyramid, tasks)
        return (outputs, pyramid) if return_features else outputs

    def compute_losses(self, outputs: dict, batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Per-task losses over the images that carry each task's labels.

        Every task in ``outputs`` gets a loss; a task no image of the batch carries gets exactly 0 (still attached
        to the graph, so distributed training sees every parameter used). ``batch`` must be on the outputs' device.

        Returns:
            ``task_losses`` (task -> scalar) and ``components`` (detached parts for logging, such as
            ``detection/cls``).
        """
        task_losses, components = {}, {}
        for task, out in outputs.items():
            if task == "detection":
                parts = self.heads[task].compute_loss(out, batch.boxes, batch.labels, batch.has["detection"])
                task_losses[task] = parts["cls"] + parts["box"] + parts["ctr"]
                components.update({f"detection/{k}": v.detach() for k, v in parts.items()})
            elif task == "segmentation":
                task_losses[task] = self.heads[task].compute_loss(out, batch.semantic)
            else:
                task_losses[task] = self.heads[task].compute_loss(out, batch.depth)
        return task_losses, components

    def postprocess(self, outputs: dict, image_size: tuple[int, int]) -> dict:
        """Predictions at the network input's size ``(H, W)``.

        Returns:
            ``detection``: per image ``{"boxes", "scores", "labels"}``; ``segmentation``: Tensor[B, H, W] class
            ids; ``depth``: Tensor[B, H, W] metres. Only the tasks present in ``outputs``.
        """
        results = {}
        for task, out in outputs.items():
            results[task] = self.heads[task].postprocess(out, image_size)
        return results

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters every task's loss depends on (backbone and neck), for the gradient-based MTL methods."""
        for module in (self.backbone, self.neck):
            yield from (p for p in module.parameters() if p.requires_grad)

    def last_shared_parameters(self) -> Iterator[nn.Parameter]:
        """The last shared layer, the FPN's output convolutions (where GradNorm measures gradient norms)."""
        from perception.models.sharing import pyramid_output_parameters

        yield from (p for p in pyramid_output_parameters(self.neck) if p.requires_grad)

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        """Parameters of one task's head."""
        yield from (p for p in self.heads[task].parameters() if p.requires_grad)

    def _check_subset(self, tasks: Iterable[str]) -> list[str]:
        tasks = list(tasks)
        for task in tasks:
            if task not in self.heads:
                raise ValueError(f"task {task!r} is not in this model; it has {', '.join(self.tasks)}")
        return tasks


def build_model(cfg: ModelConfig) -> MultiTaskModel:
    """Build the network described by ``cfg`` (tasks, backbone, neck and head settings)."""
    tasks = check_tasks(cfg.tasks)
    bb = cfg.backbone
    backbone = TimmBackbone(bb.name, bb.pretrained, bb.freeze_at, bb.frozen_bn, bb.drop_path_rate)
    neck = FPN(backbone.out_channels, cfg.neck.channels, backbone.strides, extra_levels="detection" in tasks)
    heads: dict[str, nn.Module] = {}
    for task in TASKS:  # a fixed order, whatever order the config lists them in
        if task not in tasks:
            continue
        if task == "detection":
            d = cfg.detection
            heads[task] = FCOSHead(neck.out_channels, d.num_classes, neck.strides[1:], d.num_convs, d.prior_prob,
                                   d.center_sampling_radius, d.score_thresh, d.nms_thresh, d.topk_candidates,
                                   d.detections_per_img, d.focal_alpha, d.focal_gamma)
        elif task == "segmentation":
            s = cfg.segmentation
            heads[task] = SegmentationHead(neck.out_channels, s.num_classes, s.channels, neck.strides[:4],
                                           s.ignore_index)
        else:
            d = cfg.depth
            heads[task] = DepthHead(neck.out_channels, d.channels, neck.strides[:4], d.parameterization,
                                    d.min_depth, d.max_depth, d.loss, d.silog_lambda, d.silog_scale,
                                    loss_max_depth=d.loss_max_depth)
    if cfg.sharing != "hard":  # soft / cross-stitch: one trunk per task, built from this backbone
        from perception.models.sharing import build_sharing_model

        return build_sharing_model(cfg, backbone, heads)
    return MultiTaskModel(backbone, neck, heads)
