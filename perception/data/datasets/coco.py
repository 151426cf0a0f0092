"""Detection labels from any COCO-format json and its image folder (read with pycocotools).

Category ids are mapped to contiguous labels in increasing id order; crowd annotations (``iscrowd = 1``) come with
``crowd = True``: they are no training targets, and the metric keeps them as the ignore regions COCOeval makes of
them. With ``class_map`` in the dataset's config, its category names map onto the mix's detection classes, so a
COCO-style set can add boxes to a Cityscapes + NYUv2 mix.
"""
from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from perception.data.datasets.base import BaseDataset
from perception.data.io import DataError, read_image, require_file


class COCODetectionDataset(BaseDataset):
    """Images and boxes of a COCO-format annotation file.

    Args:
        root: the image folder (``file_name`` of each image is relative to it).
        split: ``train``, ``val`` or ``test`` (only recorded; the json decides the images).
        annotations: the COCO json (default ``{root}/annotations.json``).
        categories: keep only these category names (default all), in this label order.
        skip_empty: leave out images without any non-crowd box.
    """

    name = "coco"
    tasks = ("detection",)

    def __init__(self, root: str | os.PathLike, split: str = "train", annotations: str | None = None,
                 categories: Sequence[str] | None = None, skip_empty: bool = False) -> None:
        super().__init__(root, split)
        from pycocotools.coco import COCO

        self._require_dir(self.root, "image")
        self.annotation_file = require_file(Path(annotations) if annotations else self.root / "annotations.json",
                                            "COCO annotation")
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
                self.coco = COCO(str(self.annotation_file))
        except (ValueError, KeyError, TypeError, AssertionError) as err:
            raise DataError(f"{self.annotation_file}: not a COCO annotation file ({err!r})") from None
        cats = sorted(self.coco.loadCats(self.coco.getCatIds()), key=lambda c: c["id"])
        if categories:
            by_name = {c["name"]: c for c in cats}
            missing = [n for n in categories if n not in by_name]
            if missing:
                raise DataError(f"{self.annotation_file}: categories {missing} are not in the file "
                                f"(it has {sorted(by_name)})")
            cats = [by_name[n] for n in categories]
        self.cat_to_label = {c["id"]: i for i, c in enumerate(cats)}
        self.classes = {"detection": [c["name"] for c in cats]}
        ids = sorted(self.coco.getImgIds())
        if skip_empty:
            ids = [i for i in ids if any(not a.get("iscrowd", 0) and a["category_id"] in self.cat_to_label
                                         for a in self.coco.imgToAnns.get(i, []))]
        self.image_ids = self._require_nonempty(ids, self.annotation_file, "image entries")

    def layout_hint(self) -> str:
        return "an image folder and a COCO json whose images' file_name are relative to it"

    def __len__(self) -> int:
        return len(self.image_ids)

    def targets(self, image_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """xyxy boxes, contiguous labels and crowd flags (``iscrowd``) of an image's annotations of the kept
        categories, in file order."""
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if a["category_id"] in self.cat_to_label]
        xywh = np.array([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
        labels = np.array([self.cat_to_label[a["category_id"]] for a in anns], np.int64)
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], bool)
        return boxes, labels, crowd

    def load(self, index: int) -> dict:
        info = self.coco.imgs[self.image_ids[index]]
        path = self.root / info["file_name"]
        image = read_image(path)
        if "height" in info and "width" in info and (info["height"], info["width"]) != image.shape[:2]:
            raise DataError(f"{path}: image is {image.shape[0]}x{image.shape[1]} but {self.annotation_file} says "
                            f"{info['height']}x{info['width']}")
        boxes, labels, crowd = self.targets(info["id"])
        where = f"{self.annotation_file} (image id {info['id']}, {info['file_name']})"
        return {"image": image, "boxes": boxes, "labels": labels, "crowd": crowd,
                "meta": {"path": str(path), "dataset": self.name, "orig_size": image.shape[:2], "image_id": info["id"],
                         "files": {"image": str(path), "boxes": where}}}
