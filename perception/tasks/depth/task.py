"""The monocular depth task type: a 1/4-scale dense branch on P2..P5, metres, Eigen et al.'s metrics."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from perception.ops.geometry import crop_resize_linear
from perception.tasks.base import Task
from perception.tasks.depth.config import DepthConfig
from perception.tasks.depth.head import DepthHead
from perception.tasks.depth.metric import DepthMetric
from perception.tasks.common import dense_batch


def image_sizes(meta: Sequence[dict]) -> list[tuple[int, int]] | None:
    """Each image's (h, w) before padding, when the dataset recorded it in ``meta``."""
    sizes = []
    for m in meta:
        size = m.get("image_size") or m.get("size")
        if size is None:
            return None
        sizes.append((int(size[0]), int(size[1])))
    return sizes


class DepthTask(Task):
    """Metric depth: Tensor[H, W] float32 metres per image, 0 = no measurement."""

    TYPE = "depth"
    Config = DepthConfig
    HEADLINE = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog", "delta1", "delta2", "delta3",
                "abs_err", "rel_err")
    SIGNS = {"abs_rel": -1, "rmse": -1}
    SCORE = "delta1"

    # -------------------------------------------------------------------------------------------------- data
    @classmethod
    def collate(cls, values: Sequence[Any | None], height: int, width: int) -> Tensor:
        return dense_batch(values, height, width, 0.0, torch.float32)

    @classmethod
    def encode_dense(cls, value: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(value, dtype=np.float32)

    @classmethod
    def decode_dense(cls, array: np.ndarray, zoom: float, flipped: bool) -> Tensor:
        # Zooming the image by s looks like moving the camera s times closer (MTAN's augmentation).
        if zoom != 1.0:
            array = array / np.float32(zoom)
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))

    # ------------------------------------------------------------------------------------------------- model
    def build_head(self, in_channels: int, strides: Sequence[int]) -> nn.Module:
        d = self.cfg
        return DepthHead(in_channels, d.channels, strides, d.parameterization, d.min_depth, d.max_depth, d.loss,
                         d.silog_lambda, d.silog_scale)

    def loss(self, head: nn.Module, output: Tensor, target: Tensor, has: Tensor) -> tuple[Tensor, dict]:
        return head.compute_loss(output.float(), target), {}

    def postprocess(self, head: nn.Module, output: Tensor, size: tuple[int, int], **options: Any) -> Tensor:
        return head.postprocess(output.float(), size)

    def restore(self, prediction: Tensor, input_size: Sequence[int], orig_size: Sequence[int]) -> Tensor:
        return crop_resize_linear(prediction, input_size, orig_size)

    # ----------------------------------------------------------------------------------------------- metrics
    def build_metric(self, eval_cfg: Any, device: torch.device) -> DepthMetric:
        return DepthMetric(eval_cfg.min_depth, eval_cfg.depth_cap, eval_cfg.eigen_crop, eval_cfg.depth_average,
                           device)

    def update_metric(self, metric: DepthMetric, prediction: Tensor, target: Tensor, has: Tensor,
                      meta: Sequence[dict]) -> None:
        metric.update(prediction, target, image_sizes(meta))
