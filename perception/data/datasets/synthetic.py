"""The built-in synthetic driving scenes as a dataset (rendered on the fly, deterministic by index)."""
from __future__ import annotations

from perception.data.datasets.base import BaseDataset
from perception.data.labels import cityscapes_instance_names, cityscapes_tables
from perception.data.synthetic import generate_scene

DEFAULT_SIZES = {"train": 2000, "val": 200, "test": 200}
# Drivable area in BDD100K's codes (0 direct, 1 alternative, 2 background) and binary lane markings: the labels
# ``drivable`` and ``lanes`` (perception.data.batch.LABEL_KEYS) beside the Cityscapes semantics.
DRIVABLE_CLASSES = ["direct", "alternative", "background"]
LANE_CLASSES = ["background", "lane"]


class SyntheticDrivingDataset(BaseDataset):
    """Procedural street scenes with exact labels for detection, segmentation (Cityscapes trainIds), depth,
    surface normals (camera frame: x right, y down, z forward; unit vectors facing the camera, 0 for the sky),
    drivable area (label ``drivable``: 0 the ego lane, 1 the other lanes, 2 background) and lane markings (label
    ``lanes``: 1 on the painted lines).

    Scene ``i`` of a split is a pure function of (``seed``, split, ``i``); the splits never share a scene. For tests
    and demos: train on the real datasets for real results.

    Args:
        root: unused (the scenes are generated); kept for the common constructor.
        split: ``train``, ``val`` or ``test``.
        num_samples: scenes in the split (default 2000 for train, 200 otherwise).
        height: rendered image height.
        width: rendered image width.
        seed: base seed of all scenes.
        density: multiplies the expected number of road users.
    """

    name = "synthetic"
    tasks = ("detection", "segmentation", "depth", "normals", "drivable", "lanes")

    def __init__(self, root: str = "", split: str = "train", num_samples: int | None = None, height: int = 256,
                 width: int = 512, seed: int = 0, density: float = 1.0) -> None:
        super().__init__(root, split)
        if split not in DEFAULT_SIZES:
            raise ValueError(f"split: got {split!r}, expected one of {', '.join(DEFAULT_SIZES)}")
        self.num_samples = DEFAULT_SIZES[split] if num_samples is None else int(num_samples)
        if self.num_samples < 1:
            raise ValueError(f"num_samples: got {self.num_samples}, expected at least 1")
        if height < 32 or width < 32:
            raise ValueError(f"height/width: got {height}x{width}, expected at least 32x32 pixels")
        self.height, self.width, self.seed, self.density = int(height), int(width), int(seed), float(density)
        self.classes = {"detection": cityscapes_instance_names(), "segmentation": cityscapes_tables("trainId")[1],
                        "drivable": list(DRIVABLE_CLASSES), "lanes": list(LANE_CLASSES)}

    def __len__(self) -> int:
        return self.num_samples

    def load(self, index: int) -> dict:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"synthetic {self.split}: index {index} out of range 0..{self.num_samples - 1}")
        return generate_scene(index, self.split, self.seed, self.height, self.width, self.density)

    def describe(self) -> str:
        return f"synthetic {self.split} ({self.num_samples} scenes, {self.height}x{self.width})"
