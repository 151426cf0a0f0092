"""Task types and the registry that turns a config's ``model.tasks`` into named task instances.

A task type is one folder here (head, loss, metric, targets, post-processing, export decode, pictures) and one
line in ``TASK_TYPES`` below. See :mod:`perception.tasks.base` for the protocol and docs/tasks.md for the guide.
"""
from __future__ import annotations

import dataclasses
import difflib
import keyword
import re
from typing import Any, Mapping

from perception.tasks.base import Task, settings_dict
from perception.tasks.depth import DepthTask
from perception.tasks.detection import DetectionTask
from perception.tasks.normals import NormalsTask
from perception.tasks.segmentation import SegmentationTask

# The registered task types, in the order their tasks are built when ``model.tasks`` is a list.
TASK_TYPES: dict[str, type[Task]] = {cls.TYPE: cls for cls in (
    DetectionTask,
    SegmentationTask,
    DepthTask,
    NormalsTask,
)}

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")

__all__ = ["TASK_TYPES", "Task", "build_tasks", "settings_dict", "task_type"]


def task_type(name: str, where: str = "type") -> type[Task]:
    """The registered type ``name``; ``ValueError`` naming the closest ones otherwise."""
    if name not in TASK_TYPES:
        close = difflib.get_close_matches(str(name), TASK_TYPES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"{where}: unknown task type {name!r}.{hint} Registered: {', '.join(TASK_TYPES)}")
    return TASK_TYPES[name]


def _settings(cls: type[Task], values: Mapping[str, Any], where: str) -> Any:
    # The typed-config machinery lives in perception.utils; imported here to keep this module light.
    from perception.utils.configurable import from_dict

    return from_dict(cls.Config, values, prefix=f"{where}.")


def build_tasks(spec: list[str] | tuple[str, ...] | Mapping[str, Mapping[str, Any]],
                sections: Mapping[str, Any] | None = None) -> dict[str, Task]:
    """Named task instances from a config's ``model.tasks``.

    Args:
        spec: a list of type names (each task named after its type, e.g. ``[detection, depth]``), or a mapping
            ``name -> {type, label?, **settings}``. Names are lower-case identifiers, unique.
        sections: for the list form, the settings of each type (``model.detection`` ...); a type without a
            section takes its defaults.

    Returns:
        name -> :class:`Task`; the list form in the registry's order (so checkpoints of any listing order load),
        the mapping form in its own order.

    Raises:
        ValueError: naming the task, key or value that is wrong.
    """
    sections = dict(sections or {})
    tasks: dict[str, Task] = {}
    if isinstance(spec, Mapping):
        if not spec:
            raise ValueError("tasks: got an empty mapping, expected at least one task")
        for name, entry in spec.items():
            where = f"tasks.{name}"
            _check_name(name, where)
            if not isinstance(entry, Mapping):
                raise ValueError(f"{where}: expected a mapping with a 'type' (one of {', '.join(TASK_TYPES)}), "
                                 f"got {entry!r}")
            entry = dict(entry)
            if "type" not in entry:
                raise ValueError(f"{where}: missing 'type' (one of {', '.join(TASK_TYPES)})")
            cls = task_type(entry.pop("type"), f"{where}.type")
            label = entry.pop("label", None)
            if label is not None and (not isinstance(label, str) or not _NAME.match(label)):
                raise ValueError(f"{where}.label: got {label!r}, expected a lower-case name such as 'drivable'")
            tasks[name] = cls(name, _settings(cls, entry, where), label)
    else:
        names = list(spec)
        if not names:
            raise ValueError(f"tasks: got an empty list, expected a non-empty subset of {list(TASK_TYPES)}")
        for name in names:
            task_type(name, "tasks")
        if len(set(names)) != len(names):
            raise ValueError(f"tasks: got {names}, each task may appear once")
        for type_name, cls in TASK_TYPES.items():  # a fixed order, whatever order the config lists them in
            if type_name in names:
                section = sections.get(type_name)
                cfg = section if section is not None else _settings(cls, {}, type_name)
                tasks[type_name] = cls(type_name, cfg)
    _check_labels(tasks)
    return tasks


def _check_name(name: Any, where: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name) or keyword.iskeyword(name):
        raise ValueError(f"{where}: task names are lower-case identifiers (letters, digits, _), got {name!r}")


def _check_labels(tasks: Mapping[str, Task]) -> None:
    kinds: dict[str, Task] = {}
    for task in tasks.values():
        other = kinds.setdefault(task.label, task)
        if type(other) is not type(task):
            raise ValueError(f"tasks.{task.name}.label: {task.label!r} is read by task {other.name!r} of type "
                             f"{other.TYPE!r}; a {task.TYPE} task needs labels of its own type (set 'label')")


def tasks_to_spec(tasks: Mapping[str, Task]) -> dict[str, dict[str, Any]]:
    """The mapping form of ``tasks`` (what a checkpoint's config can always be rebuilt from)."""
    return {name: settings_dict(task) for name, task in tasks.items()}


def replace_settings(task: Task, **changes: Any) -> Task:
    """A copy of ``task`` with some settings changed."""
    return type(task)(task.name, dataclasses.replace(task.cfg, **changes), task.label)
