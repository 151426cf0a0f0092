"""Sequences: the camera drives forward through one synthetic street; frames and an OpenCV video of them."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

from perception.data.synthetic.render import Frame, render_layout
from perception.data.synthetic.scene import SceneLayout, sample_layout


def render_sequence(num_frames: int, fps: float = 10.0, size: Sequence[int] = (256, 512), seed: int = 0,
                    speed: float = 8.0, density: float = 1.0) -> Iterator[tuple[SceneLayout, Frame]]:
    """Frames of a drive at ``speed`` m/s through one street; other road users move at their own speeds.

    Args:
        num_frames: frames to render.
        fps: frames per second (the time step between frames is 1 / fps).
        size: (H, W) of the frames.
        seed: the street.
        speed: camera speed in metres per second.
        density: multiplies the expected number of road users.

    Yields:
        (layout, frame) per time step; every frame carries exact labels like a single scene.
    """
    if num_frames < 1 or fps <= 0:
        raise ValueError(f"num_frames and fps must be positive, got {num_frames} and {fps}")
    height, width = int(size[0]), int(size[1])
    duration = num_frames / fps
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
    layout = sample_layout(rng, width, height, travel=speed * duration, density=density)
    for i in range(num_frames):
        t = i / fps
        yield layout, render_layout(layout, cam_z=speed * t, time=t, rng=rng)


def write_sequence_video(path: str | os.PathLike, num_frames: int = 60, fps: float = 10.0,
                         size: Sequence[int] = (256, 512), seed: int = 0, speed: float = 8.0,
                         fourcc: str = "mp4v") -> Path:
    """Write a synthetic drive as a video file with OpenCV's VideoWriter.

    Args:
        path: output file (``.mp4`` with the default ``mp4v`` codec, ``.avi`` with ``MJPG``).
        num_frames: frames to write.
        fps: frames per second.
        size: (H, W) of the frames.
        seed: the street.
        speed: camera speed in metres per second.
        fourcc: four-character codec code.

    Returns:
        The path written.

    Raises:
        RuntimeError: OpenCV cannot open a writer for this path and codec.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = int(size[0]), int(size[1])
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), float(fps), (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"{path}: OpenCV cannot write a video with codec {fourcc!r}; try a .avi path with "
                           "fourcc='MJPG'")
    try:
        for _, frame in render_sequence(num_frames, fps, (height, width), seed, speed):
            writer.write(cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    return path
