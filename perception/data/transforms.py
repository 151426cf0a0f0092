"""Joint augmentation of the image and every label with one albumentations pipeline.

The same geometry is applied to every target: the image is resized with linear (or area) interpolation, dense
labels (class ids, depth, normals, ...) with nearest neighbour so that no label or depth value is ever blended
across an edge, boxes are transformed, clipped and filtered by their remaining visibility. Each label's task type
says how its target is encoded for the pipeline and decoded after it (:meth:`perception.tasks.Task.encode_dense`
and ``decode_dense``): regions that come from padding carry "no label" (class 255, depth 0, normal 0); when the
image is zoomed by ``s`` its depth is divided by ``s`` (``augment.scale_depth``), as if the camera had moved closer
(MTAN's augmentation); a mirrored image mirrors its normals. Training: one resize (fit into ``image_size`` times a
random zoom) -> random crop/pad to ``image_size`` -> flip -> colour. Evaluation only fits the image into
``image_size`` keeping its aspect ratio; ``collate`` pads the batch to a multiple of 32 and
:mod:`perception.ops.geometry` maps predictions back to the original image.

Normalisation is not done here: the model takes 0..255 images and normalises inside (``TimmBackbone``), so the
transform outputs uint8 Tensor[3, H, W].
"""
from __future__ import annotations

from typing import Sequence

import albumentations as A
import cv2
import numpy as np
import torch

from perception.data.batch import LABEL_KEYS, label_type, label_types, sample_keys, sample_value
from perception.data.config import AugmentConfig
from perception.tasks import TASK_TYPES


def fit_scale(height: int, width: int, image_size: Sequence[int]) -> float:
    """The scale that fits an ``height`` x ``width`` image inside ``image_size`` (H, W) keeping its aspect."""
    return min(image_size[0] / height, image_size[1] / width)


def fitted_size(height: int, width: int, image_size: Sequence[int]) -> tuple[int, int]:
    """(h, w) of the image after the evaluation resize (the same rounding as albumentations' LongestMaxSize)."""
    scale = fit_scale(height, width, image_size)
    return max(1, round(height * scale)), max(1, round(width * scale))


class JointTransform:
    """One pipeline for the image and its labels.

    Args:
        image_size: (H, W) of training crops; evaluation images are fitted inside it.
        train: random augmentation (``True``) or the deterministic evaluation resize.
        augment: augmentation settings (training only).
        labels: the labels to transform (default: every registered label); others are dropped. At most one of
            them may be of a box type.
    """

    def __init__(self, image_size: Sequence[int], train: bool, augment: AugmentConfig | None = None,
                 labels: Sequence[str] | None = None) -> None:
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.train = train
        self.augment = augment or AugmentConfig()
        self.types = label_types(labels) if labels is not None else {
            label: label_type(label) for label, (type_name, _) in LABEL_KEYS.items() if type_name in TASK_TYPES}
        boxes = [label for label, cls in self.types.items() if cls.KIND == "boxes"]
        if len(boxes) > 1:
            raise ValueError(f"JointTransform: labels {boxes} are all boxes; one box label per sample is supported")
        self.box_label = boxes[0] if boxes else None
        self.dense = {label: f"dense_{label}" for label, cls in self.types.items() if cls.KIND == "dense"}
        self.compose = A.Compose(
            self._transforms(),  # the training zoom happens before, in ``resize_sample``
            bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels", "crowd"], clip=True,
                                     filter_invalid_bboxes=True, min_visibility=self.augment.min_visibility if train
                                     else 0.0, min_width=self.augment.min_box_size if train else 0.0,
                                     min_height=self.augment.min_box_size if train else 0.0),
            additional_targets={key: "mask" for key in self.dense.values()}, save_applied_params=True, seed=0)

    def _transforms(self) -> list:
        height, width = self.image_size
        if not self.train:
            return [A.LongestMaxSize(max_size_hw=(height, width), interpolation=cv2.INTER_LINEAR,
                                     mask_interpolation=cv2.INTER_NEAREST_EXACT, area_for_downscale="image", p=1.0)]
        aug = self.augment
        # The fit and the random zoom are one resize done before the pipeline (see ``resize_sample``): resizing
        # twice would compound the nearest-neighbour rounding of the masks (and cost a second pass).
        out = [A.RandomCrop(height, width, pad_if_needed=True, pad_position="random",
                            border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=1.0)]
        if aug.hflip > 0:
            out.append(A.HorizontalFlip(p=aug.hflip))
        if aug.color_p > 0:
            out.append(A.ColorJitter(brightness=aug.brightness, contrast=aug.contrast, saturation=aug.saturation,
                                     hue=aug.hue, p=aug.color_p))
        if aug.blur_p > 0:
            out.append(A.GaussianBlur(blur_limit=(3, 5), p=aug.blur_p))
        if aug.noise_p > 0:
            out.append(A.GaussNoise(std_range=(0.01, 0.04), p=aug.noise_p))
        return out

    def __call__(self, sample: dict, seed: int | None = None) -> dict:
        """Transform a raw sample (numpy, original size) into tensors at the network's size.

        Args:
            sample: ``image`` HxWx3 uint8 and any of ``semantic``, ``depth``, ``boxes`` + ``labels``, ``meta``.
            seed: makes the random choices a function of the seed (the training sampler passes one per sample,
                so a resumed run repeats its augmentation exactly).

        Returns:
            The same keys with ``image`` Tensor[3, H, W] uint8, ``semantic`` Tensor[H, W] int64, ``depth``
            Tensor[H, W] float32, ``boxes`` Tensor[N, 4] float32, ``labels`` Tensor[N] int64; ``meta`` gains
            ``orig_size``, ``input_size`` (the size before batch padding; also as ``image_size``), ``scale`` (the
            fit scale), and for training ``zoom`` and ``flipped``. ``meta["camera"]`` still describes the original
            image.
        """
        rng = np.random.default_rng(seed)
        self.compose.set_random_seed(int(rng.integers(2**31 - 1)))
        image = sample["image"]
        height, width = image.shape[:2]
        inputs = {"image": image}
        for label, key in self.dense.items():
            value = sample_value(sample, label)
            if value is not None:
                inputs[key] = self.types[label].encode_dense(value)
        box_value = sample_value(sample, self.box_label) if self.box_label else None
        boxes = np.asarray(box_value["boxes"] if box_value else np.zeros((0, 4)), np.float32).reshape(-1, 4)
        inputs["bboxes"] = boxes
        inputs["labels"] = np.asarray(box_value["labels"] if box_value else np.zeros(0), np.int64).reshape(-1)
        has_crowd = bool(box_value) and "crowd" in box_value
        inputs["crowd"] = (np.asarray(box_value["crowd"], bool).reshape(-1) if has_crowd
                           else np.zeros(len(inputs["labels"]), bool))
        zoom = 1.0
        if self.train:
            low, high = self.augment.scale
            zoom = float(rng.uniform(low, high)) if high > low else float(low)
            scale = fit_scale(height, width, self.image_size) * zoom
            inputs = resize_sample(inputs, max(1, round(height * scale)), max(1, round(width * scale)))
        out = self.compose(**inputs)

        params = dict(out["applied_transforms"])
        meta = dict(sample.get("meta", {}))
        input_size = tuple(out["image"].shape[:2])
        flipped = self.train and "HorizontalFlip" in params
        meta.update(orig_size=(height, width), input_size=input_size, image_size=input_size,
                    scale=fit_scale(height, width, self.image_size))
        if self.train:
            meta.update(zoom=zoom, flipped=flipped)
        result = {"image": torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1))), "meta": meta}
        target_zoom = zoom if self.augment.scale_depth else 1.0
        for label, key in self.dense.items():
            if key in out:
                _set_value(result, label, self.types[label].decode_dense(out[key], target_zoom, flipped))
        if box_value is not None:
            boxes_out = {"boxes": torch.as_tensor(np.asarray(out["bboxes"], np.float32).reshape(-1, 4)),
                         "labels": torch.as_tensor(np.asarray(out["labels"], np.int64).reshape(-1))}
            if has_crowd:
                boxes_out["crowd"] = torch.as_tensor(np.asarray(out["crowd"], bool).reshape(-1))
            _set_value(result, self.box_label, boxes_out)
        if "skipped" in sample:
            result["skipped"] = sample["skipped"]
        return result


def _set_value(sample: dict, label: str, value) -> None:
    """Store ``label``'s target under its Sample keys (the inverse of ``sample_value``)."""
    keys = sample_keys(label, optional=True)
    if isinstance(value, dict):
        sample.update({k: value[k] for k in keys if k in value})
    else:
        sample[keys[0]] = value


def resize_sample(inputs: dict, height: int, width: int) -> dict:
    """Resize the albumentations inputs (``image``, the ``dense_*`` labels, ``bboxes``) to ``height`` x ``width``.

    The image uses area averaging when shrinking and bilinear otherwise; masks and depth use pixel-centre nearest
    neighbour (``INTER_NEAREST_EXACT``), so no class or depth is blended across an edge and a mask's edges stay
    within half a pixel of the scaled boxes.
    """
    h, w = inputs["image"].shape[:2]
    if (h, w) == (height, width):
        return inputs
    out = dict(inputs)
    shrink = height * width < h * w
    out["image"] = cv2.resize(inputs["image"], (width, height),
                              interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    for key, value in inputs.items():
        if key.startswith("dense_"):
            out[key] = cv2.resize(value, (width, height), interpolation=cv2.INTER_NEAREST_EXACT)
    out["bboxes"] = inputs["bboxes"] * np.array([width / w, height / h, width / w, height / h], np.float32)
    return out
