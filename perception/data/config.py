"""Configuration of the data: datasets, image size, augmentation and loading."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class DatasetConfig:
    """One dataset.

    Attributes:
        type: dataset kind (``synthetic``, ``cityscapes``, ...).
        root: folder (or file) it is read from.
        split: ``train``, ``val`` or ``test``.
        options: further keyword arguments of the dataset's constructor.
    """

    type: str = "synthetic"
    root: str = ""
    split: str = "train"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    """Datasets and loading.

    Attributes:
        train: datasets mixed for training.
        val: datasets evaluated.
        image_size: (H, W) of training crops and of evaluation inputs.
        batch_size: images per step (per process).
        num_workers: DataLoader worker processes.
    """

    train: list[DatasetConfig] = field(default_factory=lambda: [DatasetConfig()])
    val: list[DatasetConfig] = field(default_factory=lambda: [DatasetConfig(split="val")])
    image_size: tuple[int, int] = (256, 512)
    batch_size: int = 8
    num_workers: int = 2
