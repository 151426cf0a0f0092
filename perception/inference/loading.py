"""Rebuild a trained network from one of the toolkit's checkpoints, with only the heads that are asked for.

The checkpoint is read by :func:`perception.utils.checkpoint.load_checkpoint`, which loads with
``weights_only=True``: no pickled code runs; foreign, truncated or malicious files raise ``CheckpointError``.
The network is rebuilt from the ``model`` section of the config stored in it (only that section: a run's other
settings, such as a dataset's paths, need not be valid where the network is used). Weights: ``state["ema"]`` (the
exponential moving average of the weights, a model state dict, possibly wrapped as ``module.*`` by timm's
``ModelEmaV3``) when present and ``prefer_ema``; otherwise ``state["model"]``.
"""
from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from perception.models import ModelConfig, build_model
from perception.models.config import resolved_model_config
from perception.utils.checkpoint import CheckpointError, load_checkpoint
# The device resolver lives in perception.utils.device; importable from here as it always was.
from perception.utils.device import resolve_device  # noqa: F401

# Prefixes that wrappers put in front of state-dict keys: DDP / EMA ("module."), torch.compile ("_orig_mod.").
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


@dataclass
class LoadedModel:
    """A network rebuilt from a checkpoint.

    Attributes:
        model: the network in eval mode, on the CPU, with the heads of ``tasks`` only.
        config: the run's full config, as stored (plain data).
        model_config: its ``model`` section, typed (the whole network's: every task the run trained).
        image_size: the run's ``data.image_size`` (H, W), the network size it was trained for.
        tasks: the names of the tasks whose heads run, in the network's order.
        weights: which weights were loaded: ``ema`` or ``model``.
        step: the training step the checkpoint was written at (``None`` when it does not say).
    """

    model: nn.Module
    config: dict
    model_config: ModelConfig
    image_size: tuple[int, int]
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


_PYRAMID_BLOCK = re.compile(r"^(neck\.fpn\.(?:inner|layer)_blocks)\.(\d+)\.(.*)$")


def _pyramid_weights_for_subset(weights: Mapping[str, Tensor], cfg: ModelConfig, model: nn.Module
                                ) -> dict[str, Tensor]:
    """``weights`` of the whole network renumbered for ``model``, built with a subset of its heads: with
    ``neck.prune`` a subset that reads no P2 (e.g. detection alone of a network with stride-4 dense heads) has a
    pyramid whose first level is the checkpoint's second, so its FPN blocks are numbered one lower; the blocks
    of the levels it leaves out are dropped."""
    first = getattr(getattr(model, "neck", None), "first", None)
    if first is None:
        return dict(weights)
    full = copy.deepcopy(cfg)
    full.backbone.pretrained = False
    with torch.device("meta"):  # the whole network's pyramid, shapes only
        full_first = build_model(full).neck.first
    offset = first - full_first
    if offset <= 0:
        return dict(weights)
    out = {}
    for key, value in weights.items():
        match = _PYRAMID_BLOCK.match(key)
        if match is None:
            out[key] = value
        elif int(match.group(2)) >= offset:
            out[f"{match.group(1)}.{int(match.group(2)) - offset}.{match.group(3)}"] = value
    return out


def load_model(path: str | os.PathLike, tasks: Sequence[str] | None = None, prefer_ema: bool = True
               ) -> LoadedModel:
    """Rebuild the network stored in a checkpoint, with the heads of ``tasks`` only (all by default).

    With the default ``hard`` sharing, the network is built with those heads alone (the P6/P7 levels are not
    built when no task that reads them is asked for); other sharing modes mix the tasks' trunks, so the whole
    network is built and only the asked-for heads run. This is the one loader of the toolkit: the predictor,
    tools/export.py and evaluation (``perception.engine.evaluator.evaluate``) all use it.

    Args:
        path: the checkpoint.
        tasks: task names (``model.tasks`` of the run; a list-form config names its tasks after their types).
        prefer_ema: load the EMA weights when the checkpoint has them.

    Raises:
        FileNotFoundError, CheckpointError: the file is missing, not one of ours, truncated, refused (pickled
            code), or its weights do not fit its config.
        ValueError: ``tasks`` names a task the checkpoint's network does not have.
    """
    state = load_checkpoint(path)
    raw = state.get("config")
    try:
        cfg = resolved_model_config(dict(raw.get("model") or {}))  # as saved: not re-resolved by today's presets
        trained = cfg.task_names
        image_size = tuple(int(v) for v in (raw.get("data") or {}).get("image_size", ()))
        if len(image_size) != 2:
            raise ValueError(f"data.image_size: got {image_size}, expected (H, W)")
    except Exception as err:  # ConfigError, ValueError, TypeError: a config this version cannot read
        raise CheckpointError(f"checkpoint {str(path)!r}: its config is not valid for this version of perception "
                              f"({err})") from None
    wanted = trained if tasks is None else select_tasks(tasks, trained, f"checkpoint {str(path)!r}")

    model_cfg = copy.deepcopy(cfg)
    model_cfg.backbone.pretrained = False  # every weight comes from the checkpoint: no download, no file
    subset = getattr(model_cfg, "sharing", "hard") == "hard" and wanted != trained
    if subset:
        spec = model_cfg.tasks
        model_cfg.tasks = {n: spec[n] for n in wanted} if isinstance(spec, Mapping) else list(wanted)
    model = build_model(model_cfg)
    weights, which = select_weights(state, prefer_ema)
    if subset:
        weights = _pyramid_weights_for_subset(weights, cfg, model)
    load_weights(model, weights, f"checkpoint {str(path)!r} ({which} weights)", partial=subset)
    step = state.get("step")
    return LoadedModel(model.eval(), dict(raw), cfg, image_size, wanted, which,
                       int(step) if isinstance(step, (int, Tensor)) else None)


def select_tasks(tasks: Sequence[str], available: Sequence[str], where: str = "the model") -> list[str]:
    """``tasks`` checked against the ``available`` task names, in ``available``'s order.

    Raises:
        ValueError: an empty selection, a repeated name, or a name ``where`` does not have.
    """
    if isinstance(tasks, str):
        tasks = [tasks]
    tasks = list(tasks)
    if not tasks:
        raise ValueError(f"tasks: got an empty list, expected some of {', '.join(available)}")
    for task in tasks:
        if task not in available:
            raise ValueError(f"task {task!r}: {where} has the tasks {', '.join(available)} only")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks: got {tasks}, each task may appear once")
    return [t for t in available if t in tasks]
