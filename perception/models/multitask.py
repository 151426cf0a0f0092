"""The multi-task network: one timm backbone and one FPN shared by the heads of any number of named tasks.

    pyramid = neck(backbone(images))                 # shared: P2..P5 (+ P6, P7 when a task reads them)
    outputs = {task: head(levels of pyramid)}        # raw tensors per task

Any non-empty subset of the tasks can be switched on; a single-task baseline is this same model with one task.
Losses (``compute_losses``) and post-processing (``postprocess``) are separate, named steps.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Sequence

from torch import Tensor, nn

from perception.models.backbone import TimmBackbone
from perception.models.neck import FPN, pyramid_output_parameters
from perception.tasks import Task


class MultiTaskModel(nn.Module):
    """Backbone + FPN + one head per task.

    Args:
        backbone: the shared feature extractor (C2..C5).
        neck: the shared feature pyramid.
        heads: task name -> head.
        task_specs: task name -> :class:`perception.tasks.Task` (how each head's output is trained, decoded and
            evaluated); the same keys as ``heads``.
    """

    def __init__(self, backbone: TimmBackbone, neck: FPN, heads: dict[str, nn.Module],
                 task_specs: dict[str, Task]) -> None:
        super().__init__()
        if list(heads) != list(task_specs) or not heads:
            raise ValueError(f"heads {list(heads)} and tasks {list(task_specs)}: expected the same non-empty keys")
        self.backbone = backbone
        self.neck = neck
        self.heads = nn.ModuleDict(heads)
        self.task_specs = dict(task_specs)
        self.level_index = {name: level_indices(task, neck.strides) for name, task in self.task_specs.items()}

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
        return {task: self.heads[task]([pyramid[i] for i in self.level_index[task]]) for task in tasks}

    def forward(self, images: Tensor, tasks: Iterable[str] | None = None, return_features: bool = False):
        """Raw outputs keyed by task name (each head's own form: a dict of tensors, logits, a raw map).

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

    def compute_losses(self, outputs: dict, batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Per-task losses over the images that carry each task's labels.

        Every task in ``outputs`` gets a loss; a task no image of the batch carries gets exactly 0 (still attached
        to the graph, so distributed training sees every parameter used). ``batch`` (a
        :class:`perception.data.Batch`: ``targets[label]``, ``has[label]``) must be on the outputs' device.

        Returns:
            ``task_losses`` (task -> scalar) and ``components`` (detached parts for logging, such as
            ``detection/cls``).
        """
        task_losses, components = {}, {}
        for name, out in outputs.items():
            task = self.task_specs[name]
            if task.label not in batch.targets:
                task_losses[name] = _zero_loss(out)
                continue
            loss, parts = task.loss(self.heads[name], out, batch.targets[task.label], batch.has[task.label])
            task_losses[name] = loss
            components.update({f"{name}/{k}": v for k, v in parts.items()})
        return task_losses, components

    def postprocess(self, outputs: dict, image_size: tuple[int, int], options: dict[str, dict] | None = None
                    ) -> dict:
        """Predictions at the network input's size ``(H, W)``, per task (each type's own form: per-image box
        dicts, Tensor[B, H, W] class ids or metres, ...); ``options`` gives a task's thresholds for this call,
        e.g. ``{"detection": {"score_thresh": 0.05}}``."""
        options = options or {}
        return {name: self.task_specs[name].postprocess(self.heads[name], out, image_size, **options.get(name, {}))
                for name, out in outputs.items()}

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters every task's loss depends on (backbone and neck), for the gradient-based MTL methods."""
        for module in (self.backbone, self.neck):
            yield from (p for p in module.parameters() if p.requires_grad)

    def last_shared_parameters(self) -> Iterator[nn.Parameter]:
        """The last shared layer, the FPN's output convolutions (where GradNorm measures gradient norms)."""
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


def _zero_loss(out) -> Tensor:
    """0 attached to every tensor of a head's output (so that DDP sees the head's parameters used)."""
    leaves = [t for t in (out.values() if isinstance(out, dict) else [out]) if isinstance(t, Tensor)
              and t.is_floating_point()]
    return sum(t.float().sum() * 0.0 for t in leaves)


def level_indices(task: Task, strides: Sequence[int]) -> list[int]:
    """Positions in a pyramid of ``strides`` of the levels ``task`` reads."""
    wanted = task.pyramid_strides()
    missing = [s for s in wanted if s not in strides]
    if missing:
        raise ValueError(f"task {task.name!r} reads pyramid strides {list(wanted)}; the neck gives {list(strides)}")
    return [list(strides).index(s) for s in wanted]


def build_heads(tasks: dict[str, Task], neck: FPN) -> dict[str, nn.Module]:
    """One head per task on the pyramid levels it reads."""
    return {name: task.build_head(neck.out_channels, task.pyramid_strides()) for name, task in tasks.items()}
