"""The Sample and Batch contracts, and the collate function between them.

A **Sample** is a plain dict: ``image`` (H x W x 3 uint8 RGB), the labels it carries, and ``meta`` (path,
dataset, original size, camera, ...). Labels are named (``LABEL_KEYS``): each has a task type, which says what
the target is and how it is augmented and batched, and the Sample keys that hold it: ``detection`` is ``boxes``
(N x 4 float xyxy pixels) + ``labels`` (N int64), ``segmentation`` is ``semantic`` (H x W int64, 255 = ignore),
``depth`` is ``depth`` (H x W float32 metres, 0 = no measurement), ``normals`` is ``normals`` (H x W x 3 float32
unit vectors, 0 = invalid). A label the sample lacks is simply absent. A dataset with labels of its own (a second
segmentation such as drivable area) registers them with :func:`register_label`. After the transforms the same
keys hold tensors: ``image`` becomes Tensor[3, H, W] uint8.

A **Batch** holds the images and, per label, the batched targets (each task type's own form) plus a boolean mask
of which samples carry them. A task reads ``batch.targets[task.label]`` and ``batch.has[task.label]``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from perception.tasks import TASK_TYPES, Task
from perception.tasks.common import IGNORE_INDEX

# label -> (task type, the Sample keys that hold it).
LABEL_KEYS: dict[str, tuple[str, tuple[str, ...]]] = {
    "detection": ("detection", ("boxes", "labels")),
    "segmentation": ("segmentation", ("semantic",)),
    "depth": ("depth", ("depth",)),
    "normals": ("normals", ("normals",)),
    # Driving labels of their own beside the semantics (synthetic scenes, BDD100K): drivable area in BDD100K's
    # codes (0 direct, 1 alternative, 2 background) and lane markings (0 background, 1 lane). Built in rather than
    # registered by their datasets, so that a config naming them is checked before any dataset is imported.
    "drivable": ("segmentation", ("drivable",)),
    "lanes": ("segmentation", ("lanes",)),
}
# label -> Sample keys that may come with it (detection: ``crowd``, one bool per box, a crowd / group region that
# evaluation ignores as pycocotools' ``iscrowd`` and training leaves out).
OPTIONAL_KEYS: dict[str, tuple[str, ...]] = {"detection": ("crowd",)}

__all__ = ["IGNORE_INDEX", "LABEL_KEYS", "OPTIONAL_KEYS", "Batch", "collate", "label_types", "register_label", "sample_labels",
           "sample_value"]


def register_label(label: str, type_name: str, keys: Sequence[str] | None = None) -> None:
    """Declare a label that datasets produce: its task type and the Sample keys that hold it (default: a key
    named like the label)."""
    if type_name not in TASK_TYPES:
        raise ValueError(f"label {label!r}: unknown task type {type_name!r}; registered: {', '.join(TASK_TYPES)}")
    keys = tuple(keys or (label,))
    known = LABEL_KEYS.get(label)
    if known is not None and known != (type_name, keys):
        raise ValueError(f"label {label!r} is already registered as {known}")
    LABEL_KEYS[label] = (type_name, keys)


def label_type(label: str) -> type[Task]:
    """The task type of ``label``; ``ValueError`` for a label no dataset produces."""
    if label not in LABEL_KEYS:
        raise ValueError(f"unknown label {label!r}; datasets produce {', '.join(LABEL_KEYS)}")
    return TASK_TYPES[LABEL_KEYS[label][0]]


def label_types(labels: Sequence[str] | Mapping[str, Any] | None = None) -> dict[str, type[Task]]:
    """label -> task type, for ``labels`` (default: every registered label)."""
    return {label: label_type(label) for label in (LABEL_KEYS if labels is None else labels)}


def sample_keys(label: str, optional: bool = False) -> tuple[str, ...]:
    """The Sample keys that hold ``label`` (with ``optional``: also those that may come with it)."""
    keys = LABEL_KEYS[label][1] if label in LABEL_KEYS else (label,)
    return keys + OPTIONAL_KEYS.get(label, ()) if optional else keys


def sample_labels(sample: Mapping) -> list[str]:
    """The labels ``sample`` carries."""
    return [label for label, (_, keys) in LABEL_KEYS.items() if all(k in sample for k in keys)]


def sample_value(sample: Mapping, label: str) -> Any | None:
    """The target of ``label`` in ``sample`` (a dict of its keys when it has several), or None."""
    keys = sample_keys(label)
    if not all(k in sample for k in keys):
        return None
    extra = [k for k in OPTIONAL_KEYS.get(label, ()) if k in sample]
    if len(keys) == 1 and not extra:
        return sample[keys[0]]
    return {k: sample[k] for k in (*keys, *extra)}


def _move(x: Any, fn) -> Any:
    if isinstance(x, Tensor):
        return fn(x)
    if isinstance(x, dict):
        return {k: _move(v, fn) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_move(v, fn) for v in x)
    return x


@dataclass
class Batch:
    """A collated batch.

    Attributes:
        images (Tensor[B, 3, H, W]): uint8 RGB, padded bottom/right to a common size.
        targets: label -> the batched targets in the form of the label's task type (e.g. ``detection``: a dict
            of per-image ``boxes`` and ``labels`` lists; ``segmentation``: Tensor[B, H, W] int64, 255 where
            unlabelled; ``depth``: Tensor[B, H, W] metres, 0 where unmeasured).
        has: label -> Tensor[B] bool, which images carry that label (always on the CPU, so that the trainer can
            read it without a device synchronisation).
        meta: per image dict (path, dataset, original size, ...).
        skipped: ``"path: reason"`` for every sample skipped under ``skip_bad`` while this batch was loaded (the
            trainer sums them over the epoch and reports them).
    """

    images: Tensor
    targets: dict[str, Any]
    has: dict[str, Tensor]
    meta: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.images.shape[0]

    def present(self) -> dict[str, bool]:
        """Label -> whether any image of the batch carries it (read on the CPU: no sync)."""
        return {label: bool(mask.any()) for label, mask in self.has.items()}

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        """A copy with every tensor but ``has`` on ``device``."""
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return Batch(move(self.images), _move(self.targets, move), self.has, self.meta, self.skipped)

    def pin_memory(self) -> "Batch":
        """Page-locked copy, called by ``DataLoader(pin_memory=True)`` for faster non-blocking copies."""
        pin = lambda t: t.pin_memory()  # noqa: E731
        return Batch(pin(self.images), _move(self.targets, pin), self.has, self.meta, self.skipped)


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


def collate(samples: Sequence[dict], size_divisor: int = 32, labels: Sequence[str] | None = None) -> Batch:
    """Stack samples into a :class:`Batch`, padding bottom/right to a common size divisible by ``size_divisor``.

    Padding carries "no label" in each type's own way (255 for class ids, 0 for depth and normals), so it carries
    no loss. A sample without a label gets an all-ignore target and ``has[label] = False``. The samples'
    ``skipped`` lists (bad samples replaced under ``skip_bad``) are concatenated into ``Batch.skipped``.

    Args:
        samples: transformed samples.
        size_divisor: the padded size is a multiple of it.
        labels: the labels to batch (default: every registered label some sample carries).
    """
    if not samples:
        raise ValueError("collate: got an empty list of samples")
    images = [_image_tensor(s["image"]) for s in samples]
    height = max(i.shape[1] for i in images)
    width = max(i.shape[2] for i in images)
    height = -(-height // size_divisor) * size_divisor
    width = -(-width // size_divisor) * size_divisor

    out_images = torch.zeros(len(samples), 3, height, width, dtype=torch.uint8)
    for i, image in enumerate(images):
        out_images[i, :, :image.shape[1], :image.shape[2]] = image
    if labels is None:
        labels = [label for label in LABEL_KEYS if any(sample_value(s, label) is not None for s in samples)]
    targets, has = {}, {}
    for label, cls in label_types(labels).items():
        values = [sample_value(s, label) for s in samples]
        has[label] = torch.tensor([v is not None for v in values], dtype=torch.bool)
        targets[label] = cls.collate(values, height, width)
    meta = [dict(s.get("meta", {})) for s in samples]
    skipped = [reason for s in samples for reason in s.get("skipped", ())]
    return Batch(out_images, targets, has, meta, skipped)
