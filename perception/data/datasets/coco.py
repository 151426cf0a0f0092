"""Any COCO-format json and its image folder (read with pycocotools): boxes, and from the same file semantic maps,
plus depth and normals from folders beside it.

Category ids are mapped to contiguous labels in increasing id order; crowd annotations (``iscrowd = 1``) come with
``crowd = True``: they are no training targets, and the metric keeps them as the ignore regions COCOeval makes of
them. With ``class_map`` in the dataset's config, its category names map onto the mix's detection classes, so a
COCO-style set can add boxes to a Cityscapes + NYUv2 mix.

**Semantic maps** (the ``segmentation`` label, when some annotation has a polygon or RLE ``segmentation``): each
annotation's mask is painted with its category's label (the same contiguous ids as the boxes), from the largest
mask to the smallest, so a smaller object lying on a larger one stays on top (ties keep the file order). A crowd
annotation paints 255 (ignore), an annotation without ``segmentation`` paints its box 255 (its pixels are unknown),
and pixels no annotation covers get the ``background`` class when one is named, else 255. Polygons reaching outside
the image are clipped to it.

**Depth / normals** come from ``depth_dir`` / ``normals_dir``, matched by the image's file stem: ``{stem}.png``
(single-channel 8- or 16-bit, times ``depth_scale`` metres per unit; 0 = no measurement) or ``{stem}.npy``
(float metres) for depth, ``{stem}.npy`` (H x W x 3, components in [-1, 1], all 0 = none) for normals. An image
without such a file simply carries no depth (normals) label: the Batch's ``has`` mask is False for it, and it
trains the other tasks only.
"""
from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from perception.data.batch import IGNORE_INDEX
from perception.data.datasets.base import BaseDataset
from perception.data.io import DataError, read_image, read_label_image, require_file

_DEPTH_SUFFIXES = (".png", ".npy")


def _index_folder(folder: Path, suffixes: tuple[str, ...], what: str) -> dict[str, Path]:
    """stem -> file of the ``suffixes`` files directly in ``folder`` (two files of one stem are ambiguous)."""
    if not folder.is_dir():
        raise DataError(f"{folder}: missing {what} folder (expected {what} files named like the images' stems, "
                        f"{' or '.join(suffixes)})")
    out: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in suffixes or not path.is_file():
            continue
        if path.stem in out:
            raise DataError(f"{path}: {what} file of stem {path.stem!r} also given as {out[path.stem].name}; keep one")
        out[path.stem] = path
    return out


def _load_npy(path: Path, what: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"{path}: cannot read the {what} .npy file ({err})") from None


class COCODetectionDataset(BaseDataset):
    """Images, boxes and (when the json or folders provide them) semantic maps, depth and normals.

    Args:
        root: the image folder (``file_name`` of each image is relative to it).
        split: ``train``, ``val`` or ``test`` (only recorded; the json decides the images).
        annotations: the COCO json (default ``{root}/annotations.json``).
        categories: keep only these category names (default all), in this label order.
        skip_empty: leave out images without any non-crowd box.
        tasks: the labels to load (default: every one the files provide).
        background: the class of pixels no annotation covers: a category name, or a new name appended after the
            categories as the last semantic class (default: none, those pixels are ignored).
        depth_dir: folder of depth files named by image stem (relative to ``root`` unless absolute).
        depth_scale: metres per unit of a PNG depth file (0.001: millimetres); ``.npy`` files are metres.
        normals_dir: folder of H x W x 3 ``.npy`` normals named by image stem (relative to ``root`` unless absolute).
    """

    name = "coco"
    tasks = ("detection",)

    def __init__(self, root: str | os.PathLike, split: str = "train", annotations: str | None = None,
                 categories: Sequence[str] | None = None, skip_empty: bool = False,
                 tasks: Sequence[str] | None = None, background: str | None = None, depth_dir: str | None = None,
                 depth_scale: float = 0.001, normals_dir: str | None = None) -> None:
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
        for ann in self.coco.anns.values():
            if ann.get("category_id") not in self.coco.cats:
                raise DataError(f"{self.annotation_file}: annotation {ann.get('id')} has category_id "
                                f"{ann.get('category_id')!r}, which is not in its categories "
                                f"{sorted(self.coco.cats)}")
        cats = sorted(self.coco.loadCats(self.coco.getCatIds()), key=lambda c: c["id"])
        if categories:
            by_name = {c["name"]: c for c in cats}
            missing = [n for n in categories if n not in by_name]
            if missing:
                raise DataError(f"{self.annotation_file}: categories {missing} are not in the file "
                                f"(it has {sorted(by_name)})")
            cats = [by_name[n] for n in categories]
        self.cat_to_label = {c["id"]: i for i, c in enumerate(cats)}
        names = [c["name"] for c in cats]
        self.classes = {"detection": names}
        if not float(depth_scale) > 0:
            raise DataError(f"{self.annotation_file}: depth_scale must be > 0 metres per unit, got {depth_scale!r}")
        self.depth_scale = float(depth_scale)

        available = ["detection"]
        if any("segmentation" in a for a in self.coco.anns.values()):
            available.append("segmentation")
        if depth_dir is not None:
            available.append("depth")
        if normals_dir is not None:
            available.append("normals")
        if tasks is not None:  # the model's tasks: the others are not loaded (a detection model reads no masks)
            available = [t for t in available if t in tasks]
        self.tasks = tuple(available)
        self.background_label: int | None = None
        if "segmentation" in self.tasks:
            seg_names = list(names)
            if background is not None:
                if background not in seg_names:
                    seg_names.append(background)
                self.background_label = seg_names.index(background)
            self.classes["segmentation"] = seg_names
        self.depth_files = (_index_folder(self._under_root(depth_dir), _DEPTH_SUFFIXES, "depth")
                            if "depth" in self.tasks else {})
        self.normal_files = (_index_folder(self._under_root(normals_dir), (".npy",), "normals")
                             if "normals" in self.tasks else {})

        ids = sorted(self.coco.getImgIds())
        if skip_empty:
            ids = [i for i in ids if any(not a.get("iscrowd", 0) and a["category_id"] in self.cat_to_label
                                         for a in self.coco.imgToAnns.get(i, []))]
        self.image_ids = self._require_nonempty(ids, self.annotation_file, "image entries")

    def _under_root(self, folder: str) -> Path:
        path = Path(folder)
        return path if path.is_absolute() else self.root / path

    def layout_hint(self) -> str:
        return "an image folder and a COCO json whose images' file_name are relative to it"

    def __len__(self) -> int:
        return len(self.image_ids)

    def _anns(self, image_id: int) -> list[dict]:
        return [a for a in self.coco.imgToAnns.get(image_id, []) if a["category_id"] in self.cat_to_label]

    def targets(self, image_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """xyxy boxes, contiguous labels and crowd flags (``iscrowd``) of an image's annotations of the kept
        categories, in file order."""
        anns = self._anns(image_id)
        xywh = np.array([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
        labels = np.array([self.cat_to_label[a["category_id"]] for a in anns], np.int64)
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], bool)
        return boxes, labels, crowd

    def _mask(self, ann: dict, height: int, width: int) -> np.ndarray:
        """The H x W bool mask of an annotation's polygon(s) or RLE (compressed or not), clipped to the image."""
        from pycocotools import mask as mask_utils

        seg = ann["segmentation"]
        where = f"{self.annotation_file}: annotation {ann.get('id')}"
        try:
            if isinstance(seg, list):  # polygons [[x0, y0, x1, y1, ...], ...]: rasterised on the image's grid
                polys = [[float(v) for v in p] for p in seg if len(p) >= 6]
                if len(polys) != len(seg) or any(len(p) % 2 for p in polys):
                    raise DataError(f"{where}: polygons need an even number (>= 6) of coordinates, got lengths "
                                    f"{[len(p) for p in seg]}")
                rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
            elif isinstance(seg, dict) and "counts" in seg and "size" in seg:
                if list(seg["size"]) != [height, width]:
                    raise DataError(f"{where}: RLE of size {seg['size']} for an image of {height}x{width}")
                rle = mask_utils.frPyObjects(seg, height, width) if isinstance(seg["counts"], list) else seg
            else:
                raise DataError(f"{where}: segmentation is neither polygons nor an RLE dict with counts and size")
            return mask_utils.decode(rle).astype(bool)
        except DataError:
            raise
        except (TypeError, ValueError, KeyError, IndexError) as err:
            raise DataError(f"{where}: unreadable segmentation ({err!r})") from None

    def semantic(self, image_id: int, height: int, width: int) -> np.ndarray:
        """The H x W uint8 semantic map of an image (see the module docstring for the painting rule)."""
        fill = IGNORE_INDEX if self.background_label is None else self.background_label
        out = np.full((height, width), fill, np.uint8)
        painted = []
        for ann in self._anns(image_id):
            value = IGNORE_INDEX if ann.get("iscrowd", 0) else self.cat_to_label[ann["category_id"]]
            if ann.get("segmentation"):
                mask = self._mask(ann, height, width)
            else:  # a box-only annotation: its pixels are unknown, not background
                x, y, w, h = (float(v) for v in ann["bbox"])
                mask = np.zeros((height, width), bool)
                mask[max(int(np.floor(y)), 0):max(int(np.ceil(y + h)), 0),
                     max(int(np.floor(x)), 0):max(int(np.ceil(x + w)), 0)] = True
                value = IGNORE_INDEX
            painted.append((int(mask.sum()), mask, value))
        # Largest first, so smaller masks stay on top; sorted() is stable, so equal areas keep the file order.
        for _, mask, value in sorted(painted, key=lambda p: -p[0]):
            out[mask] = value
        return out

    def _depth(self, path: Path, size: tuple[int, int]) -> np.ndarray:
        if path.suffix.lower() == ".npy":
            depth = _load_npy(path, "depth")
            if depth.ndim == 3 and depth.shape[2] == 1:
                depth = depth[..., 0]
            if not np.issubdtype(depth.dtype, np.floating) and not np.issubdtype(depth.dtype, np.integer):
                raise DataError(f"{path}: depth of dtype {depth.dtype}, expected numbers (metres)")
            depth = depth.astype(np.float32)
        else:
            raw = read_label_image(path, "depth")
            if raw.dtype not in (np.uint8, np.uint16):
                raise DataError(f"{path}: expected an 8- or 16-bit depth PNG, got {raw.dtype}")
            depth = raw.astype(np.float32) * np.float32(self.depth_scale)
        if depth.shape != size:
            raise DataError(f"{path}: depth map of size {'x'.join(map(str, depth.shape))} does not match the "
                            f"image's {size[0]}x{size[1]}")
        return depth

    def load(self, index: int) -> dict:
        from perception.data.datasets.nyuv2 import _unit_normals

        info = self.coco.imgs[self.image_ids[index]]
        path = self.root / info["file_name"]
        image = read_image(path)
        if "height" in info and "width" in info and (info["height"], info["width"]) != image.shape[:2]:
            raise DataError(f"{path}: image is {image.shape[0]}x{image.shape[1]} but {self.annotation_file} says "
                            f"{info['height']}x{info['width']}")
        height, width = image.shape[:2]
        boxes, labels, crowd = self.targets(info["id"])
        where = f"{self.annotation_file} (image id {info['id']}, {info['file_name']})"
        files = {"image": str(path), "boxes": where}
        sample = {"image": image, "boxes": boxes, "labels": labels, "crowd": crowd}
        if "segmentation" in self.tasks:
            sample["semantic"] = self.semantic(info["id"], height, width)
            files["semantic"] = where
        stem = Path(info["file_name"]).stem
        if stem in self.depth_files:
            sample["depth"] = self._depth(self.depth_files[stem], (height, width))
            files["depth"] = str(self.depth_files[stem])
        if stem in self.normal_files:
            npath = self.normal_files[stem]
            sample["normals"] = _unit_normals(_load_npy(npath, "normals"), (height, width), npath)
            files["normals"] = str(npath)
        sample["meta"] = {"path": str(path), "dataset": self.name, "orig_size": image.shape[:2],
                          "image_id": info["id"], "files": files}
        return sample
