"""The detection task type: FCOS head on P3..P7, boxes as targets, COCO mAP."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from perception.ops.boxes import ltrb_to_boxes
from perception.ops.draw import draw_detections
from perception.ops.geometry import Letterbox, boxes_to_original
from perception.tasks.base import PYRAMID_STRIDES, Task
from perception.tasks.detection.decode import fcos_postprocess_numpy, pyramid_sizes
from perception.tasks.detection.config import DetectionConfig
from perception.tasks.detection.head import FCOSHead
from perception.tasks.detection.metric import DetectionMetric


def _as_tensor(x: Any, dtype: torch.dtype) -> Tensor:
    if isinstance(x, Tensor):
        return x.to(dtype)
    return torch.as_tensor(np.ascontiguousarray(x), dtype=dtype)


class DetectionTask(Task):
    """Objects as boxes: ``{"boxes": Tensor[N, 4] xyxy pixels, "labels": Tensor[N] int64}`` per image.

    Result (numpy, original image): ``boxes`` ndarray[N, 4] float32 xyxy, ``scores`` ndarray[N] float32
    (sqrt(class probability * centerness)), ``labels`` ndarray[N] int64, ``class_names`` list of N names; best
    first.
    """

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
    FIELDS = ("boxes", "scores", "labels", "class_names")
    OPTIONS = ("score_thresh",)

    # model.scale -> this type's head (docs/scales.md): light towers, P3..P5 at the small scales.
    SCALES = {
        "n": {"num_convs": 1, "tower": "dwsep", "max_stride": 32},
        "s": {"num_convs": 2, "tower": "dwsep", "max_stride": 32},
        "m": {"num_convs": 1, "tower": "dwsep", "max_stride": 32},
        "l": {"num_convs": 2, "tower": "dwsep", "max_stride": 32},
    }

    # -------------------------------------------------------------------------------------------------- data
    @classmethod
    def collate(cls, values: Sequence[Any | None], height: int, width: int) -> dict[str, list[Tensor]]:
        """Per-image ``boxes``/``labels`` (the training targets) and ``crowd_boxes``/``crowd_labels``: the boxes a
        sample flags as ``crowd``, split off here on the CPU so that no loss needs to know about them; only the
        metric sees them, as ignore regions."""
        out: dict[str, list[Tensor]] = {"boxes": [], "labels": [], "crowd_boxes": [], "crowd_labels": []}
        for value in values:
            value = value or {}
            boxes = _as_tensor(value.get("boxes", np.zeros((0, 4))), torch.float32).reshape(-1, 4)
            labels = _as_tensor(value.get("labels", np.zeros(0)), torch.int64).reshape(-1)
            crowd = (_as_tensor(value["crowd"], torch.bool).reshape(-1) if "crowd" in value
                     else torch.zeros(len(labels), dtype=torch.bool))
            if len(crowd) != len(labels):
                raise ValueError(f"collate: {len(labels)} boxes but {len(crowd)} crowd flags")
            out["boxes"].append(boxes[~crowd])
            out["labels"].append(labels[~crowd])
            out["crowd_boxes"].append(boxes[crowd])
            out["crowd_labels"].append(labels[crowd])
        return out

    # ------------------------------------------------------------------------------------------------- model
    def pyramid_strides(self) -> tuple[int, ...]:
        """P3 up to ``max_stride``: P3..P7 by default, P3..P5 for the light scales."""
        return tuple(s for s in PYRAMID_STRIDES[1:] if s <= self.cfg.max_stride)

    def build_head(self, in_channels: int, strides: Sequence[int]) -> nn.Module:
        d = self.cfg
        return FCOSHead(in_channels, d.num_classes, strides, d.num_convs, d.prior_prob, d.center_sampling_radius,
                        d.score_thresh, d.nms_thresh, d.topk_candidates, d.detections_per_img, d.focal_alpha,
                        d.focal_gamma, d.tower)

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
        metric.update(prediction, target["boxes"], target["labels"], has, target.get("crowd_boxes"),
                      target.get("crowd_labels"))

    # ------------------------------------------------------------------------------- inference and pictures
    def predict(self, head: nn.Module, output: dict, letterboxes: Sequence[Letterbox], **options: Any
                ) -> list[dict[str, Any]]:
        # Boxes are found at the network input (thresholds, NMS), then scaled to each image and clipped.
        detections = self.postprocess(head, output, letterboxes[0].padded_size, **options)
        return [self.to_numpy({**det, "boxes": boxes_to_original(det["boxes"].float(), box)})
                for det, box in zip(detections, letterboxes)]

    def to_numpy(self, prediction: Mapping[str, Tensor]) -> dict[str, Any]:
        labels = prediction["labels"].detach().cpu().numpy().astype(np.int64)
        return {"boxes": prediction["boxes"].detach().float().cpu().numpy().reshape(-1, 4),
                "scores": prediction["scores"].detach().float().cpu().numpy(),
                "labels": labels, "class_names": self._names(labels)}

    def _names(self, labels: np.ndarray) -> list[str]:
        names = self.class_names
        return [names[k] if 0 <= k < len(names) else f"class_{k}" for k in labels.tolist()]

    def export_outputs(self, head: nn.Module, output: dict) -> dict[str, Tensor]:
        # Every location's decoded box and per-class score, levels P3..P7 concatenated: [B, A, 4], [B, A, C].
        boxes = ltrb_to_boxes(output["points"].unsqueeze(0), output["box_regression"])
        scores = torch.sqrt(torch.sigmoid(output["cls_logits"]) * torch.sigmoid(output["centerness"]).unsqueeze(-1))
        return {"boxes": boxes, "scores": scores}

    def export_metadata(self, head: nn.Module) -> dict[str, Any]:
        return {"strides": [int(s) for s in head.strides]}

    def decode_numpy(self, outputs: Mapping[str, np.ndarray], letterbox: Letterbox,
                     score_thresh: float | None = None, strides: Sequence[int] = (8, 16, 32, 64, 128),
                     **options: Any) -> dict[str, Any]:
        d = self.cfg
        sizes = pyramid_sizes(letterbox.padded_height, letterbox.padded_width, strides)
        boxes, scores, labels = fcos_postprocess_numpy(
            outputs["boxes"], outputs["scores"], [h * w for h, w in sizes], letterbox.padded_size,
            d.score_thresh if score_thresh is None else score_thresh, d.nms_thresh, d.topk_candidates,
            d.detections_per_img)
        return {"boxes": boxes_to_original(boxes, letterbox), "scores": scores, "labels": labels,
                "class_names": self._names(labels)}

    def draw(self, image: np.ndarray, result: Mapping[str, Any], palette: np.ndarray | None = None,
             **options: Any) -> np.ndarray:
        return draw_detections(image, result["boxes"], result["labels"], result["scores"], result["class_names"],
                               palette)

    def record(self, result: Mapping[str, Any]) -> dict[str, Any]:
        """``detections`` in COCO result style: ``bbox`` [x, y, width, height], ``category_id`` (the class
        index), ``category_name``, ``score``; best first."""
        xywh = np.asarray(result["boxes"], np.float64).reshape(-1, 4).copy()
        xywh[:, 2:] -= xywh[:, :2]
        return {"detections": [
            {"bbox": [round(float(v), 2) for v in box], "category_id": int(label), "category_name": name,
             "score": round(float(score), 5)}
            for box, label, name, score in zip(xywh, result["labels"], result["class_names"], result["scores"])]}
