"""The loop behind ``tools/infer.py``: a source through a predictor into pictures, a video, raw maps and JSON lines.

Written under ``out_dir``:

- ``predictions.jsonl``: one line per image or frame (:meth:`Prediction.to_record`; schema in docs/inference.md);
- ``vis/<name>.jpg`` per image, or ``<video name>_pred.mp4`` for a video or camera (same frame rate as the
  source, ``mp4v``), each frame the composed picture, one panel per task (``visualize.render_prediction``);
- with ``raw``: ``raw/<task>/<name>.png`` per task whose type gives a lossless map (``Task.raw_image``: class
  ids as 8-bit PNG, or 16-bit above 256 classes; depth as 16-bit millimetres, clipped at 65.535 m);
- ``summary.json``: counts, skipped files with their reasons, mean timings.

Frames are streamed: nothing is kept once written, so memory stays flat on a long video. Ctrl-C stops the run
cleanly: the video writer is closed (the partial video plays) and the summary says the run was interrupted.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from perception.inference.prediction import Prediction
from perception.inference.predictor import Predictor
from perception.inference.sources import Frame, ImageSource, VideoSource
from perception.inference.visualize import render_prediction


@dataclass
class RunSummary:
    """What a run did."""

    processed: int = 0
    skipped: list[str] = field(default_factory=list)
    interrupted: bool = False
    video: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"processed": self.processed, "skipped": len(self.skipped), "skipped_files": self.skipped,
                "interrupted": self.interrupted, "video": self.video, "mean_timings_ms": self.timings_ms}


def _write_png(path: Path, array: np.ndarray) -> None:
    ok, data = cv2.imencode(".png", array)
    if not ok:
        raise OSError(f"could not encode {path}")
    data.tofile(str(path))


def save_raw(pred: Prediction, raw_dir: Path, name: str, tasks: Mapping[str, Any]) -> None:
    """``raw/<task>/<name>.png`` for every task of ``pred`` whose type gives a raw map (``Task.raw_image``)."""
    for task_name, result in pred.results.items():
        array = tasks[task_name].raw_image(result)
        if array is not None:
            folder = raw_dir / task_name
            folder.mkdir(parents=True, exist_ok=True)
            _write_png(folder / f"{name}.png", array)


def _unique_name(stem: str, used: set[str]) -> str:
    name, k = stem, 1
    while name in used:
        name, k = f"{stem}_{k}", k + 1
    used.add(name)
    return name


def run_inference(predictor: Predictor, source: ImageSource | VideoSource, out_dir: str | os.PathLike,
                  layout: str = "side", raw: bool = False, batch_size: int = 1, visualize: bool = True,
                  value_range: tuple[float, float] | None = None, progress: bool = True,
                  max_frames: int | None = None,
                  draw_options: Mapping[str, Mapping[str, Any]] | None = None) -> RunSummary:
    """Run ``predictor`` over ``source`` and write the outputs (see the module docstring).

    Args:
        predictor: the network.
        source: from :func:`perception.inference.sources.open_source`.
        out_dir: the output folder (created).
        layout: ``side``, ``stack`` or ``tile`` panels.
        raw: also write each task's raw map as PNG (``Task.raw_image``).
        batch_size: frames per network call.
        visualize: write pictures / the annotated video.
        value_range: fixed (near, far) of the colour maps of value maps (depth in metres); default per image,
            and for a video fixed by its first frame (``Task.draw_options``) so that a colour means the same
            value throughout.
        progress: show a progress bar with frames/s.
        max_frames: stop after this many frames (cameras run until Ctrl-C otherwise).
        draw_options: task name -> options of its ``draw`` (e.g. a palette).
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    raw_dir, vis_dir = out_dir / "raw", out_dir / "vis"
    if raw:
        raw_dir.mkdir(exist_ok=True)
    is_video = source.kind in ("video", "camera")
    if visualize and not is_video:
        vis_dir.mkdir(exist_ok=True)
    summary = RunSummary()
    tasks = predictor.tasks
    common = {} if value_range is None else {"value_range": tuple(value_range)}
    options: dict[str, dict[str, Any]] | None = None  # per task; a video fixes them at its first frame
    writer: cv2.VideoWriter | None = None
    used: set[str] = set()
    pending: dict[int, np.ndarray] = {}  # frame images waiting for their prediction (at most one batch)
    totals: dict[str, float] = {}

    def frames() -> Iterator[Frame]:
        for i, frame in enumerate(source):
            if max_frames is not None and i >= max_frames:
                return
            frame.meta["index"] = i
            pending[i] = frame.image
            yield frame

    total = len(source) if isinstance(source, ImageSource) else getattr(source, "num_frames", None)
    if max_frames is not None and total is not None:
        total = min(total, max_frames)
    bar = tqdm(total=total, unit="frame", disable=not progress, dynamic_ncols=True)
    jsonl = open(out_dir / "predictions.jsonl", "w", encoding="utf-8")
    try:
        for pred in predictor.stream(frames(), batch_size=batch_size):
            index = pred.meta.pop("index")
            image = pending.pop(index)
            if is_video:
                name = f"frame_{index:06d}"
            else:
                name = _unique_name(Path(pred.meta["path"]).stem, used)
            jsonl.write(json.dumps(pred.to_record(tasks)) + "\n")
            if raw:
                save_raw(pred, raw_dir, name, tasks)
            if visualize:
                if options is None:
                    options = {n: {**(tasks[n].draw_options(r) if is_video and not common else {}),
                                   **(draw_options or {}).get(n, {})} for n, r in pred.results.items()}
                picture = cv2.cvtColor(render_prediction(image, pred, layout, tasks, options, **common),
                                       cv2.COLOR_RGB2BGR)
                if is_video:
                    if writer is None:
                        summary.video = str(out_dir / f"{_video_stem(source)}_pred.mp4")
                        writer = cv2.VideoWriter(summary.video, cv2.VideoWriter_fourcc(*"mp4v"), source.fps,
                                                 (picture.shape[1], picture.shape[0]))
                        if not writer.isOpened():
                            raise OSError(f"could not open the video writer for {summary.video}")
                    writer.write(picture)
                else:
                    ok, data = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, 92])
                    if ok:
                        data.tofile(str(vis_dir / f"{name}.jpg"))
            for key, value in pred.timings.items():
                totals[key] = totals.get(key, 0.0) + value
            summary.processed += 1
            bar.update(1)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        bar.close()
        jsonl.close()
        if writer is not None:
            writer.release()  # writes the container's index: the (partial) video plays
        source.close()
    summary.skipped = list(source.skipped)
    summary.timings_ms = {k: round(v / max(summary.processed, 1), 3) for k, v in totals.items()}
    (out_dir / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    return summary


def _video_stem(source: VideoSource) -> str:
    if source.kind == "camera":
        return source.description.replace(" ", "")
    return Path(source.description).stem
