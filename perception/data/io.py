"""Reading files with errors that name the file and the problem, and checking samples against the contract.

Every reader raises :class:`DataError` (a ``ValueError``) for a missing, truncated or undecodable file; the
dataset wrapper either stops with it or, under ``skip_bad``, skips the sample and reports it.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import cv2
import numpy as np

from perception.data.batch import IGNORE_INDEX
from perception.utils import images

BOX_TOLERANCE = 1.0  # pixels a box may stick out of its image (rounding in annotation tools); it is clipped


class DataError(ValueError):
    """A sample that cannot be used: the message names the file and what is wrong with it."""


def require_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path, or a DataError naming the missing ``what``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: missing {what} file")
    return path


@contextlib.contextmanager
def _as_data_error() -> Iterator[None]:
    # The file readers live in perception.utils.images (shared with the predictor); here their errors are the
    # data layer's, which the dataset wrapper knows how to stop with or skip.
    try:
        yield
    except images.ImageReadError as err:
        raise DataError(str(err)) from None


def _read_bytes(path: Path, what: str) -> np.ndarray:
    with _as_data_error():
        return images.read_file_bytes(path, what)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An RGB image as ndarray[H, W, 3] uint8 (:func:`perception.utils.images.read_image`).

    Raises:
        DataError: the file is missing, empty, truncated or not an image.
    """
    with _as_data_error():
        return images.read_image(path)


def read_label_image(path: str | os.PathLike, what: str, dtype: type | None = None) -> np.ndarray:
    """A single-channel label image (ids, instance ids, disparity, depth) exactly as stored.

    Args:
        path: PNG file.
        what: what it holds, for error messages (``"semantic label"``, ``"disparity"``, ...).
        dtype: the expected dtype (np.uint8 or np.uint16); another one is an error.
    """
    path = Path(path)
    data = _read_bytes(path, what)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DataError(f"{path}: cannot decode the {what} image (truncated or not an image file)")
    if image.ndim != 2:
        raise DataError(f"{path}: expected a single-channel {what} image, got shape {image.shape}")
    if dtype is not None and image.dtype != dtype:
        raise DataError(f"{path}: expected a {np.dtype(dtype).name} {what} image, got {image.dtype}")
    return image


def read_json(path: str | os.PathLike, what: str) -> Any:
    path = require_file(path, what)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: invalid {what} JSON ({err})") from None


def _source(sample: dict, key: str) -> str:
    files = sample.get("meta", {}).get("files", {})
    return str(files.get(key) or files.get("image") or sample.get("meta", {}).get("path", "<sample>"))


def check_sample(sample: dict, num_classes: dict[str, int] | None = None) -> dict:
    """Check a raw sample against the Sample contract; returns it with boxes clipped into the image.

    Args:
        sample: a raw sample (numpy arrays at the original size); ``meta["files"]`` names its files.
        num_classes: ``{"detection": C_det, "segmentation": C_seg}`` bounds for the label ids.

    Raises:
        DataError: naming the offending file: a wrong shape or dtype, a label or semantic id outside the table,
            depth that is NaN, infinite or negative, a box outside the image or of zero area.
    """
    num_classes = num_classes or {}
    image = sample.get("image")
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        desc = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise DataError(f"{_source(sample, 'image')}: expected an H x W x 3 uint8 RGB image, got {desc}")
    height, width = image.shape[:2]
    for key, what in (("semantic", "semantic label"), ("depth", "depth")):
        if key in sample and sample[key].shape != (height, width):
            raise DataError(f"{_source(sample, key)}: {what} map of size {_hw(sample[key].shape)} does not match "
                            f"the image's {height}x{width}")
    if "semantic" in sample:
        _check_semantic(sample["semantic"], num_classes.get("segmentation"), _source(sample, "semantic"))
    if "depth" in sample:
        _check_depth(sample["depth"], _source(sample, "depth"))
    if "boxes" in sample:
        sample["boxes"] = _check_boxes(sample["boxes"], sample["labels"], height, width,
                                       num_classes.get("detection"), _source(sample, "boxes"))
        if "crowd" in sample:
            crowd = np.asarray(sample["crowd"])
            if crowd.shape != (len(sample["boxes"]),) or crowd.dtype != bool:
                raise DataError(f"{_source(sample, 'boxes')}: crowd flags of shape {crowd.shape} and dtype "
                                f"{crowd.dtype} for {len(sample['boxes'])} boxes (expected one bool per box)")
    return sample


def _hw(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape)


def _check_semantic(semantic: np.ndarray, num_classes: int | None, source: str) -> None:
    if num_classes is None:
        return
    bad = (semantic >= num_classes) & (semantic != IGNORE_INDEX) | (semantic < 0)
    if bad.any():
        ids = np.unique(semantic[bad])
        raise DataError(f"{source}: semantic ids {ids[:10].tolist()} are outside the label table (0..{num_classes - 1}"
                        f" or {IGNORE_INDEX} = ignore) at {int(bad.sum())} pixels")


def _check_depth(depth: np.ndarray, source: str) -> None:
    finite = np.isfinite(depth)
    if not finite.all():
        nan = int(np.isnan(depth).sum())
        raise DataError(f"{source}: depth has {nan} NaN and {int((~finite).sum()) - nan} infinite values "
                        "(expected metres, 0 = no measurement)")
    negative = depth < 0
    if negative.any():
        raise DataError(f"{source}: depth has {int(negative.sum())} negative values (min {float(depth.min()):.3g}); "
                        "expected metres, 0 = no measurement")


def _check_boxes(boxes: np.ndarray, labels: np.ndarray, height: int, width: int, num_classes: int | None,
                 source: str) -> np.ndarray:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    labels = np.asarray(labels)
    if len(labels) != len(boxes):
        raise DataError(f"{source}: {len(boxes)} boxes but {len(labels)} labels")
    if not np.isfinite(boxes).all():
        raise DataError(f"{source}: boxes contain NaN or infinite coordinates")
    zero = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if zero.any():
        raise DataError(f"{source}: box {boxes[zero][0].tolist()} has zero or negative area (expected x0 < x1, "
                        "y0 < y1)")
    tol = BOX_TOLERANCE
    outside = ((boxes[:, 0] < -tol) | (boxes[:, 1] < -tol) | (boxes[:, 2] > width + tol)
               | (boxes[:, 3] > height + tol))
    if outside.any():
        raise DataError(f"{source}: box {boxes[outside][0].tolist()} lies outside the {height}x{width} image")
    if num_classes is not None and len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{source}: box labels {np.unique(labels)[:10].tolist()} are outside 0..{num_classes - 1}")
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    if ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])).any():
        raise DataError(f"{source}: a box has no area inside the {height}x{width} image")
    return boxes
