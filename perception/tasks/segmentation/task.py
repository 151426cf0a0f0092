"""The semantic segmentation task type: Panoptic-FPN branch on P2..P5, class-id maps, confusion-matrix mIoU."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from perception.ops.draw import class_palette, overlay_segmentation
from perception.ops.geometry import (Letterbox, argmax_to_original, argmax_to_original_numpy, crop_resize_nearest,
                                     ids_to_original)
from perception.tasks.base import Task, dense_pyramid_strides
from perception.tasks.common import DENSE_SCALES, IGNORE_INDEX, dense_batch
from perception.tasks.segmentation.config import SegmentationConfig
from perception.tasks.segmentation.head import SegmentationHead
from perception.tasks.segmentation.metric import SegmentationMetric


class SegmentationTask(Task):
    """Per-pixel classes: Tensor[H, W] int64 per image, 255 = no label.

    Result (numpy, original image): ``semantic`` ndarray[H, W] class ids (uint8; int32 above 256 classes) and
    ``semantic_names``, the name of every class id.

    Option ``upsample`` (``predict`` and ``decode_numpy``): how the ids reach the original pixels.
    ``nearest`` (default): the arg-max on the head's grid, each pixel taking the cell its centre falls in
    (``ids_to_original``; well under a millisecond of numpy for a 1080x810 photo). ``bilinear``: the arg-max of
    the logits bilinearly resized to every original pixel, smoother boundaries (``argmax_to_original``, exact
    without the full-size logits, but tens of milliseconds on a CPU). docs/inference.md has both measured.
    """

    TYPE = "segmentation"
    Config = SegmentationConfig
    HEADLINE = ("mIoU", "pixel_acc", "mAcc")
    SIGNS = {"mIoU": 1, "pixel_acc": 1}
    SCORE = "mIoU"
    LOSS_KIND = "classification"
    PER_CLASS = "iou"
    FIELDS = ("semantic", "semantic_names")
    OPTIONS = ("upsample",)
    UPSAMPLE = ("nearest", "bilinear")

    # model.scale -> this type's branch (docs/scales.md): stride 8 at the small scales, depthwise-separable.
    SCALES = DENSE_SCALES

    # -------------------------------------------------------------------------------------------------- data
    @classmethod
    def collate(cls, values: Sequence[Any | None], height: int, width: int) -> Tensor:
        return dense_batch(values, height, width, IGNORE_INDEX, torch.int64)

    @classmethod
    def encode_dense(cls, value: np.ndarray) -> np.ndarray:
        # albumentations pads every mask with one value (0); shifting ids by one makes that value "ignore".
        return ((np.asarray(value).astype(np.int64) + 1) % 256).astype(np.uint8)

    @classmethod
    def decode_dense(cls, array: np.ndarray, zoom: float, flipped: bool) -> Tensor:
        return torch.from_numpy((array.astype(np.int64) - 1) % 256)

    # ------------------------------------------------------------------------------------------------- model
    def pyramid_strides(self) -> tuple[int, ...]:
        return dense_pyramid_strides(self.cfg.stride)

    def build_head(self, in_channels: int, strides: Sequence[int]) -> nn.Module:
        s = self.cfg
        return SegmentationHead(in_channels, s.num_classes, s.channels, strides, s.ignore_index, s.conv)

    def loss(self, head: nn.Module, output: Tensor, target: Tensor, has: Tensor) -> tuple[Tensor, dict]:
        return head.compute_loss(output.float(), target), {}

    def postprocess(self, head: nn.Module, output: Tensor, size: tuple[int, int], **options: Any) -> Tensor:
        return head.postprocess(output.float(), size)

    def restore(self, prediction: Tensor, input_size: Sequence[int], orig_size: Sequence[int]) -> Tensor:
        return crop_resize_nearest(prediction, input_size, orig_size)

    # ----------------------------------------------------------------------------------------------- metrics
    def build_metric(self, eval_cfg: Any, device: torch.device) -> SegmentationMetric:
        return SegmentationMetric(self.cfg.num_classes, self.cfg.class_names, self.cfg.ignore_index, device)

    # ------------------------------------------------------------------------------- inference and pictures
    @classmethod
    def _upsample(cls, upsample: str) -> str:
        if upsample not in cls.UPSAMPLE:
            raise ValueError(f"segmentation option upsample: got {upsample!r}, expected one of "
                             f"{', '.join(cls.UPSAMPLE)}")
        return upsample

    def predict(self, head: nn.Module, output: Tensor, letterboxes: Sequence[Letterbox], upsample: str = "nearest",
                **options: Any) -> list[dict[str, Any]]:
        """Class ids at each original image's size, by the base class's coordinate map: the grid's arg-max by
        nearest neighbour (``upsample="nearest"``), or the arg-max of the logits bilinearly resized there
        (``"bilinear"``), computed without the full-size K-channel logits (``argmax_to_original``)."""
        if self._upsample(upsample) == "bilinear":
            return [self.to_numpy(argmax_to_original(output[i], box)) for i, box in enumerate(letterboxes)]
        # The grid's ids on the host (small), then gathered there: the full-size map is numpy either way. On the CPU
        # numpy's arg-max over the channels is several times faster than PyTorch's (0.5 against 3 ms, 19 x 80 x 60).
        if output.device.type == "cpu":
            ids = output.detach().float().numpy().argmax(1).astype(self._id_dtype())
        else:
            ids = output.detach().float().argmax(1).to(torch.uint8 if self.cfg.num_classes <= 256 else torch.int32)
            ids = ids.cpu().numpy()
        return [{"semantic": ids_to_original(ids[i], box), "semantic_names": list(self.class_names)}
                for i, box in enumerate(letterboxes)]

    def _id_dtype(self) -> type:
        return np.uint8 if self.cfg.num_classes <= 256 else np.int32

    def to_numpy(self, prediction: Tensor) -> dict[str, Any]:
        return {"semantic": prediction.detach().cpu().numpy().astype(self._id_dtype()),
                "semantic_names": list(self.class_names)}

    def export_outputs(self, head: nn.Module, output: Tensor) -> dict[str, Tensor]:
        return {"logits": output}   # [B, K, H/4, W/4]

    def decode_numpy(self, outputs: Mapping[str, np.ndarray], letterbox: Letterbox, **options: Any
                     ) -> dict[str, Any]:
        logits = outputs["logits"]
        if self._upsample(options.get("upsample", "nearest")) == "bilinear":
            ids = argmax_to_original_numpy(logits, letterbox)
        else:
            ids = ids_to_original(logits.argmax(0).astype(self._id_dtype()), letterbox)
        return {"semantic": ids.astype(self._id_dtype()), "semantic_names": list(self.class_names)}

    def draw(self, image: np.ndarray, result: Mapping[str, Any], palette: np.ndarray | None = None,
             alpha: float = 0.55, **options: Any) -> np.ndarray:
        ids = result["semantic"]
        if palette is None:
            palette = class_palette(result.get("semantic_names") or [], int(ids.max(initial=0)) + 1)
        return overlay_segmentation(image, ids, palette, alpha)

    def raw_image(self, result: Mapping[str, Any]) -> np.ndarray:
        """Class ids: 8-bit, or 16-bit above 256 classes."""
        ids = result["semantic"]
        return ids.astype(np.uint8 if ids.max(initial=0) < 256 else np.uint16)

    def record(self, result: Mapping[str, Any]) -> dict[str, Any]:
        """``semantic_classes``: the classes present, with their pixel fractions."""
        ids = result["semantic"]
        names = result.get("semantic_names") or []
        counts = np.bincount(ids.ravel(), minlength=len(names))
        return {"semantic_classes": [
            {"id": i, "name": names[i] if i < len(names) else f"class_{i}",
             "fraction": round(float(c) / ids.size, 5)} for i, c in enumerate(counts.tolist()) if c]}
