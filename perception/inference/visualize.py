"""Pictures of predictions: one panel per task, each drawn by its task type, laid out side by side, stacked or
tiled (the visualiser itself is :mod:`perception.ops.draw`; this module applies it to a :class:`Prediction`).

Every function takes and returns ndarray[H, W, 3] uint8 **RGB** (convert with ``cv2.cvtColor(.., RGB2BGR)``
before ``cv2.imwrite`` / ``cv2.VideoWriter``). tools/infer.py, the demo and the trainer's TensorBoard overlays
draw with the same functions, so the same prediction gives the same picture everywhere: Cityscapes colours for
classes named like Cityscapes labels (a fixed generic palette otherwise), turbo depth colours (near = red,
far = blue) with a scale bar in metres.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from perception.inference.prediction import Prediction, default_tasks
# The primitives and the layout, importable from here as they always were.
from perception.ops.draw import LAYOUTS, caption_panel, class_palette, colorize_depth, compose, depth_range, \
    draw_detections, generic_color, named_color, overlay_segmentation, render_overlay, render_results  # noqa: F401


def render_prediction(image: np.ndarray, pred: Prediction, layout: str = "side",
                      tasks: Mapping[str, Any] | None = None, options: Mapping[str, Mapping[str, Any]] | None = None,
                      captions: bool | None = None, **common: Any) -> np.ndarray:
    """The picture ``tools/infer.py`` writes: one panel per task of ``pred``, in its order.

    Args:
        image (ndarray[H, W, 3]): the input image, uint8 RGB, at the prediction's size.
        pred: its prediction.
        layout: ``side``, ``stack`` or ``tile``.
        tasks: task name -> :class:`perception.tasks.Task` (default: each of ``pred.types`` with its default
            settings; a picture reads only the result).
        options: task name -> options of that task's ``draw`` (e.g. ``{"semantic": {"palette": ...}}``).
        captions: write each task's name in its panel (default: when two tasks share a type).
        common: options for every task's ``draw``, e.g. ``value_range=(near, far)`` metres fixes the depth
            colours; a type ignores those it does not know.

    Returns:
        ndarray uint8 RGB (see :func:`perception.ops.draw.render_results`; ``tile`` with three tasks puts the
        input image in the first of the 2 x 2 tiles).
    """
    if image.shape[:2] != (pred.height, pred.width):
        raise ValueError(f"image: got {image.shape[1]}x{image.shape[0]}, expected the prediction's size "
                         f"{pred.width}x{pred.height}")
    tasks = {**default_tasks(pred.types), **(tasks or {})}
    return render_results(image, pred.results, tasks, layout, options, captions, **common)
