"""What the predictor returns for one image: plain numpy arrays at the image's own size, plus timings.

Nothing in a :class:`Prediction` is a type of this package or of PyTorch, so a ROS node, a car's middleware or a
notebook can use it as it is; :meth:`Prediction.to_record` gives the JSON line that ``tools/infer.py`` writes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Prediction:
    """Predictions for one image, in the input image's pixels.

    Attributes:
        height, width: the input image's size; every map below has it.
        boxes (ndarray[N, 4] float32 | None): detections as (x0, y0, x1, y1) in input pixels, best first.
        scores (ndarray[N] float32 | None): detection confidence sqrt(class probability * centerness).
        labels (ndarray[N] int64 | None): detection class ids.
        class_names (list[str] | None): the class name of each detection.
        semantic (ndarray[H, W] | None): semantic class ids (uint8; int32 for more than 256 classes).
        semantic_names (list[str] | None): the name of every semantic class id.
        depth (ndarray[H, W] float32 | None): depth in metres.
        timings: milliseconds spent per image in ``pre`` (decode, resize, copy), ``forward`` (network) and
            ``post`` (post-processing, mapping back, copy to numpy); for a batch, the batch's time divided by
            its size.
        meta: where the image came from (``path``, ``frame`` index, ...), as given by the source.

    A task that did not run leaves its fields ``None``.
    """

    height: int
    width: int
    boxes: np.ndarray | None = None
    scores: np.ndarray | None = None
    labels: np.ndarray | None = None
    class_names: list[str] | None = None
    semantic: np.ndarray | None = None
    semantic_names: list[str] | None = None
    depth: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def tasks(self) -> list[str]:
        """The tasks this prediction holds."""
        present = {"detection": self.boxes, "segmentation": self.semantic, "depth": self.depth}
        return [task for task, value in present.items() if value is not None]

    def detections_coco(self, category_offset: int = 0) -> list[dict[str, Any]]:
        """Detections in COCO result style: ``bbox`` [x, y, width, height], ``category_id``, ``category_name``,
        ``score`` (``category_id`` = label + ``category_offset``)."""
        if self.boxes is None:
            return []
        xywh = self.boxes.astype(np.float64)
        xywh[:, 2:] -= xywh[:, :2]
        return [{"bbox": [round(float(v), 2) for v in box], "category_id": int(label) + category_offset,
                 "category_name": name, "score": round(float(score), 5)}
                for box, label, name, score in zip(xywh, self.labels, self.class_names, self.scores)]

    def to_record(self) -> dict[str, Any]:
        """One JSON-serialisable line of ``predictions.jsonl`` (see docs/inference.md for the schema)."""
        record: dict[str, Any] = {k: v for k, v in self.meta.items() if isinstance(v, (str, int, float, type(None)))}
        record.update({"height": self.height, "width": self.width, "tasks": self.tasks})
        if self.boxes is not None:
            record["detections"] = self.detections_coco()
        if self.semantic is not None:
            counts = np.bincount(self.semantic.ravel(), minlength=len(self.semantic_names or ()))
            names = self.semantic_names or []
            record["semantic_classes"] = [
                {"id": i, "name": names[i] if i < len(names) else f"class_{i}",
                 "fraction": round(float(c) / self.semantic.size, 5)} for i, c in enumerate(counts) if c]
        if self.depth is not None:
            record["depth_range_m"] = [round(float(self.depth.min()), 3), round(float(self.depth.max()), 3)]
        record["timings_ms"] = {k: round(float(v), 3) for k, v in self.timings.items()}
        return record
