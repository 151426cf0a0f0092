"""The Python API: a trained network as a callable that takes images and returns plain numpy predictions.

    predictor = Predictor.from_checkpoint("runs/demo/best.pt")            # device="auto", all heads
    pred = predictor("street.jpg")                                       # a path, or an RGB array
    pred.boxes, pred.class_names, pred.semantic, pred.depth             # at the image's own size
    for pred in predictor.stream(frames, batch_size=4, bgr=True):        # e.g. OpenCV video frames
        ...

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
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor, nn

from perception.ops.geometry import Letterbox, boxes_to_original, dense_to_original, fit_letterbox, \
    resize_image
from perception.inference.images import as_hwc3, read_image
from perception.inference.loading import load_model, resolve_device
from perception.inference.prediction import Prediction
from perception.models.config import check_tasks


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
        model: a :class:`~perception.models.MultiTaskModel` (or anything with its ``forward``/``postprocess``).
        image_size: (H, W) the images are fitted into (aspect ratio kept; padded to a multiple of 32).
        tasks: the heads to run (default: all of the model's). Only their post-processing runs too.
        detection_classes: names of the detection classes (default: ``class_<i>``).
        segmentation_classes: names of the semantic classes (default: ``class_<i>``).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        half: run the network under autocast: float16 on CUDA, bfloat16 on the CPU. Post-processing stays
            float32.
        score_thresh: replace the detection head's score threshold (None: the trained model's).
    """

    def __init__(self, model: nn.Module, image_size: Sequence[int], tasks: Sequence[str] | None = None,
                 detection_classes: Sequence[str] | None = None, segmentation_classes: Sequence[str] | None = None,
                 device: str | torch.device = "auto", half: bool = False, score_thresh: float | None = None) -> None:
        if len(image_size) != 2 or any(int(s) <= 0 for s in image_size):
            raise ValueError(f"image_size: got {tuple(image_size)}, expected (H, W) with positive ints")
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        model_tasks = list(model.tasks)
        self.tasks = model_tasks if tasks is None else check_tasks(tasks)
        for task in self.tasks:
            if task not in model_tasks:
                raise ValueError(f"task {task!r} is not in this model; it has {', '.join(model_tasks)}")
        self.tasks = [t for t in model_tasks if t in self.tasks]
        heads = getattr(model, "heads", {})
        self.detection_classes = self._names(detection_classes, heads, "detection")
        self.segmentation_classes = self._names(segmentation_classes, heads, "segmentation")
        if score_thresh is not None and "detection" in heads:
            heads["detection"].score_thresh = float(score_thresh)
        self.amp_dtype = (torch.float16 if self.device.type == "cuda" else torch.bfloat16) if half else None
        self._buffers: dict[tuple[int, ...], tuple[Tensor, Tensor]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _names(names: Sequence[str] | None, heads, task: str) -> list[str]:
        if names:  # an empty list (a config without names) falls back to class_<i> like None
            return list(names)
        if task not in heads:
            return []
        return [f"class_{i}" for i in range(heads[task].num_classes)]

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device = "auto",
                        tasks: Sequence[str] | None = None, half: bool = False,
                        image_size: Sequence[int] | None = None, prefer_ema: bool = True,
                        score_thresh: float | None = None) -> "Predictor":
        """Load a checkpoint written by the trainer (or ``save_checkpoint``) and rebuild its network.

        Args:
            path: the checkpoint; read with ``torch.load(..., weights_only=True)``, so no pickled code runs.
            device, half, score_thresh: as in the constructor.
            tasks: the heads to build and run (default: all the checkpoint has).
            image_size: (H, W) network size; default the run's ``data.image_size``.
            prefer_ema: load the checkpoint's ``ema`` weights when it has them.
        """
        loaded = load_model(path, tasks, prefer_ema)
        cfg = loaded.config
        return cls(loaded.model, image_size or cfg.data.image_size, loaded.tasks,
                   cfg.model.detection.class_names, cfg.model.segmentation.class_names, device, half, score_thresh)

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
            return self.model(images, tasks=self.tasks)

    @torch.inference_mode()
    def _postprocess(self, outputs: dict, items: Sequence[_Item]) -> list[Prediction]:
        padded = items[0].letterbox.padded_size
        detections = self.model.postprocess({"detection": outputs["detection"]}, padded)["detection"] \
            if "detection" in outputs else None
        predictions = []
        for i, item in enumerate(items):
            box = item.letterbox
            pred = Prediction(box.height, box.width, meta=item.meta)
            if detections is not None:
                det = detections[i]
                labels = det["labels"].cpu().numpy().astype(np.int64)
                pred.boxes = boxes_to_original(det["boxes"].float(), box).cpu().numpy()
                pred.scores = det["scores"].float().cpu().numpy()
                pred.labels = labels
                pred.class_names = [self._class_name(self.detection_classes, int(k)) for k in labels]
            # Dense maps: one bilinear resize from the stride-4 grid to the original pixels, then the head's own
            # decoding (argmax of the logits; depth from its parameterisation) at that size.
            dense = {task: dense_to_original(outputs[task][i:i + 1].float(), box)
                     for task in ("segmentation", "depth") if task in outputs}
            if dense:
                decoded = self.model.postprocess(dense, (box.height, box.width))
                if "segmentation" in decoded:
                    ids = decoded["segmentation"][0]
                    dtype = torch.uint8 if len(self.segmentation_classes) <= 256 else torch.int32
                    pred.semantic = ids.to(dtype).cpu().numpy()
                    pred.semantic_names = self.segmentation_classes
                if "depth" in decoded:
                    pred.depth = decoded["depth"][0].float().cpu().numpy()
            predictions.append(pred)
        return predictions

    @staticmethod
    def _class_name(names: Sequence[str], label: int) -> str:
        return names[label] if 0 <= label < len(names) else f"class_{label}"

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
