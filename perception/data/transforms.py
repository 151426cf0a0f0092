"""Joint augmentation of image, semantic mask, depth and boxes with one albumentations pipeline.

The same geometry is applied to every target: the image is resized with linear (or area) interpolation, masks and
depth with nearest neighbour so that no label or depth value is ever blended across an edge, boxes are transformed,
clipped and filtered by their remaining visibility. Regions that come from padding are ignored (semantic 255,
depth 0). Training: one resize (fit into ``image_size`` times a random zoom) -> random crop/pad to ``image_size``
-> flip -> colour.
When the image is zoomed by ``s`` its depth is divided by ``s`` (``augment.scale_depth``), as if the camera had
moved closer, so apparent size and depth stay consistent (MTAN's augmentation). Evaluation only fits the image into
``image_size`` keeping its aspect ratio; ``collate`` pads the batch to a multiple of 32 and ``restore_*`` map
predictions back to the original image.

Normalisation is not done here: the model takes 0..255 images and normalises inside (``TimmBackbone``), so the
transform outputs uint8 Tensor[3, H, W].
"""
from __future__ import annotations

from typing import Sequence

import albumentations as A
import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from perception.data.config import AugmentConfig


def fit_scale(height: int, width: int, image_size: Sequence[int]) -> float:
    """The scale that fits an ``height`` x ``width`` image inside ``image_size`` (H, W) keeping its aspect."""
    return min(image_size[0] / height, image_size[1] / width)


def fitted_size(height: int, width: int, image_size: Sequence[int]) -> tuple[int, int]:
    """(h, w) of the image after the evaluation resize (the same rounding as albumentations' LongestMaxSize)."""
    scale = fit_scale(height, width, image_size)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _encode_semantic(semantic: np.ndarray) -> np.ndarray:
    # albumentations pads and fills every mask with one value (0); shifting ids by one makes that value "ignore"
    # for the semantic mask while it means "no measurement" for depth.
    return ((semantic.astype(np.int64) + 1) % 256).astype(np.uint8)


def _decode_semantic(encoded: np.ndarray) -> np.ndarray:
    return (encoded.astype(np.int64) - 1) % 256


class JointTransform:
    """One pipeline for image, semantic, depth and boxes.

    Args:
        image_size: (H, W) of training crops; evaluation images are fitted inside it.
        train: random augmentation (``True``) or the deterministic evaluation resize.
        augment: augmentation settings (training only).
    """

    def __init__(self, image_size: Sequence[int], train: bool, augment: AugmentConfig | None = None) -> None:
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.train = train
        self.augment = augment or AugmentConfig()
        self.compose = A.Compose(
            self._transforms(),  # the training zoom happens before, in ``resize_sample``
            bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels", "crowd"], clip=True,
                                     filter_invalid_bboxes=True, min_visibility=self.augment.min_visibility if train
                                     else 0.0, min_width=self.augment.min_box_size if train else 0.0,
                                     min_height=self.augment.min_box_size if train else 0.0),
            additional_targets={"depth": "mask"}, save_applied_params=True, seed=0)

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
            sample: ``image`` HxWx3 uint8 and any of ``semantic``, ``depth``, ``boxes`` + ``labels`` (+ ``crowd``),
                ``meta``.
            seed: makes the random choices a function of the seed (the training sampler passes one per sample,
                so a resumed run repeats its augmentation exactly).

        Returns:
            The same keys with ``image`` Tensor[3, H, W] uint8, ``semantic`` Tensor[H, W] int64, ``depth``
            Tensor[H, W] float32, ``boxes`` Tensor[N, 4] float32, ``labels`` Tensor[N] int64, ``crowd`` Tensor[N]
            bool (the boxes that survive keep their flags); ``meta`` gains
            ``orig_size``, ``input_size`` (the size before batch padding; also as ``image_size``), ``scale`` (the
            fit scale), and for training ``zoom`` and ``flipped``. ``meta["camera"]`` still describes the original
            image.
        """
        rng = np.random.default_rng(seed)
        self.compose.set_random_seed(int(rng.integers(2**31 - 1)))
        image = sample["image"]
        height, width = image.shape[:2]
        inputs = {"image": image}
        if "semantic" in sample:
            inputs["mask"] = _encode_semantic(sample["semantic"])
        if "depth" in sample:
            inputs["depth"] = np.ascontiguousarray(sample["depth"], dtype=np.float32)
        has_boxes = "boxes" in sample
        boxes = np.asarray(sample.get("boxes", np.zeros((0, 4))), np.float32).reshape(-1, 4)
        inputs["bboxes"] = boxes
        inputs["labels"] = np.asarray(sample.get("labels", np.zeros(0)), np.int64).reshape(-1)
        has_crowd = "crowd" in sample
        inputs["crowd"] = (np.asarray(sample["crowd"], bool).reshape(-1) if has_crowd
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
        meta.update(orig_size=(height, width), input_size=input_size, image_size=input_size,
                    scale=fit_scale(height, width, self.image_size))
        if self.train:
            meta.update(zoom=zoom, flipped="HorizontalFlip" in params)
        result = {"image": torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1))), "meta": meta}
        if "mask" in out:
            result["semantic"] = torch.from_numpy(_decode_semantic(out["mask"]))
        if "depth" in out:
            depth = out["depth"]
            if self.augment.scale_depth and zoom != 1.0:
                depth = depth / np.float32(zoom)
            result["depth"] = torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32))
        if has_boxes:
            result["boxes"] = torch.as_tensor(np.asarray(out["bboxes"], np.float32).reshape(-1, 4))
            result["labels"] = torch.as_tensor(np.asarray(out["labels"], np.int64).reshape(-1))
            if has_crowd:
                result["crowd"] = torch.as_tensor(np.asarray(out["crowd"], bool).reshape(-1))
        if "skipped" in sample:
            result["skipped"] = sample["skipped"]
        return result


def resize_sample(inputs: dict, height: int, width: int) -> dict:
    """Resize the albumentations inputs (``image``, ``mask``, ``depth``, ``bboxes``) to ``height`` x ``width``.

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
    for key in ("mask", "depth"):
        if key in inputs:
            out[key] = cv2.resize(inputs[key], (width, height), interpolation=cv2.INTER_NEAREST_EXACT)
    out["bboxes"] = inputs["bboxes"] * np.array([width / w, height / h, width / w, height / h], np.float32)
    return out


def restore_semantic(pred: Tensor, input_size: Sequence[int], orig_size: Sequence[int]) -> Tensor:
    """Class ids at the network input -> the original image: remove padding, nearest resize.

    Args:
        pred (Tensor[H_pad, W_pad]): class ids of one image of the padded batch.
        input_size: (h, w) of the image inside the padding (``meta["input_size"]``).
        orig_size: (H, W) of the original image (``meta["orig_size"]``).
    """
    h, w = input_size
    crop = pred[:h, :w].float()[None, None]
    return F.interpolate(crop, size=tuple(orig_size), mode="nearest-exact")[0, 0].to(pred.dtype)


def restore_depth(pred: Tensor, input_size: Sequence[int], orig_size: Sequence[int],
                  mode: str = "bilinear") -> Tensor:
    """Depth at the network input -> the original image (metres are unchanged by a resolution change).

    Args:
        pred (Tensor[H_pad, W_pad]): depth in metres.
        input_size: (h, w) inside the padding.
        orig_size: (H, W) of the original image.
        mode: ``bilinear`` (smooth predictions) or ``nearest-exact``.
    """
    h, w = input_size
    crop = pred[:h, :w].float()[None, None]
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(crop, size=tuple(orig_size), mode=mode, **kwargs)[0, 0]


def restore_boxes(boxes: Tensor, input_size: Sequence[int], orig_size: Sequence[int]) -> Tensor:
    """xyxy boxes at the network input -> original pixels (per-axis scale, clipped to the image).

    Args:
        boxes (Tensor[N, 4]): xyxy at the network input.
        input_size: (h, w) inside the padding.
        orig_size: (H, W) of the original image.
    """
    h, w = input_size
    height, width = orig_size
    scale = boxes.new_tensor([width / w, height / h, width / w, height / h])
    out = boxes * scale
    out[:, 0::2] = out[:, 0::2].clamp(0, width)
    out[:, 1::2] = out[:, 1::2].clamp(0, height)
    return out


def restore_prediction(prediction: dict, meta: dict) -> dict:
    """One image's post-processed prediction (``MultiTaskModel.postprocess`` at the padded batch size) mapped
    back to the original image, using the ``meta`` the evaluation transform recorded.

    Args:
        prediction: any of ``detection`` ({boxes, scores, labels}), ``segmentation`` (Tensor[H, W]), ``depth``
            (Tensor[H, W]).
        meta: the sample's meta with ``input_size`` and ``orig_size``.
    """
    out = {}
    input_size, orig_size = meta["input_size"], meta["orig_size"]
    if "detection" in prediction:
        det = dict(prediction["detection"])
        det["boxes"] = restore_boxes(det["boxes"], input_size, orig_size)
        out["detection"] = det
    if "segmentation" in prediction:
        out["segmentation"] = restore_semantic(prediction["segmentation"], input_size, orig_size)
    if "depth" in prediction:
        out["depth"] = restore_depth(prediction["depth"], input_size, orig_size)
    return out

