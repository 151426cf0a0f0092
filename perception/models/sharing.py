"""Parameter sharing between the tasks: the ``soft`` and ``cross_stitch`` alternatives to one shared trunk.

``hard`` (the default, :class:`~perception.models.multitask.MultiTaskModel`): one backbone + FPN for all tasks.

``soft`` (the classic soft parameter sharing, e.g. Duong et al. 2015): every task has its own backbone + FPN,
started from identical weights and pulled together by ``lambda * sum_{a < b} sum_theta |theta_a - theta_b|^2``
over corresponding parameters (detection's extra P6/P7 convolutions have no counterpart and are not pulled).

``cross_stitch`` (Misra, Shrivastava, Gupta, Hebert, "Cross-stitch Networks for Multi-task Learning", CVPR 2016):
every task has its own backbone; after each stage the tasks' outputs are mixed by a learned ``K x K`` matrix
(``x~_i = sum_j alpha_ij x_j``), initialised near the identity (``alpha_ii = 0.9``, the rest sharing 0.1 as in
the paper); every task reads its own mixed C2..C5 through its own FPN.

``mtan`` (after Liu, Johns, Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019) and ``adapters``
(residual bottleneck adapters, as in Rebuffi et al. 2017 and Houlsby et al. 2019): one backbone + FPN shared as in
``hard``, and between the pyramid and each head a light module per task and level that gives the task its own
features: a soft attention mask multiplied into the shared level (MTAN), or a residual correction started at zero
(adapters, so that training starts at exactly hard sharing). See :class:`TaskAdaptedModel`.

All modes keep ``MultiTaskModel``'s API (``forward``, ``compute_losses``, ``postprocess``, ``shared_parameters``), so
the trainer and the predictor work unchanged. The soft penalty is returned by ``compute_losses`` as the one
component that carries a gradient, ``components[PENALTY_KEY]``; the trainer hands it to the weighting as its
``extra`` term, which every method adds unweighted (it belongs to no task), so that losses meet in one place.
"""
from __future__ import annotations

import copy
from typing import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from timm.models._features import FeatureDictNet
from torch import Tensor, nn

from perception.models.backbone import TimmBackbone
from perception.models.config import ModelConfig
from perception.models.multitask import MultiTaskModel, level_indices
from perception.models.neck import FPN, pyramid_output_parameters
from perception.ops.layers import num_groups
from perception.tasks import Task

PENALTY_KEY = "sharing/penalty"  # the loss component of no task: the weighting's unweighted ``extra`` term


def backbone_stages(body: nn.Module) -> list[nn.Sequential]:
    """Split a timm ``features_only`` model into consecutive stages, each ending at one of its outputs.

    Running the stages in turn gives C2..C5, which lets several backbones run in lockstep and exchange their
    stage outputs (cross-stitch). Supports timm's generic feature wrapper (ResNet, ConvNeXt, RegNet, ...) and the
    EfficientNet/MobileNet feature classes.

    Raises:
        ValueError: for another feature wrapper, naming it.
    """
    stages: list[list[nn.Module]] = []
    if isinstance(body, FeatureDictNet):                     # FeatureListNet derives from it
        current: list[nn.Module] = []
        for name, module in body.items():
            current.append(module)
            if name in body.return_layers:
                stages.append(current)
                current = []
    elif hasattr(body, "_stage_out_idx") and getattr(body, "feature_hooks", None) is None:
        current = [getattr(body, n) for n in ("conv_stem", "bn1", "act1") if hasattr(body, n)]
        if 0 in body._stage_out_idx:
            stages.append(current)
            current = []
        for i, block in enumerate(body.blocks):
            current.append(block)
            if i + 1 in body._stage_out_idx:
                stages.append(current)
                current = []
    else:
        raise ValueError(f"cross_stitch sharing: cannot run the stages of timm feature model "
                         f"{type(body).__name__} one by one; use a backbone such as resnet*, convnext*, regnet*, "
                         "efficientnet* or mobilenetv3*, or model.sharing hard/soft")
    return [nn.Sequential(*modules) for modules in stages]


def tie_initialisation(modules: Sequence[nn.Module]) -> None:
    """Copy the first module's parameters and buffers into the others wherever names and shapes match."""
    reference = modules[0].state_dict()
    for module in modules[1:]:
        own = module.state_dict()
        shared = {k: v for k, v in reference.items() if k in own and own[k].shape == v.shape}
        module.load_state_dict(shared, strict=False)


class CrossStitchUnit(nn.Module):
    """Mixes the tasks' feature maps of one stage: ``x~_i = sum_j alpha_ij x_j``.

    Args:
        num_tasks: K.
        self_weight: initial ``alpha_ii``; the off-diagonal entries start at ``(1 - self_weight) / (K - 1)``.
    """

    def __init__(self, num_tasks: int, self_weight: float = 0.9) -> None:
        super().__init__()
        off = (1.0 - self_weight) / (num_tasks - 1) if num_tasks > 1 else 0.0
        alpha = torch.full((num_tasks, num_tasks), off)
        alpha.fill_diagonal_(self_weight if num_tasks > 1 else 1.0)
        self.weight = nn.Parameter(alpha)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        """Args: features: K tensors Tensor[B, C, H, W]. Returns: the K mixed tensors."""
        mixed = torch.tensordot(self.weight.to(features[0].dtype), torch.stack(list(features)), dims=1)
        return list(mixed.unbind(0))


class PerTaskTrunkModel(MultiTaskModel):
    """Base of the sharing modes with one backbone + FPN per task; the heads, losses and post-processing are
    ``MultiTaskModel``'s.

    ``forward_features`` returns a dict task -> pyramid, which ``forward_heads`` accepts. ``forward(...,
    return_features=True)`` gives ``None`` as features: no representation is shared by all tasks, so MGDA
    falls back to the shared parameters.

    Args:
        backbones: task -> backbone.
        necks: task -> FPN.
        heads: task -> head.
        task_specs: task -> :class:`perception.tasks.Task`.
    """

    def __init__(self, backbones: dict[str, TimmBackbone], necks: dict[str, FPN], heads: dict[str, nn.Module],
                 task_specs: dict[str, Task]) -> None:
        # No single trunk: ``backbone`` and ``neck`` are task -> module dicts, so that parameter names keep their
        # ``backbone.`` / ``neck.`` prefixes (the optimizer's backbone learning-rate multiplier relies on them).
        nn.Module.__init__(self)
        self.heads = nn.ModuleDict(heads)
        self.task_specs = dict(task_specs)
        self.backbone = nn.ModuleDict({t: backbones[t] for t in self.tasks})
        self.neck = nn.ModuleDict({t: necks[t] for t in self.tasks})
        self.level_index = {t: level_indices(self.task_specs[t], necks[t].strides) for t in self.tasks}

    def forward_features(self, images: Tensor, tasks: Iterable[str] | None = None) -> dict[str, list[Tensor]]:
        """Task -> its pyramid [P2, ..., P5] (+ [P6, P7] for detection), for ``tasks`` (default: all)."""
        raise NotImplementedError

    def forward_heads(self, pyramids: dict[str, Sequence[Tensor]], tasks: Iterable[str] | None = None) -> dict:
        tasks = self.tasks if tasks is None else self._check_subset(tasks)
        return {t: self.heads[t]([pyramids[t][i] for i in self.level_index[t]]) for t in tasks}

    def forward(self, images: Tensor, tasks: Iterable[str] | None = None, return_features: bool = False):
        tasks = self.tasks if tasks is None else self._check_subset(tasks)
        outputs = self.forward_heads(self.forward_features(images, tasks), tasks)
        return (outputs, None) if return_features else outputs

    def last_shared_parameters(self) -> Iterator[nn.Parameter]:
        """Every task's FPN output convolutions, the last layer before each head (GradNorm's ``W``): a task's
        loss reaches only its own, so the norm over all of them is that task's gradient norm."""
        for neck in self.neck.values():
            yield from (p for p in pyramid_output_parameters(neck) if p.requires_grad)

    @staticmethod
    def _check_images(images: Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images: expected a Tensor[B, 3, H, W] of RGB images, got shape {tuple(images.shape)}")


class SoftSharingModel(PerTaskTrunkModel):
    """One trunk per task, with a penalty on the distance between corresponding parameters.

    Args:
        backbones, necks, heads: per task (started from identical weights by :func:`build_sharing_model`).
        penalty_weight: lambda.
    """

    def __init__(self, backbones: dict[str, TimmBackbone], necks: dict[str, FPN], heads: dict[str, nn.Module],
                 task_specs: dict[str, Task], penalty_weight: float = 1e-2) -> None:
        super().__init__(backbones, necks, heads, task_specs)
        self.penalty_weight = penalty_weight

    def forward_features(self, images: Tensor, tasks: Iterable[str] | None = None) -> dict[str, list[Tensor]]:
        self._check_images(images)
        tasks = self.tasks if tasks is None else self._check_subset(tasks)
        return {t: self.neck[t](self.backbone[t](images)) for t in tasks}   # only the trunks that are needed

    def _trunk_parameters(self, task: str) -> dict[str, nn.Parameter]:
        named = {f"backbone.{n}": p for n, p in self.backbone[task].named_parameters()}
        named.update({f"neck.{n}": p for n, p in self.neck[task].named_parameters()})
        return {n: p for n, p in named.items() if p.requires_grad}

    def sharing_penalty(self, tasks: Iterable[str] | None = None) -> Tensor:
        """``lambda * sum over pairs of tasks of the squared distance of their corresponding parameters``.

        Args:
            tasks: the pairs among these tasks (default: all), e.g. the tasks trained this step.
        """
        tasks = self.tasks if tasks is None else list(tasks)
        params = {t: self._trunk_parameters(t) for t in tasks}
        device = next(iter(params[tasks[0]].values())).device if tasks and params[tasks[0]] else None
        total = torch.zeros((), device=device)
        for i, a in enumerate(tasks):
            for b in tasks[i + 1:]:
                names = [n for n in params[a] if n in params[b] and params[a][n].shape == params[b][n].shape]
                if not names:
                    continue
                diffs = torch._foreach_sub([params[a][n] for n in names], [params[b][n] for n in names])
                total = total + torch.stack(torch._foreach_norm(diffs)).pow(2).sum()
        return self.penalty_weight * total

    def compute_losses(self, outputs: dict, batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """``MultiTaskModel.compute_losses`` plus ``components[PENALTY_KEY]`` over the tasks in ``outputs``: a
        scalar with a gradient, which the trainer passes to ``Weighting.backward(..., extra=...)``."""
        task_losses, components = super().compute_losses(outputs, batch)
        components[PENALTY_KEY] = self.sharing_penalty([t for t in self.tasks if t in outputs])
        return task_losses, components

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """None: no parameter serves more than one task (the penalty couples them instead)."""
        return iter(())


class CrossStitchModel(PerTaskTrunkModel):
    """Per-task backbones whose stage outputs are mixed by cross-stitch units; per-task FPNs.

    Args:
        backbones, necks, heads: per task.
        init_self_weight: initial diagonal of the cross-stitch matrices (1: separate networks).
    """

    def __init__(self, backbones: dict[str, TimmBackbone], necks: dict[str, FPN], heads: dict[str, nn.Module],
                 task_specs: dict[str, Task], init_self_weight: float = 0.9) -> None:
        super().__init__(backbones, necks, heads, task_specs)
        # Plain lists (not registered): the stages are views of the backbones' own modules.
        self._stages = {t: backbone_stages(self.backbone[t].body) for t in self.tasks}
        num_stages = {len(s) for s in self._stages.values()}
        if num_stages != {4}:
            raise ValueError(f"cross_stitch sharing: expected 4 backbone stages (C2..C5), found {sorted(num_stages)}")
        self.units = nn.ModuleList([CrossStitchUnit(len(self.tasks), init_self_weight) for _ in range(4)])

    def forward_features(self, images: Tensor, tasks: Iterable[str] | None = None) -> dict[str, list[Tensor]]:
        self._check_images(images)
        tasks = self.tasks if tasks is None else self._check_subset(tasks)
        # Every backbone runs (the mixing needs all of them); only the requested tasks' FPNs do.
        xs = []
        for t in self.tasks:
            bb = self.backbone[t]
            xs.append((images.to(bb.pixel_mean.dtype) - bb.pixel_mean) / bb.pixel_std)
        features: list[list[Tensor]] = [[] for _ in self.tasks]
        for level, unit in enumerate(self.units):
            xs = unit([self._stages[t][level](x) for t, x in zip(self.tasks, xs)])
            for per_task, x in zip(features, xs):
                per_task.append(x)
        return {t: self.neck[t](features[self.tasks.index(t)]) for t in tasks}

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """The backbones and the cross-stitch units: every task's loss depends on all of them."""
        for module in (self.backbone, self.units):
            yield from (p for p in module.parameters() if p.requires_grad)


class TaskAttention(nn.Module):
    """MTAN's attention module for one task and one pyramid level: ``a = sigmoid(GN(conv1x1(ReLU(GN(conv1x1(x))))))
    * p``, with ``x`` the shared level ``p``, or ``p`` concatenated with the task's attended level below (the next
    finer one, resized to ``p``'s size) as in the paper's encoder.

    Args:
        channels: channels of the pyramid level.
        hidden: channels of the bottleneck.
        from_below: the mask also reads the task's attended feature of the level below.
    """

    def __init__(self, channels: int, hidden: int, from_below: bool = False) -> None:
        super().__init__()
        self.from_below = from_below
        inputs = 2 * channels if from_below else channels
        # GroupNorm where the paper has BatchNorm, as in the heads: P6/P7 of a small input are 1 or 2 pixels, which
        # batch statistics of a batch of one cannot normalise.
        self.mask = nn.Sequential(nn.Conv2d(inputs, hidden, 1, bias=False), nn.GroupNorm(num_groups(hidden), hidden),
                                  nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1, bias=False),
                                  nn.GroupNorm(num_groups(channels), channels), nn.Sigmoid())

    def forward(self, shared: Tensor, below: Tensor | None = None) -> Tensor:
        """Args: shared (Tensor[B, C, H, W]): the shared level; below: the task's attended finer level, or None.
        Returns: the attended level, Tensor[B, C, H, W]."""
        x = shared
        if self.from_below and below is not None:
            below = F.interpolate(below, size=shared.shape[-2:], mode="bilinear", align_corners=False)
            x = torch.cat([shared, below.to(shared.dtype)], dim=1)
        return self.mask(x) * shared


class ResidualAdapter(nn.Module):
    """A residual bottleneck adapter for one task and one pyramid level: ``p + up(ReLU(dw3x3(ReLU(down(p)))))``,
    1x1 down to ``hidden`` channels, a depthwise 3x3, 1x1 back up. The up projection starts at zero, so the adapter
    starts as the identity.

    Args:
        channels: channels of the pyramid level.
        hidden: channels of the bottleneck (r).
    """

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.down = nn.Conv2d(channels, hidden, 1)
        self.depthwise = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.up = nn.Conv2d(hidden, channels, 1)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.up(F.relu(self.depthwise(F.relu(self.down(x)))))


class TaskLevels(nn.Module):
    """One task's modules, one per pyramid level the task's head reads: the shared levels in, the task's own out.

    Args:
        kind: ``mtan`` or ``adapters``.
        channels: channels of every level.
        num_levels: how many levels the head reads.
        hidden: bottleneck channels.
        from_below: MTAN: each level's mask also reads the task's attended level below (the first has none).
    """

    def __init__(self, kind: str, channels: int, num_levels: int, hidden: int, from_below: bool = True) -> None:
        super().__init__()
        self.kind = kind
        if kind == "mtan":
            self.levels = nn.ModuleList([TaskAttention(channels, hidden, from_below and i > 0)
                                         for i in range(num_levels)])
        elif kind == "adapters":
            self.levels = nn.ModuleList([ResidualAdapter(channels, hidden) for _ in range(num_levels)])
        else:
            raise ValueError(f"model.sharing: got {kind!r}, expected 'mtan' or 'adapters'")

    def forward(self, pyramid: Sequence[Tensor]) -> list[Tensor]:
        """Args: pyramid: the shared levels the head reads, finest first. Returns: the task's levels."""
        if len(pyramid) != len(self.levels):
            raise ValueError(f"task modules: got {len(pyramid)} pyramid levels, expected {len(self.levels)}")
        out: list[Tensor] = []
        for module, level in zip(self.levels, pyramid):
            out.append(module(level, out[-1] if out else None) if self.kind == "mtan" else module(level))
        return out


class TaskAdaptedModel(MultiTaskModel):
    """Hard sharing plus task-specific modules between the shared pyramid and each head (``mtan``, ``adapters``).

    The backbone and FPN are shared by all tasks (``shared_parameters``, and the pyramid that
    ``forward(..., return_features=True)`` returns for MGDA-UB); each task's :class:`TaskLevels` belongs to that
    task like its head (``task_parameters``): only its own loss reaches it.

    Args:
        backbone, neck, heads, task_specs: as for :class:`MultiTaskModel`.
        task_modules: task -> its :class:`TaskLevels` (the same keys as ``heads``).
    """

    def __init__(self, backbone: TimmBackbone, neck: FPN, heads: dict[str, nn.Module], task_specs: dict[str, Task],
                 task_modules: dict[str, nn.Module]) -> None:
        super().__init__(backbone, neck, heads, task_specs)
        if list(task_modules) != list(heads):
            raise ValueError(f"task modules {list(task_modules)}: expected one per task, {list(heads)}")
        self.task_modules = nn.ModuleDict(task_modules)

    def forward_heads(self, pyramid: Sequence[Tensor], tasks: Iterable[str] | None = None) -> dict:
        tasks = self.tasks if tasks is None else self._check_subset(tasks)
        return {t: self.heads[t](self.task_modules[t]([pyramid[i] for i in self.level_index[t]])) for t in tasks}

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        """Parameters of one task: its head and its attention masks or adapters."""
        for module in (self.task_modules[task], self.heads[task]):
            yield from (p for p in module.parameters() if p.requires_grad)


def build_task_adapted_model(cfg: ModelConfig, backbone: TimmBackbone, neck: FPN, heads: dict[str, nn.Module],
                             task_specs: dict[str, Task]) -> TaskAdaptedModel:
    """The ``mtan`` or ``adapters`` model: ``backbone`` and ``neck`` shared, per task one module per level it reads.

    The task modules are created after the shared parts and the heads, so that with the same seed those start
    exactly as in ``hard`` sharing.
    """
    channels = neck.out_channels
    modules = {}
    for name, task in task_specs.items():
        count = len(level_indices(task, neck.strides))
        if cfg.sharing == "mtan":
            modules[name] = TaskLevels("mtan", channels, count, max(1, channels // cfg.mtan_reduction),
                                       cfg.mtan_from_below)
        else:
            modules[name] = TaskLevels(cfg.sharing, channels, count, cfg.adapter_channels)
    return TaskAdaptedModel(backbone, neck, heads, task_specs, modules)


def build_sharing_model(cfg: ModelConfig, backbone: TimmBackbone, heads: dict[str, nn.Module],
                        task_specs: dict[str, Task]) -> MultiTaskModel:
    """The ``soft`` or ``cross_stitch`` model: copies of ``backbone`` (identical weights) and one FPN per task
    (with P6/P7 where the task reads them), started from identical weights where their parameters correspond."""
    tasks = list(heads)
    backbones = {t: backbone if i == 0 else copy.deepcopy(backbone) for i, t in enumerate(tasks)}
    necks = {t: FPN(backbone.out_channels, cfg.neck.channels, backbone.strides,
                    extra_levels=max(task_specs[t].pyramid_strides()) > backbone.strides[-1],
                    conv=cfg.neck.conv) for t in tasks}
    tie_initialisation([necks[t] for t in tasks])
    if cfg.sharing == "soft":
        return SoftSharingModel(backbones, necks, heads, task_specs, cfg.soft_sharing_weight)
    if cfg.sharing == "cross_stitch":
        return CrossStitchModel(backbones, necks, heads, task_specs, cfg.cross_stitch_init)
    raise ValueError(f"model.sharing: got {cfg.sharing!r}, expected 'soft' or 'cross_stitch' here (hard, mtan and "
                     "adapters share one trunk: perception.models.build_model)")
