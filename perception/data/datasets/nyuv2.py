"""NYUv2 (indoor scenes, segmentation, depth and, in the MTAN layout, surface normals; no boxes) in three layouts.

* ``nyuv2_mat``: the official ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3 = HDF5) with ``splits.mat``
  (795 train / 654 test) and the 894 -> 40 -> 13 class mappings from files the user provides.
* ``nyuv2_mtan``: the preprocessed layout of the multi-task benchmarks (MTAN, LibMTL):
  ``{root}/{train,val}/{image,label,depth,normal}/{i}.npy``, image float 0..1, label -1 = ignore, depth metres,
  normal H x W x 3 in [-1, 1] (all three 0 = no normal).
* ``nyuv2_folder``: ``{root}[/{split}]/{rgb,depth,label}/{name}.png``: depth uint16 millimetres (0 = none),
  label uint8 class ids (255 = ignore).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from perception.data.batch import IGNORE_INDEX, LABEL_KEYS
from perception.data.datasets.base import BaseDataset
from perception.data.io import DataError, read_image, read_label_image, require_file

NYU13_CLASSES = ["bed", "books", "ceiling", "chair", "floor", "furniture", "objects", "picture", "sofa", "table",
                 "tv", "wall", "window"]
NYU40_CLASSES = ["wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
                 "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror",
                 "floor mat", "clothes", "ceiling", "books", "refridgerator", "television", "paper", "towel",
                 "shower curtain", "box", "whiteboard", "person", "night stand", "toilet", "sink", "lamp", "bathtub",
                 "bag", "otherstructure", "otherfurniture", "otherprop"]
NUM_RAW_CLASSES = 894


def _find_vector(obj: Any, length: int) -> np.ndarray | None:
    """The first numeric array of ``length`` elements inside a loaded .mat structure (dicts, structs, cells)."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not str(key).startswith("__"):
                found = _find_vector(value, length)
                if found is not None:
                    return found
        return None
    if isinstance(obj, np.ndarray):
        if obj.dtype.names:
            for name in obj.dtype.names:
                for item in obj[name].ravel():
                    found = _find_vector(item, length)
                    if found is not None:
                        return found
            return None
        if obj.dtype == object:
            for item in obj.ravel():
                found = _find_vector(item, length)
                if found is not None:
                    return found
            return None
        if np.issubdtype(obj.dtype, np.number) and obj.size == length:
            return obj.ravel()
    return None


def _load_mat(path: Path) -> dict:
    """A .mat file as a dict: scipy for MATLAB v5 files, h5py (arrays read whole) for v7.3."""
    import scipy.io

    try:
        return scipy.io.loadmat(str(path))
    except NotImplementedError:  # v7.3: HDF5
        import h5py

        with h5py.File(path, "r") as f:
            return {k: np.asarray(v) for k, v in f.items() if isinstance(v, h5py.Dataset)}
    except (ValueError, OSError, TypeError) as err:
        raise DataError(f"{path}: cannot read the .mat file ({err})") from None


def load_mapping(path: str | os.PathLike, length: int, what: str) -> np.ndarray:
    """A class mapping vector (1-based target classes, 0 = unlabelled) of ``length`` source classes.

    Accepts a .mat file (any numeric array of that length inside it, e.g. ``mapClass`` of ``classMapping40.mat``
    or the ``classMapping`` field of ``class13Mapping.mat``), a .npy file, or a text file of integers.
    """
    path = require_file(path, what)
    if path.suffix == ".mat":
        vector = _find_vector(_load_mat(path), length)
    elif path.suffix == ".npy":
        vector = np.load(path, allow_pickle=False).ravel()
    else:
        try:
            vector = np.array(path.read_text(encoding="utf-8").replace(",", " ").split(), np.float64)
        except ValueError as err:
            raise DataError(f"{path}: expected integers in the {what} file ({err})") from None
    if vector is None or vector.size != length:
        got = "no such array" if vector is None else f"{vector.size} values"
        raise DataError(f"{path}: expected a {what} of {length} values, found {got}")
    vector = np.asarray(vector, np.float64)
    if (vector != np.round(vector)).any() or (vector < 0).any():
        raise DataError(f"{path}: the {what} must hold non-negative integers")
    return vector.astype(np.int64)


def nyu_class_lut(num_classes: int, mapping_40: str | os.PathLike | None,
                  mapping_13: str | os.PathLike | None) -> np.ndarray:
    """LUT[895] from the raw NYUv2 labels (0 = unlabelled, 1..894) to 0-based classes (255 = ignore).

    Args:
        num_classes: 894 (raw: for inspection, as training takes at most 255 classes), 40 or 13.
        mapping_40: file of the 894 -> 40 mapping (needed for 40 and 13).
        mapping_13: file of the 40 -> 13 mapping (needed for 13).
    """
    raw = np.arange(NUM_RAW_CLASSES + 1)
    if num_classes == NUM_RAW_CLASSES:
        classes = raw
    else:
        if not mapping_40:
            raise ValueError(f"classes={num_classes} needs the option mapping_40 (the 894 -> 40 mapping file)")
        to40 = np.concatenate([[0], load_mapping(mapping_40, NUM_RAW_CLASSES, "894 -> 40 class mapping")])
        if to40.max() > 40:
            raise DataError(f"{mapping_40}: 894 -> 40 mapping has values up to {to40.max()}, expected 0..40")
        classes = to40
        if num_classes == 13:
            if not mapping_13:
                raise ValueError("classes=13 needs the option mapping_13 (the 40 -> 13 mapping file)")
            to13 = np.concatenate([[0], load_mapping(mapping_13, 40, "40 -> 13 class mapping")])
            if to13.max() > 13:
                raise DataError(f"{mapping_13}: 40 -> 13 mapping has values up to {to13.max()}, expected 0..13")
            classes = to13[to40]
        elif num_classes != 40:
            raise ValueError(f"classes: got {num_classes}, expected 13, 40 or 894")
    return np.where(classes > 0, classes - 1, IGNORE_INDEX).astype(np.int64)


def _class_names(num_classes: int) -> list[str]:
    if num_classes == 13:
        return list(NYU13_CLASSES)
    if num_classes == 40:
        return list(NYU40_CLASSES)
    return [f"nyu{i + 1}" for i in range(num_classes)]


def _check_tasks(tasks: Sequence[str] | None, labelled: Sequence[str] = ("segmentation", "depth"),
                 default: Sequence[str] = ("segmentation", "depth")) -> tuple[str, ...]:
    """The wanted tasks that the layout labels (``labelled``; ``default`` when none of them is wanted)."""
    for task in tasks or ():
        if task not in LABEL_KEYS:
            raise ValueError(f"tasks: unknown task {task!r}; expected some of {', '.join(LABEL_KEYS)}")
    kept = tuple(t for t in labelled if t in (tasks or ()))
    return kept or tuple(default)


class NYUv2MatDataset(BaseDataset):
    """The official labeled NYUv2 file.

    MATLAB stores arrays column-major, so h5py reads them with reversed axes: ``images`` [N, 3, W, H],
    ``depths`` and ``labels`` [N, W, H]; they are transposed back to H x W (x 3).

    Args:
        root: the ``nyu_depth_v2_labeled.mat`` file, or the folder holding it.
        split: ``train`` (795 images) or ``val`` / ``test`` (the 654 test images).
        splits: the official ``splits.mat`` (``trainNdxs`` / ``testNdxs``, 1-based); default next to the file.
        classes: 13, 40 or 894.
        mapping_40: the 894 -> 40 mapping file (e.g. ``classMapping40.mat``).
        mapping_13: the 40 -> 13 mapping file (e.g. ``class13Mapping.mat``).
        depth_key: ``depths`` (in-painted) or ``rawDepths``.
        tasks: which labels to load.
    """

    name = "nyuv2"

    def __init__(self, root: str | os.PathLike, split: str = "train", splits: str | None = None, classes: int = 13,
                 mapping_40: str | None = None, mapping_13: str | None = None, depth_key: str = "depths",
                 tasks: Sequence[str] | None = None) -> None:
        super().__init__(root, split)
        self.tasks = _check_tasks(tasks)
        path = Path(root)
        self.path = require_file(path / "nyu_depth_v2_labeled.mat" if path.is_dir() else path, "NYUv2 labeled .mat")
        split_file = require_file(Path(splits) if splits else self.path.parent / "splits.mat", "NYUv2 splits.mat")
        key = "trainNdxs" if split == "train" else "testNdxs"
        split_data = _load_mat(split_file)
        if key not in split_data:
            raise DataError(f"{split_file}: no {key!r} array (expected the official splits.mat)")
        self.indices = np.asarray(split_data[key], np.int64).ravel() - 1  # MATLAB indices are 1-based
        self.lut = nyu_class_lut(classes, mapping_40, mapping_13)
        self.classes = {"segmentation": _class_names(classes)}
        self.depth_key = depth_key
        self._file = None
        with self._open() as f:
            for needed in ("images", depth_key, "labels"):
                if needed not in f:
                    raise DataError(f"{self.path}: no {needed!r} dataset (expected the labeled NYUv2 .mat v7.3)")
            count = f["images"].shape[0]
        if len(self.indices) == 0 or self.indices.min() < 0 or self.indices.max() >= count:
            raise DataError(f"{split_file}: {key} indexes images outside 1..{count} of {self.path}")

    def _open(self):
        import h5py

        try:
            return h5py.File(self.path, "r")
        except OSError as err:
            raise DataError(f"{self.path}: cannot open as HDF5 / MATLAB v7.3 ({err})") from None

    def __getstate__(self) -> dict:  # an open HDF5 handle does not survive pickling to DataLoader workers
        return {**self.__dict__, "_file": None}

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, index: int) -> dict:
        if self._file is None:
            self._file = self._open()
        f, i = self._file, int(self.indices[index])
        image = np.ascontiguousarray(np.asarray(f["images"][i]).transpose(2, 1, 0))
        if image.dtype != np.uint8:
            raise DataError(f"{self.path}: images are {image.dtype}, expected uint8")
        where = f"{self.path}[{i}]"
        sample: dict = {"image": image, "meta": {"path": where, "dataset": self.name, "orig_size": image.shape[:2],
                                                 "files": {"image": where}}}
        if "segmentation" in self.tasks:
            raw = np.asarray(f["labels"][i]).T.astype(np.int64)
            if raw.min() < 0 or raw.max() > NUM_RAW_CLASSES:
                bad = np.unique(raw[(raw < 0) | (raw > NUM_RAW_CLASSES)])
                raise DataError(f"{where}: labels {bad[:10].tolist()} are outside 0..{NUM_RAW_CLASSES}")
            sample["semantic"] = self.lut[raw]
        if "depth" in self.tasks:
            sample["depth"] = np.ascontiguousarray(np.asarray(f[self.depth_key][i]).T, dtype=np.float32)
        return sample


class NYUv2MTANDataset(BaseDataset):
    """The preprocessed NYUv2 of MTAN / LibMTL: ``{root}/{train,val}/{image,label,depth,normal}/{i}.npy``.

    ``normal/{i}.npy`` holds H x W x 3 surface normals in [-1, 1]; a pixel whose three values are all 0 has none
    (the Sample's ``normals`` keeps it 0, and the others are scaled to unit length).

    Args:
        root: the folder holding ``train`` and ``val``.
        split: ``train`` or ``val`` (``test`` reads ``val``, as those benchmarks do).
        tasks: which labels to load (default: segmentation and depth, and normals when ``normal/`` exists).
    """

    name = "nyuv2_mtan"
    SUBDIRS = {"segmentation": "label", "depth": "depth", "normals": "normal"}

    def __init__(self, root: str | os.PathLike, split: str = "train", tasks: Sequence[str] | None = None) -> None:
        super().__init__(root, split)
        self.classes = {"segmentation": list(NYU13_CLASSES)}
        self.dir = self._require_dir(self.root / ("val" if split == "test" else split), "split")
        default = [t for t, sub in self.SUBDIRS.items() if t != "normals" or (self.dir / sub).is_dir()]
        self.tasks = _check_tasks(tasks, tuple(self.SUBDIRS), default)
        image_dir = self._require_dir(self.dir / "image", "image")
        for task, sub in self.SUBDIRS.items():
            if task in self.tasks:
                self._require_dir(self.dir / sub, sub)
        files = self._require_nonempty(list(image_dir.glob("*.npy")), image_dir, "*.npy")
        self.names = sorted((p.stem for p in files), key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))

    def layout_hint(self) -> str:
        return "{train,val}/{image,label,depth,normal}/{i}.npy"

    def __len__(self) -> int:
        return len(self.names)

    def _npy(self, sub: str, name: str) -> tuple[np.ndarray, Path]:
        path = require_file(self.dir / sub / f"{name}.npy", sub)
        try:
            return np.load(path, allow_pickle=False), path
        except (ValueError, OSError, EOFError) as err:
            raise DataError(f"{path}: cannot read the .npy file ({err})") from None

    def load(self, index: int) -> dict:
        name = self.names[index]
        image, path = self._npy("image", name)
        if image.ndim != 3 or image.shape[2] != 3:
            raise DataError(f"{path}: expected an H x W x 3 image, got shape {image.shape}")
        if image.dtype != np.uint8:
            if not np.isfinite(image).all():
                raise DataError(f"{path}: image has NaN or infinite values")
            # Stored as floats in 0..1 by the benchmarks' preprocessing.
            scale = 255.0 if image.max() <= 1.0 + 1e-6 else 1.0
            image = np.clip(np.rint(image * scale), 0, 255).astype(np.uint8)
        files = {"image": str(path)}
        sample: dict = {"image": image}
        if "segmentation" in self.tasks:
            label, lpath = self._npy("label", name)
            files["semantic"] = str(lpath)
            if not np.isfinite(label).all() or (label != np.round(label)).any():
                raise DataError(f"{lpath}: labels must be integers (-1 = ignore)")
            label = label.astype(np.int64)
            sample["semantic"] = np.where(label < 0, IGNORE_INDEX, label) if (label >= -1).all() else label
        if "depth" in self.tasks:
            depth, dpath = self._npy("depth", name)
            files["depth"] = str(dpath)
            sample["depth"] = np.ascontiguousarray(depth.reshape(depth.shape[:2]) if depth.ndim == 3 and
                                                   depth.shape[2] == 1 else depth, dtype=np.float32)
        if "normals" in self.tasks:
            normal, npath = self._npy("normal", name)
            files["normals"] = str(npath)
            sample["normals"] = _unit_normals(normal, image.shape[:2], npath)
        sample["meta"] = {"path": str(path), "dataset": self.name, "orig_size": image.shape[:2], "files": files}
        return sample


def _unit_normals(normal: np.ndarray, size: tuple[int, int], path: Path) -> np.ndarray:
    """An MTAN ``normal/{i}.npy`` array as unit normals (float32 H x W x 3, 0 where all three values are 0)."""
    if normal.shape != (*size, 3):
        raise DataError(f"{path}: expected H x W x 3 normals matching the image's {size[0]}x{size[1]}, got shape "
                        f"{normal.shape}")
    if not np.issubdtype(normal.dtype, np.floating):
        raise DataError(f"{path}: normals are {normal.dtype}, expected floats in [-1, 1]")
    normal = normal.astype(np.float32)
    if not np.isfinite(normal).all():
        raise DataError(f"{path}: normals have NaN or infinite values")
    if np.abs(normal).max(initial=0.0) > 1.0 + 1e-3:
        raise DataError(f"{path}: normal components reach {float(np.abs(normal).max()):.3g}, expected values in "
                        "[-1, 1] (all three 0 = no normal)")
    length = np.linalg.norm(normal, axis=-1, keepdims=True)
    # Stored rounded, so only about unit length: rescale the valid ones, keep the zero vector for "none".
    return np.where(length > 0, normal / np.maximum(length, 1e-12), 0.0).astype(np.float32)


class NYUv2FolderDataset(BaseDataset):
    """NYUv2-style PNG folders: ``{root}[/{split}]/rgb/{name}.png``, ``depth/{name}.png`` (uint16 millimetres,
    0 = none), ``label/{name}.png`` (uint8 class ids, 255 = ignore).

    Args:
        root: the folder (with or without per-split sub-folders).
        split: ``train``, ``val`` or ``test``.
        classes: 13 or 40 (the class names), or a list of names.
        tasks: which labels to load.
    """

    name = "nyuv2_folder"

    def __init__(self, root: str | os.PathLike, split: str = "train", classes: int | list[str] = 13,
                 tasks: Sequence[str] | None = None) -> None:
        super().__init__(root, split)
        self.tasks = _check_tasks(tasks)
        names = list(classes) if isinstance(classes, (list, tuple)) else _class_names(int(classes))
        self.classes = {"segmentation": names}
        self._require_dir(self.root, "dataset root")
        self.dir = self.root / split if (self.root / split).is_dir() else self.root
        rgb = self._require_dir(self.dir / "rgb", "rgb")
        self.files = self._require_nonempty(sorted(rgb.glob("*.png")) + sorted(rgb.glob("*.jpg")), rgb, "*.png")

    def layout_hint(self) -> str:
        return "[{split}/]rgb/*.png, depth/*.png (uint16 mm), label/*.png (uint8 ids)"

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> dict:
        path = self.files[index]
        image = read_image(path)
        files = {"image": str(path)}
        sample: dict = {"image": image}
        if "segmentation" in self.tasks:
            lpath = self.dir / "label" / f"{path.stem}.png"
            files["semantic"] = str(lpath)
            sample["semantic"] = read_label_image(lpath, "label", np.uint8).astype(np.int64)
        if "depth" in self.tasks:
            dpath = self.dir / "depth" / f"{path.stem}.png"
            files["depth"] = str(dpath)
            sample["depth"] = read_label_image(dpath, "depth", np.uint16).astype(np.float32) / np.float32(1000.0)
        sample["meta"] = {"path": str(path), "dataset": self.name, "orig_size": image.shape[:2], "files": files}
        return sample


def write_nyuv2_folder(root: str | os.PathLike, name: str, image: np.ndarray, semantic: np.ndarray | None = None,
                       depth: np.ndarray | None = None) -> None:
    """Write one sample in the ``nyuv2_folder`` layout (depth rounded to millimetres)."""
    import cv2

    if semantic is not None and (semantic.min() < 0 or semantic.max() > IGNORE_INDEX):
        raise ValueError(f"{root}/label/{name}.png: uint8 labels hold at most 255 classes (255 = ignore), got ids "
                         f"{int(semantic.min())}..{int(semantic.max())}")
    root = Path(root)
    for sub in ("rgb", "label", "depth"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(root / "rgb" / f"{name}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if semantic is not None:
        cv2.imwrite(str(root / "label" / f"{name}.png"), semantic.astype(np.uint8))
    if depth is not None:
        millimetres = np.clip(np.rint(depth * 1000.0), 0, 65535).astype(np.uint16)
        cv2.imwrite(str(root / "depth" / f"{name}.png"), millimetres)
