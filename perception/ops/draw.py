"""The toolkit's one visualiser: class colours, boxes with captions, a class-map overlay, a depth colour map with
a scale bar in metres, captions, and the layout of one panel per task (side by side, stacked, tiled).

The task types draw their panels with these primitives (``Task.draw``) and :func:`render_results` lays them out;
tools/infer.py (:func:`perception.inference.visualize.render_prediction`), the demo and the trainer's TensorBoard
overlays (:func:`render_overlay`) all go through it, so the same prediction gives the same picture everywhere.
It lives in ``ops`` because the task types draw with it and may import only ``ops`` and ``utils``.

Every function takes and returns ndarray[H, W, 3] uint8 **RGB** (convert with ``cv2.cvtColor(.., RGB2BGR)``
before ``cv2.imwrite`` / ``cv2.VideoWriter``).

Colours: a class whose name is a Cityscapes label (``road``, ``car``, ...) gets its colour from
cityscapesscripts' label table, so Cityscapes predictions look like the benchmark's pictures; other classes get a
fixed, well-spread generic palette.
"""
from __future__ import annotations

import colorsys
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import cv2
import numpy as np
from torch import Tensor

LAYOUTS = ("side", "stack", "tile")


def generic_color(index: int) -> tuple[int, int, int]:
    """A fixed RGB colour for class ``index``: golden-ratio hue steps, alternating brightness."""
    hue = (index * 0.618033988749895) % 1.0
    value = 0.95 if index % 2 == 0 else 0.7
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, value)
    return int(r * 255), int(g * 255), int(b * 255)


def class_palette(names: Sequence[str], num_classes: int | None = None) -> np.ndarray:
    """RGB colours of classes: Cityscapes' colour for Cityscapes names, the generic palette otherwise.

    Args:
        names: class names in id order (may be shorter than ``num_classes``).
        num_classes: number of colours (default ``len(names)``).

    Returns:
        ndarray[K, 3] uint8.
    """
    count = max(len(names), num_classes or 0, 1)
    return _palette(tuple(names), count).copy()


@lru_cache(maxsize=64)
def _palette(names: tuple[str, ...], count: int) -> np.ndarray:
    # Cached: a video asks for the same names every frame.
    from cityscapesscripts.helpers.labels import name2label

    colors = np.zeros((count, 3), np.uint8)
    for i in range(count):
        label = name2label.get(names[i]) if i < len(names) else None
        colors[i] = label.color if label is not None else generic_color(i)
    return colors


def named_color(name: str, index: int) -> tuple[int, int, int]:
    """The Cityscapes colour of class ``name`` when it is a Cityscapes label, else the generic colour of ``index``."""
    from cityscapesscripts.helpers.labels import name2label

    label = name2label.get(name)
    return tuple(label.color) if label is not None else generic_color(index)


def draw_detections(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray,
                    class_names: Sequence[str], palette: np.ndarray | None = None, thickness: int = 2
                    ) -> np.ndarray:
    """Boxes with ``name score`` captions drawn on a copy of ``image``.

    Args:
        image (ndarray[H, W, 3]): uint8 RGB.
        boxes (ndarray[N, 4]): x0, y0, x1, y1 in image pixels.
        labels (ndarray[N]), scores (ndarray[N]): class ids and confidences.
        class_names: the name of each detection (length N).
        palette (ndarray[K, 3]): colour per class id (default: the Cityscapes colour of the name, or the
            generic colour of the id).
    """
    out = np.ascontiguousarray(image).copy()
    scale = max(0.35, min(out.shape[:2]) / 900)
    for box, label, score, name in zip(boxes, labels, scores, class_names):
        if palette is not None and 0 <= label < len(palette):
            color = tuple(int(c) for c in palette[label])
        else:
            color = named_color(name, int(label))
        x0, y0, x1, y1 = (int(round(float(v))) for v in box)
        cv2.rectangle(out, (x0, y0), (x1, y1), color, thickness)
        caption = f"{name} {float(score):.2f}"
        (tw, th), base = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        ty = max(y0, th + base)
        cv2.rectangle(out, (x0, ty - th - base), (x0 + tw, ty), color, -1)
        text_color = (0, 0, 0) if sum(color) > 380 else (255, 255, 255)
        cv2.putText(out, caption, (x0, ty - base), cv2.FONT_HERSHEY_SIMPLEX, scale, text_color, 1, cv2.LINE_AA)
    return out


def overlay_segmentation(image: np.ndarray, semantic: np.ndarray, palette: np.ndarray, alpha: float = 0.55
                         ) -> np.ndarray:
    """The class colours blended over the image (``alpha`` of colour)."""
    colors = palette[np.minimum(semantic, len(palette) - 1)]
    return cv2.addWeighted(colors, alpha, image, 1.0 - alpha, 0.0)


def depth_range(depth: np.ndarray) -> tuple[float, float]:
    """A robust display range in metres: the 2nd and 98th percentiles."""
    low, high = np.percentile(depth, (2, 98))
    return float(low), float(max(high, low + 1e-3))


def colorize_depth(depth: np.ndarray, value_range: tuple[float, float] | None = None, bar: bool = True
                   ) -> np.ndarray:
    """Depth as OpenCV's turbo colour map (near = red, far = blue), with a scale bar in metres on the right.

    Args:
        depth (ndarray[H, W]): metres.
        value_range: (near, far) metres mapped to the ends of the colour map (default :func:`depth_range`);
            fix it for a video so that colours mean the same distance in every frame.
        bar: draw the scale bar.

    Returns:
        ndarray[H, W, 3] uint8 RGB (the bar is drawn inside the picture, so the size is unchanged).
    """
    near, far = value_range or depth_range(depth)
    normalized = np.clip((far - depth) / max(far - near, 1e-6), 0.0, 1.0)  # near -> 1 -> the warm end
    colored = cv2.applyColorMap((normalized * 255).astype(np.uint8), cv2.COLORMAP_TURBO)
    colored = cv2.cvtColor(colored, cv2.COLOR_BGR2RGB)
    if bar:
        _draw_scale_bar(colored, near, far)
    return colored


def _draw_scale_bar(canvas: np.ndarray, near: float, far: float, ticks: int = 5) -> None:
    height, width = canvas.shape[:2]
    bar_w = max(6, width // 40)
    top, bottom = max(4, height // 12), height - max(4, height // 12)
    if bottom - top < 10:
        return
    scale = max(0.3, height / 1100)
    step = (far - near) / (ticks - 1)
    decimals = 0 if step >= 2 else 1 if step >= 0.2 else 2  # enough digits that the ticks differ
    (label_w, label_h), _ = cv2.getTextSize(f"{far:.{decimals}f} m", cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x1 = width - 4 - label_w - 4
    x0 = x1 - bar_w
    # Top of the bar = far (blue end), bottom = near (warm end), as in the picture's colours.
    ramp = np.linspace(0, 255, bottom - top).astype(np.uint8)[:, None]
    strip = cv2.applyColorMap(np.repeat(ramp, bar_w, axis=1), cv2.COLORMAP_TURBO)
    canvas[top:bottom, x0:x1] = cv2.cvtColor(strip, cv2.COLOR_BGR2RGB)
    cv2.rectangle(canvas, (x0 - 1, top - 1), (x1, bottom), (255, 255, 255), 1)
    for k in range(ticks):
        frac = k / (ticks - 1)
        y = int(round(top + frac * (bottom - top - 1)))
        value = far - frac * (far - near)
        text = f"{value:.{decimals}f} m"
        cv2.line(canvas, (x1, y), (x1 + 3, y), (255, 255, 255), 1)
        cv2.putText(canvas, text, (x1 + 4, min(height - 2, y + label_h // 2)), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (255, 255, 255), 1, cv2.LINE_AA)


def caption_panel(panel: np.ndarray, text: str) -> np.ndarray:
    """``text`` in white on a dark box in the panel's bottom-left corner (drawn on a copy)."""
    out = np.ascontiguousarray(panel).copy()
    height = out.shape[0]
    scale = max(0.35, min(out.shape[:2]) / 900)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    if th + base + 4 > height or tw + 4 > out.shape[1]:
        return out  # too small a panel for a readable caption
    y1 = height - 1
    cv2.rectangle(out, (0, y1 - th - base - 3), (tw + 4, y1), (0, 0, 0), -1)
    cv2.putText(out, text, (2, y1 - base - 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out


# ------------------------------------------------------------------------------------------------------ layout
def compose(panels: Sequence[np.ndarray], layout: str = "side") -> np.ndarray:
    """Same-sized panels side by side (``side``), one under another (``stack``) or two per row (``tile``; an odd
    last row is filled with black)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout: got {layout!r}, expected one of {', '.join(LAYOUTS)}")
    if layout == "stack":
        return np.concatenate(panels, axis=0)
    if layout == "side" or len(panels) == 1:
        return np.concatenate(panels, axis=1)
    panels = list(panels) + [np.zeros_like(panels[0])] * (len(panels) % 2)
    rows = [np.concatenate(panels[i:i + 2], axis=1) for i in range(0, len(panels), 2)]
    return np.concatenate(rows, axis=0)


def render_results(image: np.ndarray, results: Mapping[str, Mapping[str, Any]], tasks: Mapping[str, Any],
                   layout: str = "side", options: Mapping[str, Mapping[str, Any]] | None = None,
                   captions: bool | None = None, **common: Any) -> np.ndarray:
    """One panel per task, drawn by the task's own ``draw``, laid out.

    Args:
        image (ndarray[H, W, 3]): uint8 RGB, at the results' size.
        results: task name -> that task's numpy result (``Task.to_numpy`` / ``Task.predict``), in panel order.
        tasks: task name -> :class:`perception.tasks.Task` (anything with ``draw`` and ``TYPE``).
        layout: ``side``, ``stack`` or ``tile``.
        options: task name -> options of that task's ``draw`` (e.g. ``{"semantic": {"palette": ...}}``).
        captions: write each task's name in its panel's corner (default: when two tasks share a type, so that
            their panels can be told apart).
        common: options given to every task's ``draw`` (e.g. ``value_range=(1, 80)`` fixes the depth colours);
            a type ignores those it does not know.

    Returns:
        ndarray uint8 RGB: the panels (the plain image when there is none); with an odd number of panels (more
        than one) the ``tile`` layout puts the input image first, so that three tasks fill 2 x 2.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout: got {layout!r}, expected one of {', '.join(LAYOUTS)}")
    image = np.ascontiguousarray(image)
    if captions is None:
        captions = len({tasks[name].TYPE for name in results}) < len(results)
    panels = []
    for name, result in results.items():
        panel = tasks[name].draw(image, result, **{**common, **(options or {}).get(name, {})})
        if panel.shape != image.shape:
            raise ValueError(f"task {name!r}: its picture is {panel.shape}, expected the image's {image.shape}")
        panels.append(caption_panel(panel, name) if captions else panel)
    if layout == "tile" and len(panels) > 1 and len(panels) % 2:
        panels.insert(0, image)
    return compose(panels or [image], layout)


def render_overlay(image: Tensor, predictions: Mapping[str, Any], tasks: Mapping[str, Any],
                   layout: str = "side") -> np.ndarray:
    """The TensorBoard picture of one evaluation image: :func:`render_results` at the network input size.

    Args:
        image (Tensor[3, H, W]): uint8 RGB (the padded network input).
        predictions: task name -> that task's prediction for this image at the network input size (the form of
            ``Task.postprocess`` + ``Task.select``).
        tasks: task name -> :class:`perception.tasks.Task`.

    Returns:
        ndarray[H, k * W, 3] uint8 RGB.
    """
    array = np.ascontiguousarray(image.detach().cpu().permute(1, 2, 0).numpy()).astype(np.uint8, copy=False)
    results = {name: tasks[name].to_numpy(prediction) for name, prediction in predictions.items()}
    return render_results(array, results, tasks, layout)
