"""Cityscapes in its official layout: semantic trainIds, instance boxes and depth from stereo disparity.

    {root}/leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png
    {root}/gtFine/{split}/{city}/..._gtFine_labelIds.png      uint8 labelIds
    {root}/gtFine/{split}/{city}/..._gtFine_instanceIds.png   uint16: labelId * 1000 + k per instance, the plain
                                                              labelId (< 1000) for crowd (group) and stuff regions
    {root}/gtFine/{split}/{city}/..._gtFine_polygons.json     polygons (optional source of boxes)
    {root}/disparity/{split}/{city}/..._disparity.png         uint16 p: disparity d = (p - 1) / 256, p = 0 invalid
    {root}/camera/{split}/{city}/..._camera.json              extrinsic.baseline (m), intrinsic.fx (px)

Group regions (an instance class's pixels without an instance id, or a ``*group`` polygon) become boxes with
``crowd = True``: the official evaluation ignores predictions on them, and so does the COCO metric given them as
``iscrowd`` regions; they are no training targets.

Label tables come from cityscapesscripts (``perception.data.labels``), not a retyped copy.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from perception.data.datasets.base import BaseDataset
from perception.data.io import DataError, read_image, read_json, read_label_image
from perception.data.labels import cityscapes_instance_classes, cityscapes_instance_names, cityscapes_tables

SUFFIX = "_leftImg8bit.png"


def disparity_to_depth(code: np.ndarray, baseline: float, fx: float) -> np.ndarray:
    """Cityscapes disparity PNG values -> depth in metres (0 where invalid).

    Args:
        code (ndarray[H, W] uint16): stored values p; disparity d = (p - 1) / 256 for p > 0, p = 0 invalid.
        baseline: stereo baseline in metres (``camera.json`` extrinsic.baseline).
        fx: focal length in pixels (intrinsic.fx).

    Returns:
        ndarray[H, W] float32: depth = baseline * fx / d where d > 0, else 0.
    """
    disparity = (code.astype(np.float32) - 1.0) / 256.0
    valid = (code > 0) & (disparity > 0)
    depth = np.zeros(code.shape, np.float32)
    depth[valid] = np.float32(baseline * fx) / disparity[valid]
    return depth


def boxes_from_instance_ids(instance_ids: np.ndarray, classes: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of the instances in a Cityscapes instanceIds image.

    Args:
        instance_ids (ndarray[H, W]): labelId * 1000 + k for instances; values below 1000 are crowd or stuff
            regions and give no box.
        classes: labelId -> detection label of the instance classes kept (others give no box).

    Returns:
        boxes (ndarray[N, 4] float32, xyxy pixels enclosing every pixel of the instance: x1 = last column + 1)
        and labels (ndarray[N] int64), in increasing instance id order.
    """
    flat = instance_ids.ravel()
    where = np.flatnonzero(flat >= 1000)  # instance pixels: usually a small part of the image
    values = flat[where]
    keep = np.isin(values // 1000, np.fromiter(classes, np.int64, len(classes)))
    where, values = where[keep], values[keep]
    if len(values) == 0:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    order = np.argsort(values, kind="stable")
    where, values = where[order], values[order]
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    width = instance_ids.shape[1]
    rows, cols = where // width, where % width
    boxes = np.stack([np.minimum.reduceat(cols, starts), np.minimum.reduceat(rows, starts),
                      np.maximum.reduceat(cols, starts) + 1, np.maximum.reduceat(rows, starts) + 1], 1)
    labels = np.array([classes[int(v) // 1000] for v in values[starts]], np.int64)
    return boxes.astype(np.float32), labels


def crowd_boxes_from_instance_ids(instance_ids: np.ndarray, classes: dict[int, int]
                                  ) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of the group (crowd) regions in a Cityscapes instanceIds image.

    A group region is a set of pixels whose value is the plain labelId (below 1000) of an instance class: a crowd
    too dense to split into instances. Each 8-connected region gives one box, so two groups apart in the image do
    not make one box spanning both.

    Args:
        instance_ids (ndarray[H, W]): as in :func:`boxes_from_instance_ids`.
        classes: labelId -> detection label of the instance classes kept.

    Returns:
        boxes (ndarray[K, 4] float32, xyxy pixels, x1 = last column + 1) and labels (ndarray[K] int64), by labelId,
        then by top edge, then by left edge.
    """
    empty = np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    label_ids = sorted(label_id for label_id in classes if label_id < 1000)
    if not label_ids:
        return empty
    # Two comparisons over the image find the window holding every candidate pixel; the rest works inside it
    # (a full-image connected-components pass per class would cost more than reading the file).
    window, top, left = _window(instance_ids, (instance_ids >= label_ids[0]) & (instance_ids <= label_ids[-1]))
    if window is None:
        return empty
    boxes, labels = [], []
    for label_id in label_ids:
        mask = window == label_id
        region, y0, x0 = _window(mask, mask)
        if region is None:
            continue
        count, _, stats, _ = cv2.connectedComponentsWithStats(region.astype(np.uint8), connectivity=8)
        x, y, w, h = (stats[1:, k].astype(np.int64) for k in range(4))  # component 0 is the background
        x, y = x + left + x0, y + top + y0
        order = np.lexsort((x, y))  # a fixed order, whatever order the labelling algorithm numbers them in
        boxes.append(np.stack([x, y, x + w, y + h], 1)[order])
        labels.append(np.full(count - 1, classes[label_id], np.int64))
    if not boxes:
        return empty
    return np.concatenate(boxes).astype(np.float32), np.concatenate(labels)


def _window(array: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray | None, int, int]:
    """The smallest window of ``array`` holding every True pixel of ``mask`` (same shape), and its top-left
    corner; ``None`` if there is none."""
    rows = np.flatnonzero(mask.any(1))
    if len(rows) == 0:
        return None, 0, 0
    cols = np.flatnonzero(mask.any(0))
    return array[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1], int(rows[0]), int(cols[0])


def boxes_from_polygons(annotation: dict, names: Sequence[str], path: Path
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes of the instance-class objects of a ``*_gtFine_polygons.json``, with crowd flags: a group label such
    as ``cargroup`` gives a crowd box of its class; deleted objects and other labels are skipped."""
    height, width = int(annotation["imgHeight"]), int(annotation["imgWidth"])
    boxes, labels, crowd = [], [], []
    for obj in annotation.get("objects", []):
        label = obj.get("label")
        group = isinstance(label, str) and label.endswith("group") and label[:-len("group")] in names
        if obj.get("deleted") or (label not in names and not group):
            continue
        points = np.asarray(obj.get("polygon", []), np.float32).reshape(-1, 2)
        if len(points) == 0:
            raise DataError(f"{path}: object {label!r} has an empty polygon")
        # Vertices are pixel coordinates that the rasteriser fills inclusively: the box ends one pixel after.
        x0, y0 = np.clip(points.min(0), 0, None)
        x1, y1 = np.minimum(points.max(0) + 1, (width, height))
        boxes.append((x0, y0, x1, y1))
        labels.append(names.index(label[:-len("group")] if group else label))
        crowd.append(group)
    return (np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int64), np.array(crowd, bool))


class CityscapesDataset(BaseDataset):
    """Cityscapes (or any data written in its layout, such as the synthetic exporter's).

    Args:
        root: the folder holding ``leftImg8bit``, ``gtFine``, ``disparity`` and ``camera``.
        split: ``train``, ``val`` or ``test``.
        tasks: the tasks to load (default all three); only their folders are required.
        level: semantic classes: ``trainId`` (19) or ``category`` (7).
        boxes: source of the boxes: ``instanceIds`` or ``polygons``.
        annotation: ``gtFine`` or ``gtCoarse``.
    """

    name = "cityscapes"
    LABELS = ("detection", "segmentation", "depth")

    def __init__(self, root: str | os.PathLike, split: str = "train", tasks: Sequence[str] | None = None,
                 level: str = "trainId", boxes: str = "instanceIds", annotation: str = "gtFine") -> None:
        super().__init__(root, split)
        if boxes not in ("instanceIds", "polygons"):
            raise ValueError(f"boxes: got {boxes!r}, expected 'instanceIds' or 'polygons'")
        for task in tasks or ():
            if task not in self.LABELS:
                raise ValueError(f"tasks: unknown label {task!r}; Cityscapes labels {', '.join(self.LABELS)}")
        self.tasks = tuple(t for t in self.LABELS if t in tasks) if tasks else self.LABELS
        self.lut, semantic_names = cityscapes_tables(level)
        self.instance_classes = cityscapes_instance_classes()
        self.classes = {"detection": cityscapes_instance_names(), "segmentation": semantic_names}
        self.boxes_from, self.annotation = boxes, annotation
        self._require_dir(self.root, "dataset root")
        self._require_dir(self.root / "leftImg8bit" / split, "image")
        if "segmentation" in self.tasks or "detection" in self.tasks:
            self._require_dir(self.root / annotation / split, "annotation")
        if "depth" in self.tasks:
            self._require_dir(self.root / "disparity" / split, "disparity")
            self._require_dir(self.root / "camera" / split, "camera")
        image_dir = self.root / "leftImg8bit" / split
        self.images = self._require_nonempty(sorted(image_dir.glob(f"*/*{SUFFIX}")), image_dir, f"*/*{SUFFIX}")

    def layout_hint(self) -> str:
        return ("leftImg8bit/{split}/{city}/*_leftImg8bit.png, gtFine/{split}/{city}/*_gtFine_labelIds.png and "
                "*_instanceIds.png, disparity/{split}/{city}/*_disparity.png, camera/{split}/{city}/*_camera.json")

    def __len__(self) -> int:
        return len(self.images)

    def files(self, index: int) -> dict[str, Path]:
        """The files of sample ``index`` by kind (they need not exist)."""
        image = self.images[index]
        city, stem = image.parent.name, image.name[: -len(SUFFIX)]
        ann = self.root / self.annotation / self.split / city
        return {"image": image, "semantic": ann / f"{stem}_{self.annotation}_labelIds.png",
                "instance": ann / f"{stem}_{self.annotation}_instanceIds.png",
                "polygons": ann / f"{stem}_{self.annotation}_polygons.json",
                "depth": self.root / "disparity" / self.split / city / f"{stem}_disparity.png",
                "camera": self.root / "camera" / self.split / city / f"{stem}_camera.json"}

    def load(self, index: int) -> dict:
        files = self.files(index)
        image = read_image(files["image"])
        sample: dict = {"image": image}
        if "segmentation" in self.tasks:
            sample["semantic"] = self.semantic(files["semantic"])
        if "detection" in self.tasks:
            box_file = files["instance"] if self.boxes_from == "instanceIds" else files["polygons"]
            sample["boxes"], sample["labels"], sample["crowd"] = self.read_boxes(box_file)
        camera = None
        if "depth" in self.tasks:
            camera = self.camera(files["camera"])
            code = read_label_image(files["depth"], "disparity", np.uint16)
            sample["depth"] = disparity_to_depth(code, camera["baseline"], camera["fx"])
        meta_files = {"image": str(files["image"]), "semantic": str(files["semantic"]),
                      "boxes": str(box_file) if "detection" in self.tasks else "", "depth": str(files["depth"])}
        sample["meta"] = {"path": str(files["image"]), "dataset": self.name, "orig_size": image.shape[:2],
                          "files": meta_files, **({"camera": camera} if camera else {})}
        return sample

    def semantic(self, path: Path) -> np.ndarray:
        """labelIds PNG -> class ids of ``level`` (255 = ignore); ids outside the official table are an error."""
        ids = read_label_image(path, "semantic label", np.uint8)
        present = np.flatnonzero(np.bincount(ids.ravel(), minlength=1))
        bad = present[self.lut[present] < 0]
        if len(bad):
            raise DataError(f"{path}: labelIds {bad[:10].tolist()} are not in the Cityscapes label table")
        return self.lut[ids]

    def read_boxes(self, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes, labels and crowd flags: the instances, then the group regions."""
        if self.boxes_from == "polygons":
            return boxes_from_polygons(read_json(path, "polygons"), self.classes["detection"], path)
        ids = read_label_image(path, "instance", np.uint16)
        present = np.flatnonzero(np.bincount(ids.ravel(), minlength=1))  # every value once, not every pixel
        label_ids = np.where(present >= 1000, present // 1000, present)
        bad = label_ids[(label_ids > 255) | (self.lut[np.minimum(label_ids, 255)] < 0)]
        if len(bad):
            raise DataError(f"{path}: instance labelIds {bad[:10].tolist()} are not in the Cityscapes label table")
        boxes, labels = boxes_from_instance_ids(ids, self.instance_classes)
        crowd_boxes, crowd_labels = crowd_boxes_from_instance_ids(ids, self.instance_classes)
        crowd = np.r_[np.zeros(len(boxes), bool), np.ones(len(crowd_boxes), bool)]
        return np.concatenate([boxes, crowd_boxes]), np.concatenate([labels, crowd_labels]), crowd

    @staticmethod
    def camera(path: Path) -> dict:
        """``{"baseline", "fx", "fy", "u0", "v0"}`` from a camera json."""
        data = read_json(path, "camera")
        try:
            cam = {"baseline": float(data["extrinsic"]["baseline"]), "fx": float(data["intrinsic"]["fx"]),
                   "fy": float(data["intrinsic"]["fy"]), "u0": float(data["intrinsic"]["u0"]),
                   "v0": float(data["intrinsic"]["v0"])}
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"{path}: camera JSON lacks {err} (expected extrinsic.baseline and intrinsic.fx, fy, "
                            "u0, v0)") from None
        if cam["baseline"] <= 0 or cam["fx"] <= 0:
            raise DataError(f"{path}: camera baseline {cam['baseline']} and fx {cam['fx']} must be positive")
        return cam
