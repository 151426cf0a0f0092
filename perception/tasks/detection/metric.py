"""Detection metrics: COCO mAP computed by pycocotools on the dataset's own boxes.

Ground truth and predictions are turned into in-memory COCO structures (xywh boxes, category id = label + 1,
image ids 1..N) and evaluated by ``pycocotools.cocoeval.COCOeval`` with its standard settings: AP averaged over
IoU 0.50:0.95, AP50, AP75, AP for small/medium/large boxes (areas below 32^2, up to 96^2, above, in the frame
the boxes are given in) and per-class AP, all as fractions in [0, 1]. A class without ground-truth boxes has no
AP and is left out of the mean (and of the per-class keys). ``recall`` is COCOeval's recall at IoU 0.5 with up to
100 detections per image over all areas, averaged over the classes with ground truth (the share of boxes found by
some detection of any score; the detection recall YOLOP and HybridNets report is computed at IoU 0.5 too, by
their own code at their score threshold, so compare with care).

Crowd (group) regions enter the ground truth with ``iscrowd = 1``, as in COCO's own files: COCOeval matches them
by the share of the detection inside them and ignores a detection it matches to one (neither a true nor a false
positive), so a detector is not punished for finding objects in a crowd. Dropping them instead would count every
such detection as a false positive.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from typing import Sequence

import numpy as np
from torch import Tensor

from perception.utils.distributed import gather_objects

# Keys of COCOeval.stats[0:6] (the box AP entries).
COCO_AP_KEYS = ("mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large")


def _xywh(boxes: np.ndarray) -> np.ndarray:
    out = boxes.astype(np.float64).copy()
    out[:, 2:] -= out[:, :2]
    return out


GroundTruth = tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]


def coco_structures(gts: Sequence[GroundTruth], preds: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
                    num_classes: int) -> tuple[dict, list[dict]]:
    """COCO ground-truth dataset dict and detection list.

    Args:
        gts: per image (boxes float[N, 4] xyxy, labels int[N]) or (boxes, labels, crowd bool[N]); a crowd box
            becomes an ``iscrowd = 1`` annotation.
        preds: per image (boxes float[D, 4] xyxy, scores float[D], labels int[D]).
        num_classes: number of classes (labels 0..C-1).
    """
    images, annotations, detections = [], [], []
    for image_id, (gt, (boxes, scores, labels)) in enumerate(zip(gts, preds), start=1):
        images.append({"id": image_id})
        gt_boxes, gt_labels = gt[0].reshape(-1, 4), gt[1].reshape(-1)
        gt_crowd = gt[2].reshape(-1) if len(gt) > 2 else np.zeros(len(gt_labels), bool)
        for box, label, crowd in zip(_xywh(gt_boxes), gt_labels, gt_crowd):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label) + 1,
                                "bbox": box.tolist(), "area": float(box[2] * box[3]), "iscrowd": int(bool(crowd))})
        for box, score, label in zip(_xywh(boxes.reshape(-1, 4)), scores.reshape(-1), labels.reshape(-1)):
            detections.append({"image_id": image_id, "category_id": int(label) + 1, "bbox": box.tolist(),
                               "score": float(score)})
    categories = [{"id": c + 1, "name": str(c)} for c in range(num_classes)]
    return {"images": images, "annotations": annotations, "categories": categories}, detections


def coco_evaluate(gts: Sequence[GroundTruth], preds: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
                  num_classes: int) -> tuple[dict[str, float], dict[int, float]]:
    """Run COCOeval (bbox).

    Args:
        gts, preds, num_classes: as in :func:`coco_structures`.

    Returns:
        the AP entries of ``COCO_AP_KEYS`` (those that are defined) and label -> AP for the classes with
        (non-crowd) ground truth.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    dataset, detections = coco_structures(gts, preds, num_classes)
    # A class with crowd regions only has nothing to find: COCOeval gives it no AP either.
    classes_with_gt = sorted({a["category_id"] - 1 for a in dataset["annotations"] if not a["iscrowd"]})
    if not classes_with_gt:
        return {}, {}
    if not detections:  # pycocotools cannot load an empty result list; nothing detected means AP 0
        return {**{k: 0.0 for k in COCO_AP_KEYS[:3]}, "recall": 0.0}, {c: 0.0 for c in classes_with_gt}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(detections)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    summary = {k: float(v) for k, v in zip(COCO_AP_KEYS, evaluator.stats[:6]) if v > -1}
    # recall: [IoU thresholds, classes, areas, maxDets]; IoU 0.5 is the first threshold, area "all", 100 dets.
    recall = evaluator.eval["recall"][list(evaluator.params.iouThrs).index(0.5), :, 0, -1]
    if (recall > -1).any():
        summary["recall"] = float(recall[recall > -1].mean())
    precision = evaluator.eval["precision"]            # [IoU thresholds, recall points, classes, areas, maxDets]
    per_class = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        p = precision[:, :, k, 0, -1]
        if (p > -1).any():
            per_class[cat_id - 1] = float(p[p > -1].mean())
    return summary, per_class


class DetectionMetric:
    """Collects boxes over a split (moved to the host per batch) and evaluates them with pycocotools.

    Args:
        num_classes: number of classes.
        class_names: one name per class (for the per-class keys).
    """

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None) -> None:
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)]
        self.gts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.preds: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def update(self, preds: Sequence[dict[str, Tensor]], gt_boxes: Sequence[Tensor], gt_labels: Sequence[Tensor],
               has: Tensor | None = None, crowd_boxes: Sequence[Tensor] | None = None,
               crowd_labels: Sequence[Tensor] | None = None) -> None:
        """Add a batch.

        Args:
            preds: per image ``{"boxes": Tensor[D, 4] xyxy, "scores": Tensor[D], "labels": Tensor[D]}``.
            gt_boxes: per image Tensor[N, 4] xyxy in the same frame.
            gt_labels: per image Tensor[N].
            has (Tensor[B]): bool, which images carry detection labels (others are skipped).
            crowd_boxes: per image Tensor[K, 4] xyxy crowd regions (ignored by the matching; see the module
                docstring); ``None`` or an empty list: none.
            crowd_labels: per image Tensor[K].
        """
        for i, (pred, boxes, labels) in enumerate(zip(preds, gt_boxes, gt_labels)):
            if has is not None and not bool(has[i]):
                continue
            boxes = boxes.detach().cpu().numpy().reshape(-1, 4)
            labels = labels.detach().cpu().numpy().reshape(-1)
            crowd = np.zeros(len(labels), bool)
            if crowd_boxes:
                extra_boxes = crowd_boxes[i].detach().cpu().numpy().reshape(-1, 4)
                boxes = np.concatenate([boxes, extra_boxes])
                labels = np.concatenate([labels, crowd_labels[i].detach().cpu().numpy().reshape(-1)])
                crowd = np.r_[crowd, np.ones(len(extra_boxes), bool)]
            self.gts.append((boxes, labels, crowd))
            self.preds.append((pred["boxes"].detach().float().cpu().numpy().reshape(-1, 4),
                               pred["scores"].detach().float().cpu().numpy(),
                               pred["labels"].detach().cpu().numpy()))

    def reduce(self) -> None:
        """Gather every process's images (in rank order) on every process."""
        gathered = gather_objects((self.gts, self.preds))
        if len(gathered) > 1:
            self.gts = [g for gts, _ in gathered for g in gts]
            self.preds = [p for _, preds in gathered for p in preds]

    def compute(self, prefix: str = "detection/") -> dict[str, float]:
        """``mAP``, ``mAP50``, ``mAP75``, ``mAP_small/medium/large``, ``recall`` (IoU 0.5, 100 detections per
        image) and ``AP/<class>``."""
        summary, per_class = coco_evaluate(self.gts, self.preds, self.num_classes)
        if not summary:
            warnings.warn("detection metric: the evaluated images hold no ground-truth boxes; mAP is reported as 0",
                          stacklevel=2)
            summary = {**{k: 0.0 for k in COCO_AP_KEYS[:3]}, "recall": 0.0}
        out = {f"{prefix}{k}": v for k, v in summary.items()}
        out.update({f"{prefix}AP/{self.class_names[c]}": ap for c, ap in sorted(per_class.items())})
        return out

