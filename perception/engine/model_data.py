"""Does the network fit the data? Each classifying task's classes must be those of the labels it reads, id for id.

A head with more classes than the data trains and evaluates classes that never occur (the metrics are silently
wrong); one with fewer fails deep in the loss on the first label it cannot index. Training and evaluation check
both before the first step or image.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from perception.utils.configurable import ConfigError

def _generic(names: Sequence[str]) -> bool:
    """Names the config filled in itself (``class_0``, ``class_1``, ...): only the count says anything."""
    return all(name == f"class_{i}" for i, name in enumerate(names))


def _preview(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}]"


def dataset_classes(loader: Any) -> tuple[dict[str, list[str]], str] | None:
    """(task -> class names, description) of a loader's dataset, or None when it does not say (a custom one)."""
    dataset = getattr(loader, "dataset", loader)
    classes = getattr(dataset, "classes", None)
    if not isinstance(classes, Mapping):
        return None
    describe = getattr(dataset, "describe", None)
    return {k: list(v) for k, v in classes.items()}, describe() if callable(describe) else type(dataset).__name__


def _key(tasks_spec: Any, task: Any) -> str:
    """The config key of a task's class settings (list form: its type's section; mapping form: its entry)."""
    return f"model.{task.TYPE}" if isinstance(tasks_spec, (list, tuple)) else f"model.tasks.{task.name}"


def check_model_fits_data(model_cfg: Any, tasks: Mapping[str, Any], classes: Mapping[str, Sequence[str]],
                          data: str, model: str, fix: str) -> None:
    """Raise ConfigError when a task's classes differ from its labels' classes in number, name or order.

    Args:
        model_cfg: the network's :class:`perception.models.config.ModelConfig` (for the keys in messages).
        tasks: name -> :class:`perception.tasks.Task`, the heads that run.
        classes: label -> the data's class names (labels without names are not checked).
        data: the data, for the message (e.g. ``"data.val (synthetic val ...)"``).
        model: the network's origin, for the message (e.g. ``"the config"``, ``"checkpoint 'best.pt'"``).
        fix: what the user can do, appended to the message (``{task}`` is replaced by the task).
    """
    for name, task in tasks.items():
        wanted, have = list(classes.get(task.label) or []), task.class_names
        if not wanted or not have:
            continue
        remedy = fix.format(task=name)
        key = _key(model_cfg.tasks, task)
        mapping = "or map the data's classes onto the model's with the dataset's class_map"
        if len(have) != len(wanted):
            raise ConfigError(
                f"{name} classes: {model} has {len(have)} ({key}.num_classes) but {data} has {len(wanted)} "
                f"{_preview(wanted)}; the head's classes must be the data's. {remedy} ({mapping})")
        if _generic(have) or have == wanted:
            continue
        i = next(i for i, (a, b) in enumerate(zip(have, wanted)) if a != b)
        order = " (the same names in another order)" if sorted(have) == sorted(wanted) else ""
        raise ConfigError(
            f"{name} classes: {model} names class {i} {have[i]!r} ({key}.class_names) but {data} calls it "
            f"{wanted[i]!r}{order}; model {_preview(have)}, data {_preview(wanted)}. {remedy} ({mapping})")


def check_loaders(model_cfg: Any, tasks: Mapping[str, Any], loaders: Mapping[str, Any], model: str, fix: str
                  ) -> None:
    """:func:`check_model_fits_data` for each ``{"data.train": loader, ...}`` whose dataset names its classes."""
    for where, loader in loaders.items():
        found = dataset_classes(loader)
        if found is not None:
            check_model_fits_data(model_cfg, tasks, found[0], f"{where} ({found[1]})", model, fix)
