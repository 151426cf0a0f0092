"""The monocular depth task type: a 1/4-scale dense branch on P2..P5, metres, Eigen et al.'s metrics."""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from perception.ops.draw import colorize_depth, depth_range
from perception.ops.geometry import Letterbox, crop_resize_linear, dense_to_original_numpy
from perception.tasks.base import Task, dense_pyramid_strides
from perception.tasks.depth.config import DepthConfig
from perception.tasks.depth.head import DepthHead
from perception.tasks.depth.metric import DepthMetric
from perception.tasks.common import DENSE_SCALES, dense_batch


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
    """Metric depth: Tensor[H, W] float32 metres per image, 0 = no measurement.

    Result (numpy, original image): ``depth`` ndarray[H, W] float32 metres.
    """

    TYPE = "depth"
    Config = DepthConfig
    HEADLINE = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog", "delta1", "delta2", "delta3",
                "abs_err", "rel_err")
    SIGNS = {"abs_rel": -1, "rmse": -1}
    SCORE = "delta1"
    FIELDS = ("depth",)

    # model.scale -> this type's branch (docs/scales.md): stride 8 at the small scales, depthwise-separable.
    # The dense preset, but a 32-channel branch at m: one smooth channel needs less width than 19 classes (at m,
    # 32 channels measured the same AbsRel within the seeds' spread, where segmentation lost 2.5 points of mIoU;
    # docs/scales.md).
    SCALES = {**DENSE_SCALES, "m": {**DENSE_SCALES["m"], "channels": 32}}

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
    def pyramid_strides(self) -> tuple[int, ...]:
        return dense_pyramid_strides(self.cfg.stride)

    def build_head(self, in_channels: int, strides: Sequence[int]) -> nn.Module:
        d = self.cfg
        return DepthHead(in_channels, d.channels, strides, d.parameterization, d.min_depth, d.max_depth, d.loss,
                         d.silog_lambda, d.silog_scale, loss_max_depth=d.loss_max_depth, conv=d.conv)

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

    # ------------------------------------------------------------------------------- inference and pictures
    def predict(self, head: nn.Module, output: Tensor, letterboxes: Sequence[Letterbox], **options: Any
                ) -> list[dict[str, Any]]:
        """Depth in metres at each original image's size: the head's log-depth, clamped on its own grid, resized
        once to the original pixels (``dense_to_original_numpy``, on the host: the grid is small to fetch, the
        full-size map is numpy either way; a resize in log space keeps depth edges sharp) and exponentiated there
        in place. A bilinear blend of clamped values stays in the range, so the full-size map needs no clamp; the
        ONNX path (``decode_numpy``) takes the same steps."""
        log_min, log_max = math.log(head.min_depth), math.log(head.max_depth)
        log_depth = head.log_depth(output.detach().float()).clamp(log_min, log_max).cpu().numpy()   # [B, 1, h, w]
        results = []
        for i, box in enumerate(letterboxes):
            depth = dense_to_original_numpy(log_depth[i], box)[0]
            results.append({"depth": np.exp(depth, out=depth)})
        return results

    def to_numpy(self, prediction: Tensor) -> dict[str, Any]:
        return {"depth": prediction.detach().float().cpu().numpy()}

    def export_outputs(self, head: nn.Module, output: Tensor) -> dict[str, Tensor]:
        return {"depth": torch.exp(head.log_depth(output)).clamp(head.min_depth, head.max_depth)}  # [B, 1, h, w]

    def decode_numpy(self, outputs: Mapping[str, np.ndarray], letterbox: Letterbox, **options: Any
                     ) -> dict[str, Any]:
        # Resized in log space, as the predictor resizes the head's (clamped) log-depth, and exponentiated in place.
        log_depth = np.log(np.maximum(outputs["depth"], 1e-6, dtype=np.float32))
        depth = dense_to_original_numpy(log_depth, letterbox)[0]
        return {"depth": np.exp(depth, out=depth)}

    def draw(self, image: np.ndarray, result: Mapping[str, Any], value_range: tuple[float, float] | None = None,
             **options: Any) -> np.ndarray:
        return colorize_depth(result["depth"], value_range)

    def draw_options(self, result: Mapping[str, Any]) -> dict[str, Any]:
        return {"value_range": depth_range(result["depth"])}

    def raw_image(self, result: Mapping[str, Any]) -> np.ndarray:
        """Millimetres as 16 bits (clipped at 65535 = 65.535 m)."""
        return np.clip(np.round(result["depth"] * 1000.0), 0, 65535).astype(np.uint16)

    def record(self, result: Mapping[str, Any]) -> dict[str, Any]:
        """``depth_range_m``: the nearest and farthest predicted depth."""
        depth = result["depth"]
        return {"depth_range_m": [round(float(depth.min()), 3), round(float(depth.max()), 3)]}
