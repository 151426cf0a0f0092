"""Helpers shared by the task types: class names and their checks, batching of dense targets."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

IGNORE_INDEX = 255  # the class id of "no label" in segmentation targets


def default_class_names(names: list[str], num_classes: int, known: list[str]) -> list[str]:
    """``names`` if given, else ``known`` when it has ``num_classes`` entries, else ``class_0``, ``class_1``, ..."""
    if names:
        return names
    return list(known) if num_classes == len(known) else [f"class_{i}" for i in range(num_classes)]


def check_classes(num_classes: int, names: list[str]) -> None:
    if num_classes < 1:
        raise ValueError(f"num_classes: got {num_classes}, expected at least 1")
    if names and len(names) != num_classes:
        raise ValueError(f"class_names: got {len(names)} names for num_classes={num_classes}")


def dense_batch(values: Sequence[Any | None], height: int, width: int, fill: float, dtype: torch.dtype,
                channels: int = 0) -> Tensor:
    """Stack per-sample H x W (x C) maps into Tensor[B, height, width (, C)], padding and absent samples
    filled with ``fill``."""
    shape = (len(values), height, width) + ((channels,) if channels else ())
    out = torch.full(shape, fill, dtype=dtype)
    for i, value in enumerate(values):
        if value is None:
            continue
        value = value if isinstance(value, Tensor) else torch.as_tensor(np.ascontiguousarray(value))
        h, w = value.shape[:2]
        out[i, :h, :w] = value.to(dtype)
    return out


# model.scale -> the dense branch of every dense task type (segmentation, depth, normals; docs/scales.md):
# stride 8 at the small scales, depthwise-separable units.
DENSE_SCALES = {
    "n": {"channels": 32, "stride": 8, "conv": "dwsep"},
    "s": {"channels": 64, "stride": 8, "conv": "dwsep"},
    "m": {"channels": 64, "stride": 4, "conv": "dwsep"},
    "l": {"channels": 96, "stride": 4, "conv": "dwsep"},
}
