"""Where frames come from: an image file, a folder, a glob, a video file or a camera index.

    source = open_source("drive.mp4")          # or "street.png", "images/", "images/*.jpg", "0" (camera 0)
    for frame in source:                       # Frame(image=ndarray[H, W, 3] uint8 RGB, meta={...})
        ...
    source.skipped                             # ["path: reason", ...] of unreadable images in a folder run

Images of a folder or glob are read lazily in sorted order; one that cannot be read is skipped and recorded in
``skipped`` (a single image file that cannot be read is an error). Videos and cameras are read frame by frame
with OpenCV, so memory stays flat whatever their length; ``close()`` (or the ``with`` block) releases them.
"""
from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from perception.inference.images import IMAGE_EXTENSIONS, ImageReadError, read_image

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")


class SourceError(ValueError):
    """A source that does not exist, matches nothing, or cannot be opened."""


@dataclass
class Frame:
    """One image of a source.

    Attributes:
        image (ndarray[H, W, 3] uint8): RGB.
        meta: ``path`` (images) or ``frame`` index (video, camera), and ``source``.
    """

    image: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


class ImageSource:
    """Image files, read in the given order; unreadable ones are skipped (and recorded) when there are several.

    Args:
        paths: the image files.
        description: what the user asked for (for messages).
    """

    kind = "images"
    fps = None

    def __init__(self, paths: list[Path], description: str) -> None:
        self.paths = paths
        self.description = description
        self.skipped: list[str] = []

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[Frame]:
        for path in self.paths:
            try:
                image = read_image(path)
            except ImageReadError as err:
                if len(self.paths) == 1:
                    raise
                self.skipped.append(f"{path}: {err}")
                continue
            yield Frame(image, {"path": str(path)})

    def close(self) -> None:
        pass

    def __enter__(self) -> "ImageSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class VideoSource:
    """Frames of a video file or a camera, read one at a time with ``cv2.VideoCapture`` and converted to RGB.

    Args:
        target: a video path, or a camera index.

    Raises:
        SourceError: the file or camera cannot be opened, or the file has no frame.
    """

    def __init__(self, target: str | int) -> None:
        self.kind = "camera" if isinstance(target, int) else "video"
        self.description = f"camera {target}" if self.kind == "camera" else str(target)
        self.skipped: list[str] = []
        self._capture = cv2.VideoCapture(target)
        if not self._capture.isOpened():
            self._capture.release()
            if self.kind == "camera":
                raise SourceError(f"camera {target} could not be opened: no such device, or it is busy")
            raise SourceError(f"video {str(target)!r} could not be opened: not a video OpenCV can decode")
        fps = self._capture.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and np.isfinite(fps) and fps > 0 else 30.0
        count = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT)) if self.kind == "video" else 0
        self._count = count if count > 0 else None

    def __len__(self) -> int:
        if self._count is None:
            raise TypeError(f"{self.description}: the number of frames is unknown")
        return self._count

    @property
    def num_frames(self) -> int | None:
        """The frame count the container announces (None for cameras and containers that do not say)."""
        return self._count

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        while True:
            ok, bgr = self._capture.read()
            if not ok or bgr is None:
                break
            yield Frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), {"frame": index, "source": self.description})
            index += 1
        if index == 0 and self.kind == "video":
            raise SourceError(f"video {self.description!r} has no readable frame")

    def close(self) -> None:
        self._capture.release()

    def __enter__(self) -> "VideoSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def open_source(spec: str | os.PathLike | int) -> ImageSource | VideoSource:
    """Open what ``--source`` names.

    Args:
        spec: an image file, a folder (its images, sorted), a glob (``"data/*.png"``), a video file, or a camera
            index (an int, or a string of digits that is not an existing file).

    Raises:
        SourceError: naming ``spec`` when it does not exist, matches no image, or cannot be opened.
    """
    if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit() and not os.path.exists(spec)):
        return VideoSource(int(spec))
    text = str(spec)
    path = Path(text)
    if path.is_dir():
        images = _images_in(path)
        if not images:
            raise SourceError(f"folder {text!r} holds no image ({', '.join(IMAGE_EXTENSIONS)})")
        return ImageSource(images, text)
    if path.is_file():
        if path.suffix.lower() in VIDEO_EXTENSIONS:
            return VideoSource(text)
        return ImageSource([path], text)
    if glob.has_magic(text):
        matches = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
        images = [p for p in matches if p.suffix.lower() in IMAGE_EXTENSIONS]
        if not images:
            raise SourceError(f"glob {text!r} matches no image ({len(matches)} other files)")
        return ImageSource(images, text)
    raise SourceError(f"source {text!r} does not exist: expected an image, a folder, a glob, a video file or a "
                      "camera index")
