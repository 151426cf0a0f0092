"""Reading image files: the one reader of the data layer and the predictor, ndarray[H, W, 3] uint8 RGB.

Errors name the file and what is wrong with it: missing, empty, truncated or not an image OpenCV decodes.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class ImageReadError(ValueError):
    """An image file that is missing, empty, truncated or not an image; the message names the file."""


def read_file_bytes(path: str | os.PathLike, what: str = "image") -> np.ndarray:
    """The bytes of a file as ndarray[N] uint8 (what ``cv2.imdecode`` reads).

    Bytes rather than ``cv2.imread`` so that non-ASCII paths work on every platform.

    Raises:
        ImageReadError: the file is missing or empty (``what`` names it in the message).
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: missing {what} file")
    data = np.fromfile(str(path), dtype=np.uint8)
    if data.size == 0:
        raise ImageReadError(f"{path}: empty {what} file")
    return data


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as ndarray[H, W, 3] uint8 RGB (grayscale is replicated, alpha dropped).

    Raises:
        ImageReadError: the file is missing, empty, truncated or not an image.
    """
    data = read_file_bytes(path)
    # A JPEG cut short may still decode (the missing rows grey), so insist on its end-of-image marker.
    if data[:2].tobytes() == b"\xff\xd8" and b"\xff\xd9" not in data[-1024:].tobytes():
        raise ImageReadError(f"{path}: truncated JPEG (no end-of-image marker)")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise ImageReadError(f"{path}: cannot decode the image (truncated, or not an image format OpenCV reads: "
                             f"{', '.join(IMAGE_EXTENSIONS)})")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
