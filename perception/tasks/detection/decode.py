"""Detection post-processing of the exported graph's outputs in plain numpy (the reference for ONNX callers).

The graph ends at ``boxes`` (xyxy per location, network pixels; decoded with :func:`perception.ops.boxes.ltrb_to_boxes`)
and ``scores`` (sqrt(class probability * centerness) per location and class). What follows is what
``FCOSHead.postprocess`` does with torchvision: per pyramid level threshold and top-k, clip, class-wise NMS, keep
the best. The kept indices equal ``torchvision.ops.batched_nms``'s.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pyramid_sizes(height: int, width: int, strides: Sequence[int] = (8, 16, 32, 64, 128)) -> list[tuple[int, int]]:
    """(h, w) of each detection level for a padded input of ``height x width`` (multiples of 32).

    Levels up to stride 32 divide the input exactly; P6 and P7 come from 3x3 stride-2 convolutions with padding
    1, so each halves the previous level rounding up.
    """
    sizes = []
    for stride in strides:
        if stride <= 32:
            sizes.append((height // stride, width // stride))
        else:
            h, w = sizes[-1]
            sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes


def box_iou_numpy(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box (ndarray[4]) with each of ``boxes`` (ndarray[N, 4]), xyxy."""
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def nms_numpy(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS (torchvision.ops.nms semantics: drop boxes with IoU > threshold); indices by falling score."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        best = order[0]
        keep.append(best)
        if order.size == 1:
            break
        rest = order[1:]
        order = rest[box_iou_numpy(boxes[best], boxes[rest]) <= iou_threshold]
    return np.asarray(keep, np.int64)


def batched_nms_numpy(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float
                      ) -> np.ndarray:
    """Class-wise NMS, as torchvision's ``batched_nms``: boxes of different classes never suppress each other."""
    if boxes.size == 0:
        return np.zeros(0, np.int64)
    # The coordinate trick: shift each class to its own region so that one NMS pass never mixes classes.
    offsets = labels.astype(np.float64)[:, None] * (float(boxes.max()) + 1.0)
    return nms_numpy(boxes.astype(np.float64) + offsets, scores, iou_threshold)


def fcos_postprocess_numpy(boxes: np.ndarray, scores: np.ndarray, num_per_level: Sequence[int],
                           image_size: tuple[int, int], score_thresh: float = 0.2, nms_thresh: float = 0.6,
                           topk_candidates: int = 1000, detections_per_img: int = 100
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detections of one image from the decoded head outputs.

    Args:
        boxes (ndarray[A, 4]): decoded xyxy box of every location (levels concatenated), network pixels.
        scores (ndarray[A, C]): score of every location and class.
        num_per_level: locations per level (from :func:`pyramid_sizes`).
        image_size: (H, W) of the network input, to clip to.
        score_thresh, nms_thresh, topk_candidates, detections_per_img: as ``FCOSHead``.

    Returns:
        boxes (ndarray[N, 4] float32), scores (ndarray[N] float32), labels (ndarray[N] int64), best first.
    """
    if sum(num_per_level) != len(boxes):
        raise ValueError(f"num_per_level sums to {sum(num_per_level)} but there are {len(boxes)} locations; "
                         "the input size or the strides do not match the exported network")
    num_classes = scores.shape[1]
    kept_boxes, kept_scores, kept_labels = [], [], []
    start = 0
    for n in num_per_level:
        flat = scores[start:start + n].reshape(-1)
        keep = np.flatnonzero(flat > score_thresh)
        if len(keep) > topk_candidates:
            order = np.argsort(-flat[keep], kind="stable")[:topk_candidates]
            keep = keep[order]
        kept_scores.append(flat[keep])
        kept_boxes.append(boxes[start:start + n][keep // num_classes])
        kept_labels.append(keep % num_classes)
        start += n
    out_boxes = np.concatenate(kept_boxes).astype(np.float32)
    out_boxes[:, 0::2] = out_boxes[:, 0::2].clip(0, image_size[1])
    out_boxes[:, 1::2] = out_boxes[:, 1::2].clip(0, image_size[0])
    out_scores = np.concatenate(kept_scores).astype(np.float32)
    out_labels = np.concatenate(kept_labels).astype(np.int64)
    keep = batched_nms_numpy(out_boxes, out_scores, out_labels, nms_thresh)[:detections_per_img]
    return out_boxes[keep], out_scores[keep], out_labels[keep]
