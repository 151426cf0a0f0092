"""What the predictor returns for one image: per task, plain numpy results at the image's own size, plus timings.

    pred = predictor("street.png")
    pred.tasks                      # ["objects", "semantic", "depth"]: the task names, in the network's order
    pred["objects"]["boxes"]        # one task's result: a dict of numpy arrays, lists and plain values
    pred.boxes, pred.depth          # a field of the one task that has it (None when no task has it)

Nothing in a :class:`Prediction` is a type of this package or of PyTorch (results are dicts of numpy arrays,
lists and numbers; task types are their names), so a ROS node, a car's middleware or a notebook can use it as it
is; :meth:`Prediction.to_record` gives the JSON line that ``tools/infer.py`` writes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Mapping

from perception.tasks import TASK_TYPES, Task, build_tasks

@dataclass
class Prediction:
    """Predictions for one image, in the input image's pixels.

    Attributes:
        height, width: the input image's size; every map of every result has it.
        results: task name -> that task's result (a dict whose keys are its type's ``FIELDS``, e.g. a detection
            task's ``boxes`` ndarray[N, 4] float32 xyxy, ``scores``, ``labels``, ``class_names``; a segmentation
            task's ``semantic`` ndarray[H, W] uint8 ids and ``semantic_names``; a depth task's ``depth``
            ndarray[H, W] float32 metres); in the network's task order.
        types: task name -> task type name (``"detection"``, ...).
        timings: milliseconds spent per image in ``pre`` (decode, resize, copy), ``forward`` (network) and
            ``post`` (post-processing, mapping back, copy to numpy); for a batch, the batch's time divided by
            its size.
        meta: where the image came from (``path``, ``frame`` index, ...), as given by the source.

    A field of a result is also an attribute (``pred.boxes``, ``pred.semantic``, ``pred.depth``, ...) when exactly
    one task has it: ``None`` when none of the tasks that ran has it, ``AttributeError`` naming the tasks when
    several have it (two segmentation tasks: read ``pred["semantic"]["semantic"]``, ``pred["drivable"][...]``).
    """

    height: int
    width: int
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def tasks(self) -> list[str]:
        """The names of the tasks this prediction holds, in the network's order."""
        return list(self.results)

    def __getitem__(self, task: str) -> dict[str, Any]:
        """One task's result."""
        if task not in self.results:
            raise KeyError(f"task {task!r} is not in this prediction; it has {', '.join(self.results) or 'none'}")
        return self.results[task]

    def __contains__(self, task: object) -> bool:
        return task in self.results

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: a field of a result. Private names (and the dataclass fields
        # while a copy or an unpickled object is being built) never come here on purpose.
        if name.startswith("_") or name in ("results", "types", "timings", "meta", "height", "width"):
            raise AttributeError(name)
        holders = [task for task, result in self.__dict__.get("results", {}).items() if name in result]
        if len(holders) > 1:
            raise AttributeError(f"Prediction.{name}: tasks {', '.join(holders)} all have {name!r}; read one task's "
                                 f"result instead, e.g. pred[{holders[0]!r}][{name!r}]")
        if holders:
            return self.results[holders[0]][name]
        if name in _registered_fields():  # a field some type has (boxes, semantic, depth, ...): no task ran it
            return None
        raise AttributeError(f"'Prediction' object has no attribute {name!r} (its tasks: "
                             f"{', '.join(self.__dict__.get('results', {})) or 'none'})")

    def detections_coco(self, category_offset: int = 0, task: str | None = None) -> list[dict[str, Any]]:
        """Detections in COCO result style: ``bbox`` [x, y, width, height], ``category_id``, ``category_name``,
        ``score`` (``category_id`` = label + ``category_offset``), of ``task`` (default: the one task with
        boxes; ``[]`` when there is none)."""
        name = task or self._holder("boxes")
        if name is None:
            return []
        detections = self.task_record(name).get("detections", [])
        return [{**d, "category_id": d["category_id"] + category_offset} for d in detections]

    def task_record(self, task: str, tasks: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The JSON summary of one task's result (its type's ``record``)."""
        spec = (tasks or {}).get(task) or default_tasks({task: self.types[task]})[task]
        return spec.record(self[task])

    def to_record(self, tasks: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """One JSON-serialisable line of ``predictions.jsonl`` (schema in docs/inference.md):

        the source's ``path`` or ``frame``, ``height``, ``width``, ``tasks`` (task name -> ``{"type": ...,
        **the type's summary}``, e.g. ``detections``, ``semantic_classes``, ``depth_range_m``) and ``timings_ms``.

        Args:
            tasks: task name -> :class:`perception.tasks.Task`, when at hand (default: each type with its default
                settings; a summary reads only the result).
        """
        record: dict[str, Any] = {k: v for k, v in self.meta.items() if isinstance(v, (str, int, float, type(None)))}
        record.update({"height": self.height, "width": self.width})
        record["tasks"] = {name: {"type": self.types.get(name), **self.task_record(name, tasks)}
                           for name in self.results}
        record["timings_ms"] = {k: round(float(v), 3) for k, v in self.timings.items()}
        return record

    def _holder(self, name: str) -> str | None:
        holders = [task for task, result in self.results.items() if name in result]
        if len(holders) > 1:
            raise ValueError(f"tasks {', '.join(holders)} all have {name!r}; say which with task=")
        return holders[0] if holders else None


@lru_cache(maxsize=None)
def _registered_fields() -> frozenset[str]:
    """The ``FIELDS`` of every registered task type (those of the shipped types are the attributes the Python API
    has always had: boxes, scores, labels, class_names, semantic, semantic_names, depth)."""
    return frozenset(f for cls in TASK_TYPES.values() for f in cls.FIELDS)


def default_tasks(types: Mapping[str, str]) -> dict[str, Task]:
    """Task name -> a task of its type with default settings: enough for what reads only a result (records,
    pictures)."""
    return {name: _default_task(name, type_name) for name, type_name in types.items()}


@lru_cache(maxsize=64)
def _default_task(name: str, type_name: str) -> Task:
    return build_tasks({name: {"type": type_name}})[name]
