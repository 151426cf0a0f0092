"""Post-processing of the exported network's raw outputs in plain numpy (the reference for ONNX callers).

The ONNX graph (``perception.inference.export``) ends at the heads' decoded tensors: ``detection_boxes``
(xyxy per location, network pixels), ``detection_scores`` (sqrt(class probability * centerness) per location and
class), ``segmentation`` (logits at 1/4 scale) and ``depth`` (metres at 1/4 scale). What follows here is what
``FCOSHead.postprocess`` and the predictor do with torchvision: per pyramid level threshold and top-k, clip,
class-wise NMS, keep the best; then map everything back to the original image (``geometry``).

    outputs = dict(zip(names, session.run(None, {"images": batch})))
    pred = postprocess_numpy({k: v[0] for k, v in outputs.items()}, letterbox, strides=(8, 16, 32, 64, 128))
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from perception.ops.geometry import Letterbox, boxes_to_original, dense_to_original_numpy
from perception.inference.prediction import Prediction


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


def postprocess_numpy(outputs: Mapping[str, np.ndarray], letterbox: Letterbox,
                      strides: Sequence[int] = (8, 16, 32, 64, 128), detection_classes: Sequence[str] = (),
                      segmentation_classes: Sequence[str] = (), **detection_options) -> Prediction:
    """A :class:`Prediction` at the original image's size from one image's exported outputs.

    Args:
        outputs: one image's slice of the ONNX outputs (``detection_boxes`` [A, 4], ``detection_scores`` [A, C],
            ``segmentation`` [K, h, w], ``depth`` [1, h, w]); absent tasks are skipped.
        letterbox: how the image was fitted into the network input (``geometry.letterbox_image``).
        strides: the detection levels' strides.
        detection_options: ``score_thresh``, ``nms_thresh``, ``topk_candidates``, ``detections_per_img``.
    """
    pred = Prediction(letterbox.height, letterbox.width)
    if "detection_boxes" in outputs:
        sizes = pyramid_sizes(letterbox.padded_height, letterbox.padded_width, strides)
        boxes, scores, labels = fcos_postprocess_numpy(outputs["detection_boxes"], outputs["detection_scores"],
                                                       [h * w for h, w in sizes], letterbox.padded_size,
                                                       **detection_options)
        pred.boxes = boxes_to_original(boxes, letterbox)
        pred.scores, pred.labels = scores, labels
        pred.class_names = [detection_classes[k] if k < len(detection_classes) else f"class_{k}" for k in labels]
    if "segmentation" in outputs:
        logits = dense_to_original_numpy(outputs["segmentation"], letterbox)
        pred.semantic = logits.argmax(0).astype(np.uint8 if logits.shape[0] <= 256 else np.int32)
        pred.semantic_names = list(segmentation_classes) or [f"class_{k}" for k in range(logits.shape[0])]
    if "depth" in outputs:
        # Resized in log space, as the predictor resizes the head's log-depth: sharp depth edges stay sharp.
        log_depth = np.log(np.maximum(outputs["depth"], 1e-6))
        pred.depth = np.exp(dense_to_original_numpy(log_depth, letterbox)[0]).astype(np.float32)
    return pred
