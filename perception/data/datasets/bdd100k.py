"""BDD100K in its official layout: 10-class boxes, drivable area and lane markings (the YOLOP / HybridNets setting).

    {root}/images/100k/{split}/{name}.jpg                  1280 x 720 frames
    {root}/labels/det_20/det_{split}.json                  [{name, labels: [{category, box2d: {x1, y1, x2, y2}}]}]
    {root}/labels/drivable/masks/{split}/{stem}.png        uint8: 0 direct, 1 alternative, 2 background
    {root}/labels/lane/masks/{split}/{stem}.png            uint8 bit code: bit 3 set = background, else a lane
                                                           (bits 0-2 category, bit 4 style, bit 5 direction)

The drivable codes are kept as they are (label ``drivable``, classes direct / alternative / background), or merged
into drivable vs background with ``binary_drivable`` (YOLOP's and HybridNets' two-class drivable mIoU). Lanes are
binary (label ``lanes``: 0 background, 1 lane), every lane category and style alike, as both papers train them. The
masks are read at their stored width: the thin lane lines are not widened.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from perception.data.batch import LABEL_KEYS
from perception.data.datasets.base import BaseDataset
from perception.data.io import DataError, read_image, read_json, read_label_image

CLASSES = ("pedestrian", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle", "traffic light",
           "traffic sign")
VEHICLES = ("car", "truck", "bus", "train")  # YOLOP's single "vehicle" class
# Categories of the detection json outside the 10 evaluated classes (BDD100K's own evaluation leaves them out).
IGNORED = ("other person", "other vehicle", "trailer")
DRIVABLE_CLASSES = ["direct", "alternative", "background"]
BINARY_DRIVABLE_CLASSES = ["background", "drivable"]
LANE_CLASSES = ["background", "lane"]
LANE_BACKGROUND_BIT = 1 << 3
LABELS = ("detection", "drivable", "lanes")


def lane_mask(code: np.ndarray) -> np.ndarray:
    """BDD100K lane mask bytes -> 1 where a lane is drawn (bit 3 clear), 0 for the background (bit 3 set)."""
    return ((code & LANE_BACKGROUND_BIT) == 0).astype(np.int64)


class BDD100KDataset(BaseDataset):
    """BDD100K frames with boxes (label ``detection``), drivable area (``drivable``) and lane markings (``lanes``).

    Args:
        root: the folder holding ``images/`` and ``labels/``.
        split: ``train`` or ``val``.
        tasks: the labels to load (default all three); only their files are required.
        merge_vehicles: one detection class ``vehicle`` (car, truck, bus, train) and no other boxes, as YOLOP and
            HybridNets train and report; default the 10 classes.
        binary_drivable: drivable area as 0 background / 1 drivable (direct or alternative), YOLOP's classes.
    """

    name = "bdd100k"
    tasks = LABELS

    def __init__(self, root: str | os.PathLike, split: str = "train", tasks: Sequence[str] | None = None,
                 merge_vehicles: bool = False, binary_drivable: bool = False) -> None:
        super().__init__(root, split)
        if split not in ("train", "val"):
            raise ValueError(f"split: got {split!r}, expected 'train' or 'val' (the test split has no labels)")
        wanted = tuple(tasks) if tasks else LABELS
        unknown = [t for t in wanted if t not in LABEL_KEYS]
        if unknown:
            raise ValueError(f"tasks: unknown labels {unknown}; BDD100K has {', '.join(LABELS)}")
        # Labels of the model that BDD100K lacks (depth, say) come from other datasets of the mix.
        self.tasks = tuple(t for t in LABELS if t in wanted)
        self.merge_vehicles, self.binary_drivable = bool(merge_vehicles), bool(binary_drivable)
        self.image_dir = self._require_dir(self.root / "images" / "100k" / split, "image")
        self.images = self._require_nonempty(sorted(p.name for p in self.image_dir.glob("*.jpg")), self.image_dir,
                                             "*.jpg")
        self.mask_dirs = {}
        for label, sub in (("drivable", "drivable"), ("lanes", "lane")):
            if label in self.tasks:
                self.mask_dirs[label] = self._require_dir(self.root / "labels" / sub / "masks" / split,
                                                          f"{sub} mask")
        names = ["vehicle"] if self.merge_vehicles else list(CLASSES)
        self.classes = {"detection": names,
                        "drivable": list(BINARY_DRIVABLE_CLASSES if self.binary_drivable else DRIVABLE_CLASSES),
                        "lanes": list(LANE_CLASSES)}
        self.classes = {k: v for k, v in self.classes.items() if k in self.tasks}
        self.boxes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if "detection" in self.tasks:
            self.det_file = self.root / "labels" / "det_20" / f"det_{split}.json"
            self.boxes = self._read_detection(self.det_file)

    def layout_hint(self) -> str:
        return ("images/100k/{train,val}/*.jpg, labels/det_20/det_{train,val}.json, "
                "labels/drivable/masks/{train,val}/*.png and labels/lane/masks/{train,val}/*.png under the root")

    def _read_detection(self, path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Frame name -> (xyxy boxes, labels) from the det_20 json."""
        frames = read_json(path, "BDD100K detection")
        if not isinstance(frames, list):
            raise DataError(f"{path}: expected a list of frames, got {type(frames).__name__}")
        if self.merge_vehicles:
            label_of = {c: 0 for c in VEHICLES}
        else:
            label_of = {c: i for i, c in enumerate(CLASSES)}
        out = {}
        for i, frame in enumerate(frames):
            if not isinstance(frame, dict) or not isinstance(frame.get("name"), str):
                raise DataError(f"{path}: frame {i} has no name (expected {{name, labels}})")
            boxes, labels = [], []
            for j, obj in enumerate(frame.get("labels") or []):
                category, box = obj.get("category"), obj.get("box2d")
                if box is None:  # not a box (a polygon of an older release)
                    continue
                if category not in CLASSES:
                    if category in IGNORED:
                        continue
                    raise DataError(f"{path}: frame {frame['name']} label {j}: unknown category {category!r}; "
                                    f"expected one of {', '.join(CLASSES + IGNORED)}")
                if category not in label_of:  # not a vehicle, with merge_vehicles
                    continue
                try:
                    boxes.append([float(box[k]) for k in ("x1", "y1", "x2", "y2")])
                except (KeyError, TypeError, ValueError):
                    raise DataError(f"{path}: frame {frame['name']} label {j}: box2d {box!r} is not "
                                    "{x1, y1, x2, y2} numbers") from None
                labels.append(label_of[category])
            out[frame["name"]] = (np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int64))
        return out

    def __len__(self) -> int:
        return len(self.images)

    def _mask(self, label: str, stem: str, what: str) -> tuple[np.ndarray, Path]:
        path = self.mask_dirs[label] / f"{stem}.png"
        if not path.is_file():
            raise DataError(f"{path}: missing {what} mask of {stem}.jpg")
        return read_label_image(path, what, np.uint8), path

    def load(self, index: int) -> dict:
        name = self.images[index]
        stem = name[:-len(".jpg")]
        path = self.image_dir / name
        image = read_image(path)
        size = image.shape[:2]
        sample: dict = {"image": image}
        files: dict[str, str] = {"image": str(path)}
        if "detection" in self.tasks:
            # A frame the json does not list has no boxes (the det_20 files leave out a few frames).
            boxes, labels = self.boxes.get(name, (np.zeros((0, 4), np.float32), np.zeros(0, np.int64)))
            sample["boxes"], sample["labels"] = boxes.copy(), labels.copy()
            files["boxes"] = f"{self.det_file} ({name})"
        if "drivable" in self.tasks:
            code, mask_path = self._mask("drivable", stem, "drivable area")
            if code.shape != size:
                raise DataError(f"{mask_path}: drivable mask is {code.shape[0]}x{code.shape[1]}, its image "
                                f"{size[0]}x{size[1]}")
            if code.max() > 2:
                raise DataError(f"{mask_path}: drivable mask value {int(code.max())}; expected 0 direct, "
                                "1 alternative, 2 background")
            sample["drivable"] = (code < 2).astype(np.int64) if self.binary_drivable else code.astype(np.int64)
            files["drivable"] = str(mask_path)
        if "lanes" in self.tasks:
            code, mask_path = self._mask("lanes", stem, "lane")
            if code.shape != size:
                raise DataError(f"{mask_path}: lane mask is {code.shape[0]}x{code.shape[1]}, its image "
                                f"{size[0]}x{size[1]}")
            sample["lanes"] = lane_mask(code)
            files["lanes"] = str(mask_path)
        sample["meta"] = {"path": str(path), "dataset": self.name, "orig_size": size, "files": files}
        return sample

    def describe(self) -> str:
        return f"bdd100k {self.split} ({len(self.images)} frames, {self.root})"
