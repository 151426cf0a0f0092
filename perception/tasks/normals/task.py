"""The surface normals task type: a 1/4-scale dense branch on P2..P5, unit vectors, angular-error metrics.

Normals are in camera coordinates (x right, y down, z along the optical axis), unit length, and the zero vector
where a pixel has none (sky, missing data, padding). A left-right flip of the image negates x; a zoom leaves them
as they are (resizing the image changes the focal length, not the camera's orientation).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from perception.ops.geometry import Letterbox, crop_resize_linear, dense_to_original_numpy
from perception.tasks.base import Task, dense_pyramid_strides
from perception.tasks.common import DENSE_SCALES, dense_batch
from perception.tasks.normals.config import NormalsConfig
from perception.tasks.normals.head import NormalsHead, unit
from perception.tasks.normals.metric import METRICS, NormalsMetric


class NormalsTask(Task):
    """Surface normals: Tensor[H, W, 3] float32 unit vectors per image, 0 = no normal.

    Result (numpy, original image): ``normals`` ndarray[H, W, 3] float32 unit vectors (camera frame).
    """

    TYPE = "normals"
    Config = NormalsConfig
    HEADLINE = METRICS
    SIGNS = {"mean": -1, "median": -1, "within_11.25": 1, "within_22.5": 1, "within_30": 1}
    SCORE = "within_11.25"
    LOSS_KIND = "regression"
    FIELDS = ("normals",)

    # model.scale -> this type's branch (docs/scales.md): stride 8 at the small scales, depthwise-separable.
    SCALES = DENSE_SCALES

    # -------------------------------------------------------------------------------------------------- data
    @classmethod
    def collate(cls, values: Sequence[Any | None], height: int, width: int) -> Tensor:
        return dense_batch(values, height, width, 0.0, torch.float32, channels=3)

    @classmethod
    def encode_dense(cls, value: np.ndarray) -> np.ndarray:
        # Already in the pipeline's terms: an H x W x 3 float mask whose padding value 0 means "no normal".
        return np.ascontiguousarray(value, dtype=np.float32)

    @classmethod
    def decode_dense(cls, array: np.ndarray, zoom: float, flipped: bool) -> Tensor:
        out = np.array(array, dtype=np.float32)  # a copy: albumentations may hand back a view of its input
        if flipped:
            out[..., 0] = -out[..., 0]  # mirroring the image mirrors the surfaces: x changes sign
        return torch.from_numpy(out)

    # ------------------------------------------------------------------------------------------------- model
    def pyramid_strides(self) -> tuple[int, ...]:
        return dense_pyramid_strides(self.cfg.stride)

    def build_head(self, in_channels: int, strides: Sequence[int]) -> nn.Module:
        return NormalsHead(in_channels, self.cfg.channels, strides, self.cfg.loss, self.cfg.conv)

    def loss(self, head: nn.Module, output: Tensor, target: Tensor, has: Tensor) -> tuple[Tensor, dict]:
        # Images without normals carry all-zero targets, which count nowhere: ``has`` is not needed.
        return head.compute_loss(output.float(), target), {}

    def postprocess(self, head: nn.Module, output: Tensor, size: tuple[int, int], **options: Any) -> Tensor:
        return head.postprocess(output.float(), size)

    def restore(self, prediction: Tensor, input_size: Sequence[int], orig_size: Sequence[int]) -> Tensor:
        return unit(crop_resize_linear(prediction, input_size, orig_size), dim=-1)

    # ----------------------------------------------------------------------------------------------- metrics
    def build_metric(self, eval_cfg: Any, device: torch.device) -> NormalsMetric:
        return NormalsMetric(device=device)

    # ------------------------------------------------------------------------------- inference and pictures
    # predict: the base class's dense path (the head's unit field resized to the original image, then
    # renormalised there by ``postprocess``).
    def to_numpy(self, prediction: Tensor) -> dict[str, Any]:
        return {"normals": prediction.detach().float().cpu().numpy()}

    def export_outputs(self, head: nn.Module, output: Tensor) -> dict[str, Tensor]:
        return {"normals": output}   # [B, 3, H/4, W/4], unit vectors

    def decode_numpy(self, outputs: Mapping[str, np.ndarray], letterbox: Letterbox, **options: Any
                     ) -> dict[str, Any]:
        normals = dense_to_original_numpy(outputs["normals"], letterbox).transpose(1, 2, 0)
        length = np.linalg.norm(normals, axis=-1, keepdims=True)
        return {"normals": (normals / np.maximum(length, 1e-6)).astype(np.float32)}

    def draw(self, image: np.ndarray, result: Mapping[str, Any], **options: Any) -> np.ndarray:
        """The usual normal map, RGB = (n + 1) / 2 (x -> red, y -> green, z -> blue); black where there is none."""
        normals = np.asarray(result["normals"], np.float32)
        rgb = np.clip(np.rint((normals + 1.0) * 127.5), 0, 255).astype(np.uint8)
        rgb[~normals.any(-1)] = 0
        return rgb

    def raw_image(self, result: Mapping[str, Any]) -> np.ndarray:
        """16 bits per component, (n + 1) / 2 * 65535 (0 where there is no normal), in OpenCV's BGR order so that
        the PNG's R, G, B are x, y, z: read it back with ``n = rgb / 32767.5 - 1``."""
        normals = np.asarray(result["normals"], np.float32)
        coded = np.clip(np.rint((normals + 1.0) * 32767.5), 0, 65535).astype(np.uint16)
        coded[~normals.any(-1)] = 0
        return np.ascontiguousarray(coded[..., ::-1])

    def record(self, result: Mapping[str, Any]) -> dict[str, Any]:
        """``mean_normal``: the mean of the image's unit normals (x, y, z)."""
        normals = np.asarray(result["normals"], np.float64).reshape(-1, 3)
        return {"mean_normal": [round(float(v), 4) for v in normals.mean(0)]}
