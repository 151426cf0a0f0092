"""Optimiser with per-group settings, and the learning-rate schedule as a pure function.

Parameter groups: weight decay only on weight matrices and conv kernels; none on biases, normalisation layers,
other 1-d/scalar parameters (such as FCOS's per-level scales) or the weighting's parameters (log-variances);
the backbone may take a learning-rate multiplier.

The optimisers are the fused implementations where the device has them, always stepped as plain optimizers: a
skipped step is undone afterwards (:mod:`perception.engine.step`), never handed to a kernel as ``found_inf``
(CPU fused SGD told to skip its first step left its momentum buffer uninitialised). Their state is created for
every parameter when they are built (:func:`init_optimizer_state`), so that undoing a step only has to put back
tensors that exist. Without a fused kernel AdamW keeps its step counters on the device (``capturable`` on CUDA),
so that putting them back needs no host synchronisation either.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Iterable

import torch
from torch import nn

from perception.engine.config import TrainConfig


def lr_factor(step: int, max_steps: int, warmup_steps: int = 0, warmup_factor: float = 0.001,
              schedule: str = "cosine", min_lr_ratio: float = 0.0, poly_power: float = 0.9) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step``.

    Linear warm-up from ``warmup_factor`` to 1 over ``warmup_steps``, then ``cosine`` or ``poly`` decay from 1
    to ``min_lr_ratio`` at ``max_steps`` (or ``constant`` 1).
    """
    if step < warmup_steps:
        alpha = step / warmup_steps
        return warmup_factor + (1.0 - warmup_factor) * alpha
    if schedule == "constant":
        return 1.0
    span = max(max_steps - warmup_steps, 1)
    progress = min(max((step - warmup_steps) / span, 0.0), 1.0)
    if schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif schedule == "poly":
        decay = (1.0 - progress) ** poly_power
    else:
        raise ValueError(f"train.schedule: unknown {schedule!r}; expected cosine, poly or constant")
    return min_lr_ratio + (1.0 - min_lr_ratio) * decay


def _no_decay(name: str, param: nn.Parameter, norm_param_ids: set[int]) -> bool:
    return param.ndim <= 1 or name.endswith(".bias") or id(param) in norm_param_ids


def param_groups(model: nn.Module, weighting: nn.Module | None, weight_decay: float,
                 backbone_lr_mult: float = 1.0) -> list[dict]:
    """Optimizer parameter groups.

    Args:
        model: the network (unwrapped); parameters under ``model.backbone`` get ``backbone_lr_mult``.
        weighting: the multi-task weighting (its parameters get no weight decay), or None.
        weight_decay: decay of the weight matrices and conv kernels.
        backbone_lr_mult: learning-rate multiplier of the backbone.

    Returns:
        groups with ``params``, ``weight_decay``, ``lr_mult`` and a ``name`` (empty groups left out).
    """
    norm_types = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)
    norm_param_ids = {id(p) for m in model.modules() if isinstance(m, norm_types) for p in m.parameters(False)}
    # timm's frozen/other norm layers that are not nn norm subclasses are caught by the ndim <= 1 rule.
    groups: dict[str, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part = "backbone" if name.startswith("backbone.") else "heads"
        kind = "no_decay" if _no_decay(name, param, norm_param_ids) else "decay"
        key = f"{part}/{kind}"
        group = groups.setdefault(key, {"name": key, "params": [],
                                        "weight_decay": 0.0 if kind == "no_decay" else weight_decay,
                                        "lr_mult": backbone_lr_mult if part == "backbone" else 1.0})
        group["params"].append(param)
    if weighting is not None:
        params = [p for p in weighting.parameters() if p.requires_grad]
        if params:
            groups["weighting"] = {"name": "weighting", "params": params, "weight_decay": 0.0, "lr_mult": 1.0}
    return list(groups.values())


def build_optimizer(groups: Iterable[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD over ``groups`` (``lr`` = ``cfg.lr * lr_mult``), with every parameter's state created."""
    groups = [{**g, "lr": cfg.lr * g.get("lr_mult", 1.0), "initial_lr": cfg.lr * g.get("lr_mult", 1.0)}
              for g in groups]
    on_cuda = any(p.device.type == "cuda" for g in groups for p in g["params"])
    if cfg.optimizer == "adamw":
        make = partial(torch.optim.AdamW, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
        fallback = {"capturable": on_cuda}  # step counters on the device: put back without a host sync
    elif cfg.optimizer == "sgd":
        make = partial(torch.optim.SGD, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                       weight_decay=cfg.weight_decay)
        fallback = {}
    else:
        raise ValueError(f"train.optimizer: unknown {cfg.optimizer!r}; expected adamw or sgd")
    try:
        optimizer = make(groups, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without a fused kernel: the default implementation
        optimizer = make(groups, **fallback)
    init_optimizer_state(optimizer)
    return optimizer


def init_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Create the state of every parameter that has none, exactly as AdamW/Adam or SGD create it at their first
    step, so that the first steps are bit-identical to a stock optimizer's.

    Adam(W): ``step`` 0 (float32; on the parameter's device when ``capturable`` or ``fused``, else on the CPU),
    zero ``exp_avg``/``exp_avg_sq`` (and ``max_exp_avg_sq`` with ``amsgrad``). SGD with momentum: a zero
    ``momentum_buffer``, whose first update ``0 * momentum + grad`` equals torch's ``buf = grad.clone()`` when
    ``dampening`` is 0 (which the config does not change). Call it after building and after ``load_state_dict``.

    Raises:
        ValueError: an optimizer type (or SGD with dampening) whose lazy state this does not reproduce.
    """
    for group in optimizer.param_groups:
        for p in group["params"]:
            has = optimizer.state.get(p, {})  # .get: an SGD without momentum keeps no entry at all
            if isinstance(optimizer, torch.optim.Adam):  # AdamW is an Adam
                if len(has) == 0:
                    on_device = group["capturable"] or group["fused"]
                    dtype = torch.float64 if torch.get_default_dtype() == torch.float64 and not group["fused"] \
                        else torch.float32
                    state = optimizer.state[p]
                    state["step"] = torch.zeros((), dtype=dtype, device=p.device if on_device else "cpu")
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    if group["amsgrad"]:
                        state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            elif isinstance(optimizer, torch.optim.SGD):
                if group["momentum"] != 0 and has.get("momentum_buffer") is None:
                    if group["dampening"] != 0:
                        raise ValueError("SGD with dampening: its first step differs from a zero momentum buffer's")
                    optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            else:
                raise ValueError(f"init_optimizer_state: {type(optimizer).__name__} is not supported")


def build_lr_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` applying :func:`lr_factor` (stepped once per optimizer step)."""
    fn = partial(lr_factor, max_steps=cfg.max_steps, warmup_steps=cfg.warmup_steps,
                 warmup_factor=cfg.warmup_factor, schedule=cfg.schedule, min_lr_ratio=cfg.min_lr_ratio,
                 poly_power=cfg.poly_power)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
