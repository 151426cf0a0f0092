"""Does the network fit the data? Its detection and segmentation classes must be the dataset's, id for id.

A head with more classes than the data trains and evaluates classes that never occur (the metrics are silently
wrong); one with fewer fails deep in the loss on the first label it cannot index. Training and evaluation check
both before the first step or image.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from perception.utils.configurable import ConfigError

# The mix's class list of each task, the key that sets it.
_DATA_KEYS = {"detection": "data.detection_classes", "segmentation": "data.semantic_classes"}


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


def check_model_fits_data(model_cfg: Any, tasks: Sequence[str], classes: Mapping[str, Sequence[str]],
                          data: str, model: str, fix: str) -> None:
    """Raise ConfigError when a head's classes differ from the data's in number, name or order.

    Args:
        model_cfg: the network's :class:`perception.models.config.ModelConfig`.
        tasks: the heads that run.
        classes: task -> the data's class names (tasks without names are not checked).
        data: the data, for the message (e.g. ``"data.val (synthetic val ...)"``).
        model: the network's origin, for the message (e.g. ``"the config"``, ``"checkpoint 'best.pt'"``).
        fix: what the user can do, appended to the message (``{task}`` is replaced by the task).
    """
    for task in ("detection", "segmentation"):
        if task not in tasks or not classes.get(task):
            continue
        remedy = fix.format(task=task)
        head = getattr(model_cfg, task)
        wanted, have = list(classes[task]), list(head.class_names)
        if head.num_classes != len(wanted):
            raise ConfigError(
                f"{task} classes: {model} has {head.num_classes} (model.{task}.num_classes) but {data} has "
                f"{len(wanted)} {_preview(wanted)}; the head's classes must be the data's. {remedy} (or map the "
                f"data's classes with {_DATA_KEYS[task]} and class_map)")
        if _generic(have) or have == wanted:
            continue
        i = next(i for i, (a, b) in enumerate(zip(have, wanted)) if a != b)
        order = " (the same names in another order)" if sorted(have) == sorted(wanted) else ""
        raise ConfigError(
            f"{task} classes: {model} names class {i} {have[i]!r} (model.{task}.class_names) but {data} calls it "
            f"{wanted[i]!r}{order}; model {_preview(have)}, data {_preview(wanted)}. {remedy} (or map the data's "
            f"classes with {_DATA_KEYS[task]} and class_map)")


def check_loaders(model_cfg: Any, tasks: Sequence[str], loaders: Mapping[str, Any], model: str, fix: str) -> None:
    """:func:`check_model_fits_data` for each ``{"data.train": loader, ...}`` whose dataset names its classes."""
    for where, loader in loaders.items():
        found = dataset_classes(loader)
        if found is not None:
            check_model_fits_data(model_cfg, tasks, found[0], f"{where} ({found[1]})", model, fix)
