"""Rebuild a trained network from one of the toolkit's checkpoints, with only the heads that are asked for.

The checkpoint is read by :func:`perception.engine.checkpoint.load_checkpoint`, which loads with
``weights_only=True``: no pickled code runs; foreign, truncated or malicious files raise ``CheckpointError``.
The network is rebuilt from the config stored in it. Weights: ``state["ema"]`` (the exponential moving average
of the weights, a model state dict, possibly wrapped as ``module.*`` by timm's ``ModelEmaV3``) when present and
``prefer_ema``; otherwise ``state["model"]``.
"""
from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from perception.config import Config, config_from_dict
from perception.engine.checkpoint import CheckpointError, load_checkpoint
from perception.models import build_model
from perception.models.config import check_tasks

# Prefixes that wrappers put in front of state-dict keys: DDP / EMA ("module."), torch.compile ("_orig_mod.").
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


@dataclass
class LoadedModel:
    """A network rebuilt from a checkpoint.

    Attributes:
        model: the network in eval mode, on the CPU, with the heads of ``tasks`` only.
        config: the run's full config.
        tasks: the heads that run.
        weights: which weights were loaded: ``ema`` or ``model``.
        step: the training step the checkpoint was written at (``None`` when it does not say).
    """

    model: nn.Module
    config: Config
    tasks: list[str]
    weights: str
    step: int | None


def _strip_wrappers(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    state = {k: v for k, v in state_dict.items() if k != "n_averaged"}  # AveragedModel's counter
    changed = True
    while changed and state:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def select_weights(state: Mapping, prefer_ema: bool = True) -> tuple[dict[str, Tensor], str]:
    """The state dict to load from a checkpoint: its EMA weights when present (and preferred), else ``model``."""
    ema = state.get("ema")
    if prefer_ema and isinstance(ema, Mapping):
        for key in ("module", "state_dict", "model"):  # a state dict nested one level down
            if isinstance(ema.get(key), Mapping):
                ema = ema[key]
                break
        if ema and all(isinstance(v, Tensor) for v in ema.values()):
            return _strip_wrappers(ema), "ema"
    model = state["model"]
    if not isinstance(model, Mapping):
        raise CheckpointError(f"checkpoint 'model' entry: expected a state dict, got {type(model).__name__}")
    return _strip_wrappers(model), "model"


def load_weights(model: nn.Module, weights: Mapping[str, Tensor], source: str, partial: bool) -> None:
    """Load ``weights`` into ``model``, with errors that name the keys at fault.

    Args:
        partial: the model holds a subset of the checkpoint's heads, so keys it lacks are expected and skipped;
            keys the model needs but the checkpoint lacks are always an error.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    mismatched = [f"{k}: checkpoint {tuple(weights[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in expected.items() if k in weights and weights[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
    if unexpected and not partial:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches (e.g. {mismatched[:3]})")
    if problems:
        raise CheckpointError(f"{source}: the weights do not fit the network its config describes: "
                              + "; ".join(problems))
    model.load_state_dict({k: weights[k] for k in expected}, strict=True)


def load_model(path: str | os.PathLike, tasks: Sequence[str] | None = None, prefer_ema: bool = True
               ) -> LoadedModel:
    """Rebuild the network stored in a checkpoint, with the heads of ``tasks`` only (all by default).

    With the default ``hard`` sharing, the network is built with those heads alone (detection's P6/P7 are not
    built when detection is not asked for); other sharing modes mix the tasks' trunks, so the whole network is
    built and only the asked-for heads run.

    Raises:
        FileNotFoundError, CheckpointError: the file is missing, not one of ours, truncated, refused (pickled
            code), or its weights do not fit its config.
        ValueError: ``tasks`` names a task the checkpoint's network does not have.
    """
    state = load_checkpoint(path)
    try:
        cfg = config_from_dict(state["config"])
    except Exception as err:  # ConfigError, ValueError, TypeError: a config this version cannot read
        raise CheckpointError(f"checkpoint {str(path)!r}: its config is not valid for this version of perception "
                              f"({err})") from None
    trained = list(cfg.model.tasks)
    tasks = trained if tasks is None else check_tasks(tasks)
    for task in tasks:
        if task not in trained:
            raise ValueError(f"task {task!r}: checkpoint {str(path)!r} was trained for {', '.join(trained)} only")
    tasks = [t for t in trained if t in tasks]  # the network's own order

    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.backbone.pretrained = False  # every weight comes from the checkpoint: no download, no file
    subset = getattr(model_cfg, "sharing", "hard") == "hard" and tasks != trained
    if subset:
        model_cfg.tasks = list(tasks)
    model = build_model(model_cfg)
    weights, which = select_weights(state, prefer_ema)
    load_weights(model, weights, f"checkpoint {str(path)!r} ({which} weights)", partial=subset)
    step = state.get("step")
    return LoadedModel(model.eval(), cfg, tasks, which, int(step) if isinstance(step, (int, Tensor)) else None)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> the first CUDA device when there is one, else the CPU; anything else as given (checked)."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device {device!r}: expected auto, cpu, cuda or cuda:N ({err})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available on this machine; use --device cpu or auto")
    return dev
