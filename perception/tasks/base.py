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
- model: ``build_head``, which pyramid levels it reads (``LEVELS``) and whether it needs P6/P7;
- loss: ``loss(head, output, target, has)`` -> (scalar, detached components for logging);
- post-processing: ``postprocess(head, output, size, **options)`` at the network input, ``restore`` to the
  original image;
- metrics: ``build_metric``, ``update_metric``, ``HEADLINE`` (keys printed first) and ``SIGNS`` (direction of
  each metric for the multi-task gain);
- inference/export/pictures: ``to_numpy``, ``export_outputs``, ``decode_numpy``, ``draw``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn


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
    def build_head(self, in_channels: int, strides: Sequence[int]) -> nn.Module:
        """The head on the pyramid levels ``LEVELS`` (``strides`` are theirs)."""
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
    def to_numpy(self, prediction: Any) -> Any:
        """One image's restored prediction as numpy (what :class:`perception.inference.Prediction` holds)."""
        raise NotImplementedError

    def export_outputs(self, head: nn.Module, output: Any) -> dict[str, Tensor]:
        """Tensors of the ONNX graph's outputs (names without the task prefix), decoded as far as the graph can."""
        raise NotImplementedError

    def decode_numpy(self, outputs: Mapping[str, np.ndarray], letterbox: Any, **options: Any) -> Any:
        """The ONNX outputs of one image -> the same numpy result as ``to_numpy`` of the PyTorch path."""
        raise NotImplementedError

    def draw(self, image: np.ndarray, result: Any, **options: Any) -> np.ndarray:
        """A picture of one image's numpy result over (or beside) ``image`` (H x W x 3 uint8 RGB)."""
        raise NotImplementedError


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
