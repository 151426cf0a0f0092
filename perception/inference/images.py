"""Reading and checking input images: every accepted form becomes ndarray[H, W, 3] uint8 RGB.

Colour convention: the toolkit works in **RGB**. Arrays straight from OpenCV (``cv2.imread``,
``cv2.VideoCapture.read``) are BGR: pass ``bgr=True``. Grayscale (H x W or H x W x 1) is replicated to three
channels; a fourth (alpha) channel is dropped. Anything else is refused with an error that says what was expected.
"""
from __future__ import annotations

import cv2
import numpy as np

from perception.utils.images import IMAGE_EXTENSIONS, ImageReadError, read_image  # noqa: F401 (the one reader)


def as_hwc3(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Check an image array and return it as ndarray[H, W, 3] uint8, channel order unchanged.

    Args:
        image: ndarray[H, W, 3], ndarray[H, W] or [H, W, 1] (grayscale, replicated) or [H, W, 4] (alpha
            dropped), dtype uint8.
        name: how to call the image in errors (e.g. its path or frame index).
    """
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array (H x W x 3 uint8) or a file path, got "
                        f"{type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"{name}: expected dtype uint8 (0..255), got {image.dtype}; convert first, e.g. "
                         "(x * 255).round().astype(np.uint8) for a 0..1 float image")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise ValueError(f"{name}: expected shape H x W x 3 (or H x W grayscale, H x W x 4 with alpha), got "
                         f"{image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{name}: the image is empty ({image.shape[0]}x{image.shape[1]})")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_RGBA2RGB)  # drops alpha; the channel order is kept
    return image


def as_rgb(image: np.ndarray, bgr: bool = False, name: str = "image") -> np.ndarray:
    """:func:`as_hwc3`, then B, G, R -> R, G, B when ``bgr`` (arrays from OpenCV)."""
    image = as_hwc3(image, name)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if bgr else image
