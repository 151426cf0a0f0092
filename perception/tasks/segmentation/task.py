"""The semantic segmentation task type: Panoptic-FPN branch on P2..P5, class-id maps, confusion-matrix mIoU."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from perception.ops.geometry import crop_resize_nearest
from perception.tasks.base import Task
from perception.tasks.common import IGNORE_INDEX, dense_batch
from perception.tasks.segmentation.config import SegmentationConfig
from perception.tasks.segmentation.head import SegmentationHead
from perception.tasks.segmentation.metric import SegmentationMetric


class SegmentationTask(Task):
    """Per-pixel classes: Tensor[H, W] int64 per image, 255 = no label."""

    TYPE = "segmentation"
    Config = SegmentationConfig
    HEADLINE = ("mIoU", "pixel_acc", "mAcc")
    SIGNS = {"mIoU": 1, "pixel_acc": 1}
    SCORE = "mIoU"
    LOSS_KIND = "classification"
    PER_CLASS = "iou"

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
    def build_head(self, in_channels: int, strides: Sequence[int]) -> nn.Module:
        s = self.cfg
        return SegmentationHead(in_channels, s.num_classes, s.channels, strides, s.ignore_index)

    def loss(self, head: nn.Module, output: Tensor, target: Tensor, has: Tensor) -> tuple[Tensor, dict]:
        return head.compute_loss(output.float(), target), {}

    def postprocess(self, head: nn.Module, output: Tensor, size: tuple[int, int], **options: Any) -> Tensor:
        return head.postprocess(output.float(), size)

    def restore(self, prediction: Tensor, input_size: Sequence[int], orig_size: Sequence[int]) -> Tensor:
        return crop_resize_nearest(prediction, input_size, orig_size)

    # ----------------------------------------------------------------------------------------------- metrics
    def build_metric(self, eval_cfg: Any, device: torch.device) -> SegmentationMetric:
        return SegmentationMetric(self.cfg.num_classes, self.cfg.class_names, self.cfg.ignore_index, device)
