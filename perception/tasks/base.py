"""The task protocol: a task *type* owns everything about one kind of answer; a config names task *instances*.

    model:
      tasks:
        objects:  {type: detection, num_classes: 8}
        semantic: {type: segmentation, num_classes: 19}
        drivable: {type: segmentation, num_classes: 3, label: drivable}
        depth:    {type: depth, max_depth: 80}

A :class:`Task` is one named instance: its ``name`` keys the model's heads and outputs, the losses, the weights,
the metrics (``<name>/<metric>``), the predictions and the pictures; its ``label`` names the labels it learns
from in a Sample/Batch (by default the type's own name, so ``[detection, segmentation, depth]`` reads the labels
the datasets have always produced); its ``cfg`` holds the type's settings. A subclass of ``Task`` per type
implements the pieces below; the model, data pipeline, evaluator, predictor, export and pictures only call them,
so none of them names a type. Adding a type is one folder ``perception/tasks/<type>/`` plus one line in
``perception/tasks/__init__.py``.

Pieces of a type, in the order data flows through them:
- data: ``collate`` (per-sample targets -> one batched target), ``encode_dense``/``decode_dense`` (how the joint
  augmentation moves a dense target: nearest resampling as a mask, then e.g. a zoom divides depth or a flip
  negates a normal's x) or ``KIND = "boxes"`` for targets that albumentations moves as boxes;
- model: ``build_head``, which pyramid levels it reads (``pyramid_strides``, by default from ``LEVELS`` and
  ``EXTRA_LEVELS``) and its settings per model scale (``SCALES``);
- loss: ``loss(head, output, target, has)`` -> (scalar, detached components for logging);
- post-processing: ``postprocess(head, output, size, **options)`` at the network input, ``restore`` to the
  original image;
- metrics: ``build_metric``, ``update_metric``, ``HEADLINE`` (keys printed first) and ``SIGNS`` (direction of
  each metric for the multi-task gain);
- inference/export/pictures: ``predict`` (raw outputs -> numpy results at the original image size), ``to_numpy``,
  ``export_outputs``/``export_metadata``/``decode_numpy`` (the ONNX graph and its numpy decode), ``draw``,
  ``draw_options``, ``raw_image`` and ``record`` (pictures, raw PNGs and the JSON line); a result is a dict with
  the keys ``FIELDS``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from perception.ops.geometry import Letterbox, dense_to_original

# Strides of every level the neck can give: P2..P5 from the backbone's C2..C5, P6/P7 computed from P5.
PYRAMID_STRIDES = (4, 8, 16, 32, 64, 128)


class Task:
    """One named task instance of a registered type.

    Args:
        name: the instance's name (a Python identifier: it keys modules, metrics and ONNX outputs).
        cfg: the type's settings dataclass (``Config``).
        label: the key of the labels it learns from (default: the type's name).
    """

    TYPE: ClassVar[str] = ""                       # the registry name, e.g. "segmentation"
    Config: ClassVar[type] = object                # dataclass of the instance's settings
    KIND: ClassVar[str] = "dense"                  # "dense" (moved as a mask) or "boxes" (moved as boxes)
    LEVELS: ClassVar[slice] = slice(0, 4)          # pyramid levels the head reads: P2..P5 by default
    EXTRA_LEVELS: ClassVar[bool] = False           # needs P6/P7 from the neck
    # Per model scale (``model.scale``: n, s, m, l), the settings this type's instances default to; keys the
    # config gives explicitly win. Each type sizes its own head (see docs/scales.md).
    SCALES: ClassVar[dict[str, dict[str, Any]]] = {}
    HEADLINE: ClassVar[tuple[str, ...]] = ()       # metric keys printed first, in this order
    SIGNS: ClassVar[dict[str, int]] = {}           # metric -> +1 higher is better / -1 lower is better
    PER_CLASS: ClassVar[str] = ""                  # prefix of per-class metric keys ("AP", "iou"), if any
    SCORE: ClassVar[str] = ""                      # the metric of the default model-selection score
    LOSS_KIND: ClassVar[str] = "regression"        # "regression" or "classification" (uncertainty weighting)

    def __init__(self, name: str, cfg: Any, label: str | None = None) -> None:
        self.name = name
        self.cfg = cfg
        self.label = label or self.TYPE

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, label={self.label!r})"

    # ------------------------------------------------------------------------------------------- class names
    @property
    def class_names(self) -> list[str]:
        """The class names of a classifying task (empty for regression tasks)."""
        return list(getattr(self.cfg, "class_names", []) or [])

    @property
    def num_classes(self) -> int | None:
        return getattr(self.cfg, "num_classes", None)

    # -------------------------------------------------------------------------------------------------- data
    @classmethod
    def collate(cls, values: Sequence[Any | None], height: int, width: int) -> Any:
        """Batch the per-sample targets (``None`` where a sample lacks this label), padded to ``height`` x
        ``width`` bottom/right with the value that means "no label"."""
        raise NotImplementedError

    @classmethod
    def encode_dense(cls, value: np.ndarray) -> np.ndarray:
        """A dense target as an array that albumentations resamples like a mask (nearest), in which the fill
        value 0 (padding) means "no label"."""
        raise NotImplementedError

    @classmethod
    def decode_dense(cls, array: np.ndarray, zoom: float, flipped: bool) -> Tensor:
        """The inverse of :meth:`encode_dense` after the geometry: ``zoom`` is the random zoom of the image,
        ``flipped`` whether it was mirrored left-right. Returns the target as a tensor."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------------- model
    def pyramid_strides(self) -> tuple[int, ...]:
        """Strides of the pyramid levels this instance's head reads (a subset of ``PYRAMID_STRIDES``): by default
        ``LEVELS`` of P2..P5, or of P2..P7 when ``EXTRA_LEVELS``; types whose settings choose the levels (fewer
        levels at small scales) override it. The neck computes only the levels some head reads."""
        return tuple(PYRAMID_STRIDES[:6 if self.EXTRA_LEVELS else 4][self.LEVELS])

    def build_head(self, in_channels: int, strides: Sequence[int]) -> nn.Module:
        """The head on the pyramid levels of ``pyramid_strides`` (``strides`` are theirs, finest first)."""
        raise NotImplementedError

    def loss(self, head: nn.Module, output: Any, target: Any, has: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The task's loss over the images that carry its labels (``has``, Tensor[B] bool on the CPU), and
        detached components to log (keys without the task prefix). Computed in float32."""
        raise NotImplementedError

    def postprocess(self, head: nn.Module, output: Any, size: tuple[int, int], **options: Any) -> Any:
        """Predictions for the batch at the network input size ``size`` (H, W): a per-image list or a batched
        tensor; ``options`` are thresholds that override the config's for this call."""
        raise NotImplementedError

    def select(self, prediction: Any, index: int) -> Any:
        """Image ``index`` of a batch's predictions, on the CPU."""
        if isinstance(prediction, (list, tuple)):
            return _to_cpu(prediction[index])
        return _to_cpu(prediction[index])

    def restore(self, prediction: Any, input_size: Sequence[int], orig_size: Sequence[int]) -> Any:
        """One image's prediction at the network input (inside the batch padding) -> the original image."""
        raise NotImplementedError

    # ----------------------------------------------------------------------------------------------- metrics
    def build_metric(self, eval_cfg: Any, device: torch.device) -> Any:
        """An accumulator with ``update``, ``reduce`` (across processes) and ``compute(prefix)``."""
        raise NotImplementedError

    def eval_options(self, eval_cfg: Any) -> dict[str, Any]:
        """Post-processing options for evaluation (e.g. a lower detection threshold, since mAP ranks low scores)."""
        return {}

    def update_metric(self, metric: Any, prediction: Any, target: Any, has: Tensor, meta: Sequence[dict]) -> None:
        """Feed one batch's predictions (at the padded input size) and targets to ``metric``."""
        metric.update(prediction, target)

    def signs(self) -> dict[str, int]:
        """``<name>/<metric>`` -> direction, for the multi-task gain."""
        return {f"{self.name}/{k}": v for k, v in self.SIGNS.items()}

    # ------------------------------------------------------------------------------- inference and pictures
    # A task's *result* for one image is a dict of numpy arrays, lists and plain values at the original image's
    # size, whose keys are ``FIELDS``: what :class:`perception.inference.Prediction` holds under the task's name
    # (``pred[name][field]``; ``pred.<field>`` finds it when exactly one task has that field). The PyTorch path
    # (``predict``), the network-size path of evaluation pictures (``to_numpy``) and the ONNX path
    # (``decode_numpy``) all give this form, so ``draw`` and ``record`` serve all three.
    FIELDS: ClassVar[tuple[str, ...]] = ()         # keys of a result, e.g. ("depth",)
    OPTIONS: ClassVar[tuple[str, ...]] = ()        # post-processing options of predict/decode_numpy ("score_thresh")

    def predict(self, head: nn.Module, output: Any, letterboxes: Sequence[Letterbox], **options: Any
                ) -> list[dict[str, Any]]:
        """A batch's raw head outputs -> one result per image, at that image's original size.

        The images of a batch share one padded network size; ``letterboxes[i]`` says where image ``i`` lies in it
        (:mod:`perception.ops.geometry`). The default serves dense types whose head output is one
        Tensor[B, C, h, w] on a regular grid over the padded input and whose ``postprocess`` decodes at any size:
        the raw map is resized straight to the original pixels (``dense_to_original``, one bilinear resize, the
        padding left out), decoded there by ``postprocess`` and turned into numpy by ``to_numpy``. Resizing before
        decoding keeps class boundaries smooth and costs one resize from the stride-4 grid. Types whose results
        are not maps (boxes) override it: ``postprocess`` at the network size, then the letterbox (e.g.
        ``boxes_to_original``).

        Args:
            head: the task's head.
            output: its raw output for the batch (float32 or autocast dtype).
            letterboxes: one per image, in batch order.
            options: post-processing options (``OPTIONS``), e.g. ``score_thresh``; never set on the head.
        """
        if self.KIND != "dense":
            raise NotImplementedError(f"{type(self).__name__}.predict: a {self.KIND!r} task must implement it")
        results = []
        for i, box in enumerate(letterboxes):
            raw = dense_to_original(output[i:i + 1].float(), box)
            decoded = self.postprocess(head, raw, (box.height, box.width), **options)
            results.append(self.to_numpy(self.select(decoded, 0)))
        return results

    def to_numpy(self, prediction: Any) -> dict[str, Any]:
        """One image's prediction in the form of ``postprocess`` + ``select`` (tensors, at whatever size they
        are: the original image in ``predict``, the network input for evaluation pictures) -> its result."""
        raise NotImplementedError

    def export_outputs(self, head: nn.Module, output: Any) -> dict[str, Tensor]:
        """The ONNX graph's outputs of this task, decoded as far as a fixed-shape graph can (thresholds, top-k and
        NMS, whose output sizes depend on the data, stay out): short names (the graph calls them
        ``<task>__<name>``) -> Tensor[B, ...], batch first."""
        raise NotImplementedError

    def export_metadata(self, head: nn.Module) -> dict[str, Any]:
        """JSON-able facts of the built head that ``decode_numpy`` needs besides the settings (passed to it as
        options by whoever reads the exported file), e.g. the detection levels' strides."""
        return {}

    def decode_numpy(self, outputs: Mapping[str, np.ndarray], letterbox: Letterbox, **options: Any
                     ) -> dict[str, Any]:
        """One image's slice of the ``export_outputs`` (short names, numpy, no batch axis) -> its result at the
        original size, equal to ``predict``'s within float tolerance. Only numpy (and OpenCV) may be used: this
        is the path of onnxruntime callers. ``options``: ``OPTIONS`` and ``export_metadata``'s keys."""
        raise NotImplementedError

    def draw(self, image: np.ndarray, result: Mapping[str, Any], **options: Any) -> np.ndarray:
        """One picture (a panel) of one image's result: ndarray[H, W, 3] uint8 RGB of ``image``'s size, drawn over
        a copy of ``image`` (or in place of it, for a map such as depth). Built from the primitives of
        :mod:`perception.ops.draw` so that every picture of the toolkit (tools/infer.py, TensorBoard) looks the
        same. Options a type does not know are ignored (one call passes the same options to every task)."""
        raise NotImplementedError

    def draw_options(self, result: Mapping[str, Any]) -> dict[str, Any]:
        """Options of ``draw`` that a video fixes from its first frame so that a colour means the same thing in
        every frame (e.g. the depth range in metres); ``{}`` when nothing needs fixing."""
        return {}

    def raw_image(self, result: Mapping[str, Any]) -> np.ndarray | None:
        """The result as one lossless picture for ``tools/infer.py --raw`` (written as PNG): ndarray[H, W] or
        [H, W, 3], uint8 or uint16 (e.g. class ids, millimetres); ``None`` for a result that is no map."""
        return None

    def record(self, result: Mapping[str, Any]) -> dict[str, Any]:
        """A JSON-serialisable summary of one result for ``predictions.jsonl`` (boxes in COCO style, class
        fractions, a value range, ...); the line nests it as ``"tasks": {name: {"type": ..., **record}}``."""
        raise NotImplementedError


def dense_pyramid_strides(stride: int) -> tuple[int, ...]:
    """The levels a dense branch of output ``stride`` fuses: from that stride to P5's (P2..P5 or P3..P5)."""
    return tuple(s for s in PYRAMID_STRIDES[:4] if s >= stride)


def _to_cpu(x: Any) -> Any:
    if isinstance(x, Tensor):
        return x.detach().cpu()
    if isinstance(x, dict):
        return {k: _to_cpu(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to_cpu(v) for v in x)
    return x


def settings_dict(task: Task) -> dict[str, Any]:
    """The instance as the config's mapping form: ``{type, label, **settings}``."""
    out = {"type": task.TYPE}
    if task.label != task.TYPE:
        out["label"] = task.label
    out.update(dataclasses.asdict(task.cfg) if dataclasses.is_dataclass(task.cfg) else {})
    return out
