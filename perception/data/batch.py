"""The Sample and Batch contracts, and the collate function between them.

A **Sample** is a plain dict (see ``SAMPLE_KEYS``): ``image`` (H x W x 3 uint8 RGB); optional ``boxes``
(N x 4 float xyxy pixels) with ``labels`` (N int64) and optionally ``crowd`` (N bool: the box is a crowd / group
region, an ignore region of the metric and no training target), ``semantic`` (H x W int64, 255 = ignore), ``depth``
(H x W float32 metres, 0 = no measurement); and ``meta`` (path, dataset, original size, camera, ...). A task whose
labels the sample lacks is simply absent. After the transforms the same keys hold tensors: ``image`` becomes
Tensor[3, H, W] uint8.

A **Batch** holds the images and, for every task, the targets plus a boolean mask of which samples carry them.
Collate splits the crowd boxes off: ``Batch.boxes`` are the training targets, ``Batch.crowd_boxes`` only go to the
detection metric (as pycocotools' ``iscrowd`` regions), so no loss needs to know about them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

IGNORE_INDEX = 255
SAMPLE_KEYS = ("image", "boxes", "labels", "crowd", "semantic", "depth", "meta")
TASK_KEYS = {"detection": ("boxes", "labels"), "segmentation": ("semantic",), "depth": ("depth",)}
# Keys a task's labels may carry besides the required ones.
OPTIONAL_TASK_KEYS = {"detection": ("crowd",), "segmentation": (), "depth": ()}


def sample_tasks(sample: dict) -> list[str]:
    """The tasks whose labels ``sample`` carries."""
    return [task for task, keys in TASK_KEYS.items() if all(k in sample for k in keys)]


@dataclass
class Batch:
    """A collated batch.

    Attributes:
        images (Tensor[B, 3, H, W]): uint8 RGB, padded bottom/right to a common size.
        boxes: per image Tensor[N_i, 4] float32 xyxy pixels (empty where the image has no detection labels); the
            training targets, crowd regions excluded.
        labels: per image Tensor[N_i] int64.
        semantic (Tensor[B, H, W]): int64 class ids, 255 where unlabelled (all 255 for images without labels).
        depth (Tensor[B, H, W]): float32 metres, 0 where unmeasured (all 0 for images without depth).
        has: task -> Tensor[B] bool, which images carry that task's labels (always on the CPU, so that the
            trainer can read it without a device synchronisation).
        meta: per image dict (path, dataset, original size, ...).
        skipped: ``"path: reason"`` for every sample skipped under ``skip_bad`` while this batch was loaded (the
            trainer sums them over the epoch and reports them).
        crowd_boxes: per image Tensor[K_i, 4] float32 xyxy: crowd / group regions, which the detection metric
            ignores (a detection on one is neither a true nor a false positive); empty lists mean none.
        crowd_labels: per image Tensor[K_i] int64.
    """

    images: Tensor
    boxes: list[Tensor]
    labels: list[Tensor]
    semantic: Tensor
    depth: Tensor
    has: dict[str, Tensor]
    meta: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    crowd_boxes: list[Tensor] = field(default_factory=list)
    crowd_labels: list[Tensor] = field(default_factory=list)

    def __len__(self) -> int:
        return self.images.shape[0]

    def present(self) -> dict[str, bool]:
        """Task -> whether any image of the batch carries its labels (read on the CPU: no sync)."""
        return {task: bool(mask.any()) for task, mask in self.has.items()}

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        """A copy with every tensor but ``has`` on ``device``."""
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return Batch(move(self.images), [move(b) for b in self.boxes], [move(l) for l in self.labels],
                     move(self.semantic), move(self.depth), self.has, self.meta, self.skipped,
                     [move(b) for b in self.crowd_boxes], [move(l) for l in self.crowd_labels])

    def pin_memory(self) -> "Batch":
        """Page-locked copy, called by ``DataLoader(pin_memory=True)`` for faster non-blocking copies."""
        return Batch(self.images.pin_memory(), [b.pin_memory() for b in self.boxes],
                     [l.pin_memory() for l in self.labels], self.semantic.pin_memory(), self.depth.pin_memory(),
                     self.has, self.meta, self.skipped, [b.pin_memory() for b in self.crowd_boxes],
                     [l.pin_memory() for l in self.crowd_labels])


def _as_tensor(x: Any, dtype: torch.dtype) -> Tensor:
    if isinstance(x, Tensor):
        return x.to(dtype)
    return torch.as_tensor(np.ascontiguousarray(x), dtype=dtype)


def _image_tensor(image: Any) -> Tensor:
    """Tensor[3, H, W] uint8 from a CHW tensor or an HWC numpy array."""
    if isinstance(image, Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"collate: expected an image tensor of shape [3, H, W], got {tuple(image.shape)}")
        return image
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"collate: expected an image array of shape [H, W, 3], got {image.shape}")
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def collate(samples: Sequence[dict], size_divisor: int = 32) -> Batch:
    """Stack samples into a :class:`Batch`, padding bottom/right to a common size divisible by ``size_divisor``.

    Padding is 0 for images and depth (no measurement) and 255 for semantic labels (ignored), so it carries no
    loss. A sample without a task's labels gets an all-ignore target and ``has[task] = False``. Boxes flagged
    ``crowd`` go to ``crowd_boxes`` / ``crowd_labels`` (on the CPU, here, so that the training step needs no
    indexing by a mask on the device). The samples' ``skipped`` lists (bad samples replaced under ``skip_bad``)
    are concatenated into ``Batch.skipped``.
    """
    if not samples:
        raise ValueError("collate: got an empty list of samples")
    images = [_image_tensor(s["image"]) for s in samples]
    height = max(i.shape[1] for i in images)
    width = max(i.shape[2] for i in images)
    height = -(-height // size_divisor) * size_divisor
    width = -(-width // size_divisor) * size_divisor
    batch_size = len(samples)

    out_images = torch.zeros(batch_size, 3, height, width, dtype=torch.uint8)
    semantic = torch.full((batch_size, height, width), IGNORE_INDEX, dtype=torch.int64)
    depth = torch.zeros(batch_size, height, width, dtype=torch.float32)
    has = {task: torch.zeros(batch_size, dtype=torch.bool) for task in TASK_KEYS}
    boxes, labels, crowd_boxes, crowd_labels = [], [], [], []
    for i, (sample, image) in enumerate(zip(samples, images)):
        h, w = image.shape[1:]
        out_images[i, :, :h, :w] = image
        if "semantic" in sample:
            semantic[i, :h, :w] = _as_tensor(sample["semantic"], torch.int64)
            has["segmentation"][i] = True
        if "depth" in sample:
            depth[i, :h, :w] = _as_tensor(sample["depth"], torch.float32)
            has["depth"][i] = True
        sample_boxes = torch.zeros(0, 4, dtype=torch.float32)
        sample_labels = torch.zeros(0, dtype=torch.int64)
        if "boxes" in sample and "labels" in sample:
            sample_boxes = _as_tensor(sample["boxes"], torch.float32).reshape(-1, 4)
            sample_labels = _as_tensor(sample["labels"], torch.int64).reshape(-1)
            has["detection"][i] = True
        crowd = (_as_tensor(sample["crowd"], torch.bool).reshape(-1) if "crowd" in sample
                 else torch.zeros(len(sample_labels), dtype=torch.bool))
        if len(crowd) != len(sample_labels):
            raise ValueError(f"collate: {len(sample_labels)} boxes but {len(crowd)} crowd flags")
        boxes.append(sample_boxes[~crowd])
        labels.append(sample_labels[~crowd])
        crowd_boxes.append(sample_boxes[crowd])
        crowd_labels.append(sample_labels[crowd])
    meta = [dict(s.get("meta", {})) for s in samples]
    skipped = [reason for s in samples for reason in s.get("skipped", ())]
    return Batch(out_images, boxes, labels, semantic, depth, has, meta, skipped, crowd_boxes, crowd_labels)
