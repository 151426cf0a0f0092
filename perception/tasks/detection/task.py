"""The detection task type: FCOS head on P3..P7, boxes as targets, COCO mAP."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from perception.tasks.base import Task
from perception.tasks.detection.config import DetectionConfig
from perception.tasks.detection.head import FCOSHead
from perception.tasks.detection.metric import DetectionMetric


def _as_tensor(x: Any, dtype: torch.dtype) -> Tensor:
    if isinstance(x, Tensor):
        return x.to(dtype)
    return torch.as_tensor(np.ascontiguousarray(x), dtype=dtype)


class DetectionTask(Task):
    """Objects as boxes: ``{"boxes": Tensor[N, 4] xyxy pixels, "labels": Tensor[N] int64}`` per image."""

    TYPE = "detection"
    Config = DetectionConfig
    KIND = "boxes"
    LEVELS = slice(1, None)
    EXTRA_LEVELS = True
    HEADLINE = ("mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large")
    SIGNS = {"mAP": 1}
    SCORE = "mAP"
    LOSS_KIND = "classification"
    PER_CLASS = "AP"

    # -------------------------------------------------------------------------------------------------- data
    @classmethod
    def collate(cls, values: Sequence[Any | None], height: int, width: int) -> dict[str, list[Tensor]]:
        boxes, labels = [], []
        for value in values:
            if value is None:
                boxes.append(torch.zeros(0, 4, dtype=torch.float32))
                labels.append(torch.zeros(0, dtype=torch.int64))
            else:
                boxes.append(_as_tensor(value["boxes"], torch.float32).reshape(-1, 4))
                labels.append(_as_tensor(value["labels"], torch.int64).reshape(-1))
        return {"boxes": boxes, "labels": labels}

    # ------------------------------------------------------------------------------------------------- model
    def build_head(self, in_channels: int, strides: Sequence[int]) -> nn.Module:
        d = self.cfg
        return FCOSHead(in_channels, d.num_classes, strides, d.num_convs, d.prior_prob, d.center_sampling_radius,
                        d.score_thresh, d.nms_thresh, d.topk_candidates, d.detections_per_img, d.focal_alpha,
                        d.focal_gamma)

    def loss(self, head: nn.Module, output: dict, target: dict, has: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        parts = head.compute_loss(output, target["boxes"], target["labels"], has)
        return parts["cls"] + parts["box"] + parts["ctr"], {k: v.detach() for k, v in parts.items()}

    def postprocess(self, head: nn.Module, output: dict, size: tuple[int, int], score_thresh: float | None = None,
                    **options: Any) -> list[dict[str, Tensor]]:
        return head.postprocess(output, size, score_thresh=score_thresh)

    def restore(self, prediction: dict, input_size: Sequence[int], orig_size: Sequence[int]) -> dict:
        from perception.ops.geometry import scale_boxes

        out = dict(prediction)
        out["boxes"] = scale_boxes(prediction["boxes"], input_size, orig_size)
        return out

    # ----------------------------------------------------------------------------------------------- metrics
    def build_metric(self, eval_cfg: Any, device: torch.device) -> DetectionMetric:
        return DetectionMetric(self.cfg.num_classes, self.cfg.class_names)

    def eval_options(self, eval_cfg: Any) -> dict[str, Any]:
        thresh = getattr(eval_cfg, "detection_score_thresh", None)
        return {} if thresh is None else {"score_thresh": thresh}

    def update_metric(self, metric: DetectionMetric, prediction: list, target: dict, has: Tensor,
                      meta: Sequence[dict]) -> None:
        metric.update(prediction, target["boxes"], target["labels"], has)
