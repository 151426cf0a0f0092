"""The Python API: a trained network as a callable that takes images and returns plain numpy predictions.

    predictor = Predictor.from_checkpoint("runs/demo/best.pt")            # device="auto", all tasks
    pred = predictor("street.jpg")                                       # a path, or an RGB array
    pred.tasks, pred["objects"]["boxes"]                                 # per task, at the image's own size
    pred.boxes, pred.class_names, pred.semantic, pred.depth             # a field of the one task that has it
    for pred in predictor.stream(frames, batch_size=4, bgr=True):        # e.g. OpenCV video frames
        ...
    predictor = Predictor.from_onnx("model.onnx")                       # the same API on onnxruntime (CPU)

Post-processing is each task's own (``Task.predict``: e.g. boxes found at the network input and scaled back,
dense maps resized from the stride-4 grid to the original pixels and decoded there); thresholds such as
``score_thresh`` are arguments of that call, never attributes set on the network.

Each image is resized to fit the network size (aspect ratio kept) and padded to a multiple of 32; predictions
are mapped back to the image's own pixels (see :mod:`perception.ops.geometry`). Images go through the
network in batches of consecutive images of the same padded size (so a batch never changes a result: the heads'
GroupNorm sees the same padding as a single image would). The uint8 input batch is written into a reused
(pinned, on CUDA) buffer, so a stream of same-sized frames allocates no new input memory per frame.

One predictor serves one thread at a time (calls from several threads are serialised by a lock); for parallel
inference make one predictor per thread or process.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import cv2
import numpy as np
import torch
from torch import Tensor, nn

from perception.inference.export import onnx_session, read_metadata, tasks_from_metadata
from perception.inference.images import as_hwc3, read_image
from perception.inference.loading import load_model, select_tasks
from perception.inference.postprocess_numpy import postprocess_numpy
from perception.inference.prediction import Prediction
from perception.ops.geometry import Letterbox, fit_letterbox, resize_image
from perception.tasks import Task, replace_settings
from perception.utils.device import resolve_device


@dataclass
class _Item:
    """One image waiting for the network: the array, how it fits, where it came from."""

    image: np.ndarray   # [h, w, 3] uint8
    bgr: bool
    letterbox: Letterbox
    meta: dict[str, Any] = field(default_factory=dict)
    load_ms: float = 0.0


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Predictor:
    """Runs a multi-task network on images and returns a :class:`Prediction` per image.

    Args:
        model: a :class:`~perception.models.MultiTaskModel` (anything with its ``forward(images, tasks)``,
            ``heads`` and ``task_specs``: task name -> :class:`perception.tasks.Task`).
        image_size: (H, W) the images are fitted into (aspect ratio kept; padded to a multiple of 32).
        tasks: the names of the tasks to run (default: all of the model's). Only their heads and their
            post-processing run.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        half: run the network under autocast: float16 on CUDA, bfloat16 on the CPU. Post-processing stays
            float32.
        score_thresh: the score threshold of every task that has one (``score_thresh`` in its ``OPTIONS``, e.g.
            detection; None: the trained model's). Shorthand for ``options``.
        options: task name -> post-processing options of that task for every call (its ``OPTIONS``), e.g.
            ``{"objects": {"score_thresh": 0.3}}``.
        class_names: task name -> class names replacing the model's (e.g. a checkpoint trained without names,
            whose classes are called ``class_<i>``).
    """

    def __init__(self, model: nn.Module, image_size: Sequence[int], tasks: Sequence[str] | None = None,
                 device: str | torch.device = "auto", half: bool = False, score_thresh: float | None = None,
                 options: Mapping[str, Mapping[str, Any]] | None = None,
                 class_names: Mapping[str, Sequence[str]] | None = None) -> None:
        if len(image_size) != 2 or any(int(s) <= 0 for s in image_size):
            raise ValueError(f"image_size: got {tuple(image_size)}, expected (H, W) with positive ints")
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        specs: dict[str, Task] = dict(model.task_specs)
        names = list(specs) if tasks is None else select_tasks(tasks, list(specs), "this model")
        self.tasks: dict[str, Task] = {name: specs[name] for name in names}
        for name, names_of in (class_names or {}).items():
            if name not in self.tasks:
                raise ValueError(f"class_names: task {name!r} does not run; running: {', '.join(self.tasks)}")
            if names_of:  # an empty list (a config without names) keeps the model's, like None
                task = replace_settings(self.tasks[name], class_names=list(names_of))
                task.cfg.validate()
                self.tasks[name] = task
        self.options = self._options(score_thresh, options)
        self.amp_dtype = (torch.float16 if self.device.type == "cuda" else torch.bfloat16) if half else None
        self._buffers: dict[tuple[int, ...], tuple[Tensor, Tensor]] = {}
        self._lock = threading.Lock()

    def _options(self, score_thresh: float | None, options: Mapping[str, Mapping[str, Any]] | None
                 ) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {name: {} for name in self.tasks}
        if score_thresh is not None:
            for name, task in self.tasks.items():
                if "score_thresh" in task.OPTIONS:
                    out[name]["score_thresh"] = float(score_thresh)
        for name, values in (options or {}).items():
            if name not in self.tasks:
                raise ValueError(f"options: task {name!r} does not run; running: {', '.join(self.tasks)}")
            unknown = sorted(set(values) - set(self.tasks[name].OPTIONS))
            if unknown:
                raise ValueError(f"options.{name}: {unknown} are not options of a {self.tasks[name].TYPE} task; "
                                 f"it takes {', '.join(self.tasks[name].OPTIONS) or 'none'}")
            out[name].update(values)
        return out

    def set_option(self, key: str, value: Any) -> list[str]:
        """Set one post-processing option on every running task that takes it (``key`` in its ``OPTIONS``), e.g.
        ``set_option("upsample", "bilinear")``; returns the names of those tasks (none is an error)."""
        names = [name for name, task in self.tasks.items() if key in task.OPTIONS]
        if not names:
            takes = sorted({o for task in self.tasks.values() for o in task.OPTIONS})
            raise ValueError(f"option {key!r}: no running task takes it; they take {', '.join(takes) or 'none'}")
        for name in names:
            self.options[name][key] = value
        return names

    @property
    def task_names(self) -> list[str]:
        """The names of the tasks that run, in the network's order."""
        return list(self.tasks)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device = "auto",
                        tasks: Sequence[str] | None = None, half: bool = False,
                        image_size: Sequence[int] | None = None, prefer_ema: bool = True,
                        score_thresh: float | None = None, options: Mapping[str, Mapping[str, Any]] | None = None
                        ) -> "Predictor":
        """Load a checkpoint written by the trainer (or ``save_checkpoint``) and rebuild its network.

        Args:
            path: the checkpoint; read with ``torch.load(..., weights_only=True)``, so no pickled code runs.
            device, half, score_thresh, options: as in the constructor.
            tasks: the names of the tasks to build and run (default: all the checkpoint has).
            image_size: (H, W) network size; default the run's ``data.image_size``.
            prefer_ema: load the checkpoint's ``ema`` weights when it has them.
        """
        loaded = load_model(path, tasks, prefer_ema)
        return cls(loaded.model, image_size or loaded.image_size, loaded.tasks, device, half, score_thresh, options)

    @classmethod
    def from_onnx(cls, path: str | os.PathLike, image_size: Sequence[int] | None = None,
                  tasks: Sequence[str] | None = None, score_thresh: float | None = None,
                  options: Mapping[str, Mapping[str, Any]] | None = None, threads: int | None = None
                  ) -> "Predictor":
        """The same predictor on onnxruntime (CPU), from an ``.onnx`` file written by ``tools/export.py``.

        The tasks, class names and settings come from the file's metadata; inputs, outputs and
        :class:`Prediction` are those of :meth:`from_checkpoint`.

        Args:
            path: the exported file.
            image_size: (H, W) network size; default the size stored in the file at export.
            tasks, score_thresh, options: as in the constructor.
            threads: onnxruntime intra-op threads (None: onnxruntime's default).
        """
        return OnnxPredictor(path, image_size, tasks, score_thresh, options, threads)

    # ----------------------------------------------------------------------------------------------- public API
    def __call__(self, image: np.ndarray | str | os.PathLike, bgr: bool = False) -> Prediction:
        """Predict one image.

        Args:
            image: a path, or ndarray[H, W, 3] uint8 RGB (BGR with ``bgr=True``); grayscale and 4-channel
                arrays are converted.
            bgr: the array's channels are B, G, R (OpenCV). Files are always read correctly.
        """
        return self.predict_batch([image], bgr=bgr)[0]

    def predict_batch(self, images: Sequence, bgr: bool = False) -> list[Prediction]:
        """Predict a list of images (paths or arrays), batched by padded size; one :class:`Prediction` each."""
        return list(self.stream(images, batch_size=max(1, len(images)), bgr=bgr))

    def stream(self, frames: Iterable, batch_size: int = 1, bgr: bool = False) -> Iterator[Prediction]:
        """Predict an iterable of images lazily, ``batch_size`` at a time; yields one :class:`Prediction` each.

        Memory stays flat over a long stream: nothing is kept once yielded.

        Args:
            frames: paths, arrays (as in ``__call__``), or :class:`~perception.inference.sources.Frame` objects
                (RGB, with their ``meta`` copied into the prediction).
            batch_size: images per network call (a batch is cut early where the padded size changes).
            bgr: arrays are B, G, R (does not apply to paths and frames, which are RGB).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size: got {batch_size}, expected >= 1")
        pending: list[_Item] = []
        for index, frame in enumerate(frames):
            item = self._load(frame, index, bgr)
            if pending and pending[0].letterbox.padded_size != item.letterbox.padded_size:
                yield from self._run(pending)
                pending = []
            pending.append(item)
            if len(pending) == batch_size:
                yield from self._run(pending)
                pending = []
        if pending:
            yield from self._run(pending)

    # ------------------------------------------------------------------------------------------------ pipeline
    def _load(self, frame, index: int, bgr: bool) -> _Item:
        start = time.perf_counter()
        if isinstance(frame, (str, os.PathLike)):
            image, frame_bgr, meta = read_image(frame), False, {"path": str(frame)}
        elif hasattr(frame, "image") and hasattr(frame, "meta"):  # a source Frame (RGB)
            image, frame_bgr, meta = as_hwc3(frame.image, f"frame {index}"), False, dict(frame.meta)
        else:
            image, frame_bgr, meta = as_hwc3(frame, f"image {index}"), bgr, {}
        letterbox = fit_letterbox(image.shape[0], image.shape[1], self.image_size)
        return _Item(image, frame_bgr, letterbox, meta, (time.perf_counter() - start) * 1000.0)

    def _input_buffers(self, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
        """The reused host (pinned on CUDA) and device uint8 buffers of ``shape`` = (B, Hp, Wp, 3)."""
        if shape not in self._buffers:
            if len(self._buffers) >= 4:  # keep a few shapes (e.g. a last, smaller batch); drop the oldest
                self._buffers.pop(next(iter(self._buffers)))
            cuda = self.device.type == "cuda"
            host = torch.empty(shape, dtype=torch.uint8, pin_memory=cuda)
            self._buffers[shape] = (host, torch.empty(shape, dtype=torch.uint8, device=self.device) if cuda else host)
        return self._buffers[shape]

    def _preprocess(self, items: Sequence[_Item]) -> Tensor:
        """Resize each image into the reused host buffer, zero the padding, send it to the device.

        Returns:
            Tensor[B, 3, Hp, Wp] uint8 RGB (a channels-last view of the buffer).
        """
        height, width = items[0].letterbox.padded_size
        host, device_buffer = self._input_buffers((len(items), height, width, 3))
        host_np = host.numpy()
        for i, item in enumerate(items):
            rh, rw = item.letterbox.resized_size
            resized = resize_image(item.image, item.letterbox)
            if item.bgr:  # after resizing: fewer pixels to convert
                resized = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)
            host_np[i, :rh, :rw] = resized
            host_np[i, rh:] = 0
            host_np[i, :rh, rw:] = 0
        if device_buffer is not host:
            device_buffer.copy_(host, non_blocking=True)
        return device_buffer.permute(0, 3, 1, 2)

    def _forward(self, images: Tensor) -> dict:
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.amp_dtype,
                                                    enabled=self.amp_dtype is not None):
            return self.model(images, tasks=list(self.tasks))

    @torch.inference_mode()
    def _postprocess(self, outputs: dict, items: Sequence[_Item]) -> list[Prediction]:
        letterboxes = [item.letterbox for item in items]
        per_task = {name: task.predict(self.model.heads[name], outputs[name], letterboxes, **self.options[name])
                    for name, task in self.tasks.items()}
        types = {name: task.TYPE for name, task in self.tasks.items()}
        return [Prediction(item.letterbox.height, item.letterbox.width,
                           {name: results[i] for name, results in per_task.items()}, dict(types), meta=item.meta)
                for i, item in enumerate(items)]

    def _run(self, items: Sequence[_Item]) -> list[Prediction]:
        with self._lock:
            start = time.perf_counter()
            images = self._preprocess(items)
            t_pre = time.perf_counter()
            outputs = self._forward(images)
            _synchronize(self.device)  # so that forward and post are timed apart
            t_forward = time.perf_counter()
            predictions = self._postprocess(outputs, items)
            t_post = time.perf_counter()
        n = len(items)
        shared = {"pre": (t_pre - start) * 1000.0 / n, "forward": (t_forward - t_pre) * 1000.0 / n,
                  "post": (t_post - t_forward) * 1000.0 / n}
        for pred, item in zip(predictions, items):
            pred.timings = {"pre": shared["pre"] + item.load_ms, "forward": shared["forward"], "post": shared["post"]}
            pred.timings["total"] = sum(pred.timings.values())
        return predictions


class OnnxPredictor(Predictor):
    """A :class:`Predictor` whose network is an exported ONNX file run by onnxruntime (CPU): the same calls and
    the same :class:`Prediction`, from nothing but the ``.onnx`` file written by ``tools/export.py``.

    The file's metadata (:func:`perception.inference.export.read_metadata`) rebuilds the tasks (names, types,
    class names, settings); images are letterboxed and batched exactly as in the PyTorch backend (the same reused
    input buffer), the graph runs under onnxruntime, and each task's ``decode_numpy`` maps its outputs back to
    the image's own pixels (:func:`perception.inference.postprocess_numpy.postprocess_numpy`). Made by
    :meth:`Predictor.from_onnx`.

    Args:
        path: the ``.onnx`` file (exported by this toolkit: it carries the ``perception`` metadata).
        image_size: (H, W) the images are fitted into; default the size stored in the file at export. The graph's
            height and width are dynamic when it was exported with dynamic axes (the default).
        tasks: the names of the tasks to run (default all the file has); only their outputs are fetched.
        score_thresh, options: post-processing options, as in :class:`Predictor`.
        threads: onnxruntime intra-op threads (None: onnxruntime's default).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not an ONNX graph onnxruntime loads, or was not exported by this toolkit (both
            name the file).
    """

    def __init__(self, path: str | os.PathLike, image_size: Sequence[int] | None = None,
                 tasks: Sequence[str] | None = None, score_thresh: float | None = None,
                 options: Mapping[str, Mapping[str, Any]] | None = None, threads: int | None = None) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(2, "no such ONNX file", str(path))
        try:
            self.session = onnx_session(path, threads)
        except Exception as err:  # onnxruntime raises its own exception types for unreadable graphs
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ValueError(f"{path}: not an ONNX graph onnxruntime can load ({first})") from None
        try:
            self.metadata = read_metadata(self.session)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        self.path = path
        size = image_size if image_size is not None else self.metadata.get("image_size")
        if size is None or len(size) != 2 or any(int(s) <= 0 for s in size):
            raise ValueError(f"image_size: got {None if size is None else tuple(size)}, expected (H, W) with "
                             "positive ints")
        self.image_size = (int(size[0]), int(size[1]))
        specs = tasks_from_metadata(self.metadata)
        names = list(specs) if tasks is None else select_tasks(tasks, list(specs), str(path))
        self.tasks = {name: specs[name] for name in names}
        self.output_names = [out for name in names for out in self.metadata["outputs"][name]]
        self.input_name = self.metadata.get("input", "images")
        self.model = None
        self.device = torch.device("cpu")
        self.amp_dtype = None
        self.options = self._options(score_thresh, options)
        self._buffers: dict[tuple[int, ...], tuple[Tensor, Tensor]] = {}
        self._lock = threading.Lock()

    def _forward(self, images: Tensor) -> dict[str, np.ndarray]:
        # The buffer is a channels-last uint8 view; the graph takes contiguous float32 NCHW, RGB 0..255.
        batch = np.ascontiguousarray(images.numpy(), dtype=np.float32)
        values = self.session.run(self.output_names, {self.input_name: batch})
        return dict(zip(self.output_names, values))

    def _postprocess(self, outputs: dict[str, np.ndarray], items: Sequence[_Item]) -> list[Prediction]:
        predictions = []
        for i, item in enumerate(items):
            pred = postprocess_numpy({name: value[i] for name, value in outputs.items()}, item.letterbox,
                                     self.tasks, self.metadata, self.options)
            pred.meta = dict(item.meta)
            predictions.append(pred)
        return predictions
