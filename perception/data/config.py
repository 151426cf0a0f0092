"""Configuration of the data: datasets, their mix, augmentation and loading."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

SAMPLING = ("proportional", "uniform", "temperature")


@dataclass
class DatasetConfig:
    """One dataset.

    Attributes:
        type: dataset kind: ``synthetic``, ``cityscapes``, ``nyuv2_mat``, ``nyuv2_mtan``, ``nyuv2_folder``, ``coco``.
        root: folder (or file) it is read from.
        split: ``train``, ``val`` or ``test``.
        options: further keyword arguments of the dataset's constructor (checked against its signature).
        tasks: take only these tasks' labels from this dataset (empty: every task it labels).
        class_map: renames this dataset's class names (detection and segmentation) to the names of the mix
            (``data.detection_classes`` / ``data.semantic_classes``); a ``null`` value drops that class (its boxes
            are removed, its pixels ignored).
        weight: multiplies this dataset's share of the training mix.
    """

    type: str = "synthetic"
    root: str = ""
    split: str = "train"
    options: dict[str, Any] = field(default_factory=dict)
    tasks: list[str] = field(default_factory=list)
    class_map: dict[str, str | None] = field(default_factory=dict)
    weight: float = 1.0

    def validate(self) -> None:
        if self.split not in ("train", "val", "test"):
            raise ValueError(f"split: got {self.split!r}, expected 'train', 'val' or 'test'")
        if self.weight <= 0:
            raise ValueError(f"weight: got {self.weight}, expected a positive number")


@dataclass
class AugmentConfig:
    """Training augmentation (evaluation only resizes to fit ``image_size``).

    Attributes:
        scale: range of the random zoom applied after fitting the image into ``image_size``, then a random crop
            (or pad) back to ``image_size``.
        scale_depth: divide depth by the zoom, as if the camera had moved closer (MTAN's augmentation); ``false``
            keeps metric depth, as if the focal length had changed.
        hflip: probability of a horizontal flip.
        brightness: colour jitter strengths (image only).
        contrast: see ``brightness``.
        saturation: see ``brightness``.
        hue: see ``brightness``.
        color_p: probability of the colour jitter.
        blur_p: probability of a Gaussian blur of the image.
        noise_p: probability of Gaussian noise on the image.
        min_visibility: a box keeps at least this fraction of its area after cropping, or it is removed.
        min_box_size: and at least this width and height in pixels.
    """

    scale: tuple[float, float] = (0.75, 1.5)
    scale_depth: bool = True
    hflip: float = 0.5
    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.25
    hue: float = 0.02
    color_p: float = 0.8
    blur_p: float = 0.0
    noise_p: float = 0.0
    min_visibility: float = 0.25
    min_box_size: float = 2.0

    def validate(self) -> None:
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale: got {list(self.scale)}, expected [low, high] with 0 < low <= high")
        for name in ("hflip", "color_p", "blur_p", "noise_p", "min_visibility"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}: got {getattr(self, name)}, expected a probability in [0, 1]")


@dataclass
class DataConfig:
    """Datasets and loading.

    Attributes:
        train: datasets mixed for training.
        val: datasets evaluated.
        image_size: (H, W) of training crops; evaluation inputs are resized to fit inside it, keeping aspect.
        batch_size: images per step (per process).
        num_workers: DataLoader worker processes.
        augment: training augmentation.
        sampling: how the training mix draws its datasets: ``proportional`` to their sizes, ``uniform`` (each
            dataset equally often) or ``temperature`` (probability proportional to size ** (1 / temperature)).
        temperature: of the ``temperature`` strategy (1 = proportional, large = uniform).
        samples_per_epoch: training samples per epoch over all processes (0: the sum of the datasets' sizes).
        skip_bad: skip unreadable or invalid samples (counted in ``Batch.skipped``) instead of stopping.
        detection_classes: the mix's detection classes, by name; datasets map their own names onto them (empty:
            the first dataset's classes, after its ``class_map``; the other datasets map onto them by name).
        semantic_classes: the same for segmentation.
        size_divisor: batches are padded to a multiple of this (the network's largest stride).
    """

    train: list[DatasetConfig] = field(default_factory=lambda: [DatasetConfig()])
    val: list[DatasetConfig] = field(default_factory=lambda: [DatasetConfig(split="val")])
    image_size: tuple[int, int] = (256, 512)
    batch_size: int = 8
    num_workers: int = 2
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    sampling: Literal["proportional", "uniform", "temperature"] = "proportional"
    temperature: float = 2.0
    samples_per_epoch: int = 0
    skip_bad: bool = False
    detection_classes: list[str] = field(default_factory=list)
    semantic_classes: list[str] = field(default_factory=list)
    size_divisor: int = 32

    def validate(self) -> None:
        if min(self.image_size) <= 0:
            raise ValueError(f"image_size: got {list(self.image_size)}, expected two positive ints [H, W]")
        if self.batch_size < 1:
            raise ValueError(f"batch_size: got {self.batch_size}, expected at least 1")
        if self.num_workers < 0:
            raise ValueError(f"num_workers: got {self.num_workers}, expected 0 or more")
        if self.temperature <= 0:
            raise ValueError(f"temperature: got {self.temperature}, expected a positive number")
        if self.samples_per_epoch < 0:
            raise ValueError(f"samples_per_epoch: got {self.samples_per_epoch}, expected 0 (auto) or more")
        if self.size_divisor < 1:
            raise ValueError(f"size_divisor: got {self.size_divisor}, expected a positive int")
