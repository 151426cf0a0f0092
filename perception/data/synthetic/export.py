"""Write synthetic scenes to disk in the real Cityscapes layout, so that they go through the Cityscapes loader.

    {root}/leftImg8bit/{split}/{city}/{city}_{seq:06d}_{frame:06d}_leftImg8bit.png     RGB image
    {root}/gtFine/{split}/{city}/..._gtFine_labelIds.png                                 uint8 labelIds
    {root}/gtFine/{split}/{city}/..._gtFine_instanceIds.png                              uint16 id * 1000 + k
    {root}/disparity/{split}/{city}/..._disparity.png                                    uint16 p = 256 d + 1
    {root}/camera/{split}/{city}/..._camera.json                                         intrinsics, baseline

Instances too small or too occluded to get a box are written with their plain labelId (below 1000), the way
Cityscapes writes crowd regions, so the loader derives exactly the boxes the generator made. Pixels whose disparity
does not fit 16 bits (closer than baseline * fx / 256 m) and the sky are written as p = 0 (invalid).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from perception.data.synthetic.render import Frame
from perception.data.synthetic.scene import SKY, SceneLayout

MAX_DISPARITY_CODE = 65535


def train_to_label_id() -> np.ndarray:
    """trainId (0..18) -> Cityscapes labelId, from cityscapesscripts' table."""
    from cityscapesscripts.helpers.labels import trainId2label

    lut = np.zeros(256, np.uint8)
    for train_id in range(19):
        lut[train_id] = trainId2label[train_id].id
    return lut


def encode_disparity(depth: np.ndarray, fx: float, baseline: float) -> np.ndarray:
    """Depth (metres, 0 = none) -> Cityscapes disparity PNG values: p = round(256 * baseline * fx / depth) + 1."""
    with np.errstate(divide="ignore"):
        disparity = np.where(depth > 0, baseline * fx / np.maximum(depth, 1e-12), 0.0)
    code = np.round(disparity * 256.0) + 1.0
    valid = (depth > 0) & (code <= MAX_DISPARITY_CODE) & (code >= 2)  # p = 1 would be zero disparity
    return np.where(valid, code, 0).astype(np.uint16)


def instance_ids(frame: Frame, label_ids: np.ndarray) -> np.ndarray:
    """The instanceIds image: id * 1000 + k for instances with a box, the plain labelId elsewhere."""
    out = label_ids.astype(np.uint16)
    counters: dict[int, int] = {}
    lut = train_to_label_id()
    for k in frame.box_instance:
        label_id = int(lut[frame.instance_kind[k]])
        index = counters.get(label_id, 0)
        counters[label_id] = index + 1
        out[frame.instance == k] = label_id * 1000 + index
    return out


def write_cityscapes_frame(root: str | os.PathLike, split: str, city: str, seq: int, frame_id: int,
                           layout: SceneLayout, frame: Frame) -> dict[str, Path]:
    """Write one rendered frame in the Cityscapes layout; returns the files written by type."""
    root = Path(root)
    stem = f"{city}_{seq:06d}_{frame_id:06d}"
    paths = {"image": root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
             "labelIds": root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png",
             "instanceIds": root / "gtFine" / split / city / f"{stem}_gtFine_instanceIds.png",
             "disparity": root / "disparity" / split / city / f"{stem}_disparity.png",
             "camera": root / "camera" / split / city / f"{stem}_camera.json"}
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    label_ids = train_to_label_id()[frame.semantic]
    depth = np.where(frame.semantic == SKY, 0.0, frame.depth)
    cam = layout.camera
    _imwrite(paths["image"], cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR))
    _imwrite(paths["labelIds"], label_ids)
    _imwrite(paths["instanceIds"], instance_ids(frame, label_ids))
    _imwrite(paths["disparity"], encode_disparity(depth, cam.fx, cam.baseline))
    paths["camera"].write_text(json.dumps(cam.to_cityscapes_json(), indent=2), encoding="utf-8")
    return paths


def _imwrite(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise OSError(f"{path}: OpenCV could not write the image")


def export_cityscapes(root: str | os.PathLike, split: str = "train", num_images: int = 10,
                      size: Sequence[int] = (512, 1024), seed: int = 0, city: str = "synthtown",
                      density: float = 1.0) -> list[dict[str, Path]]:
    """Render ``num_images`` scenes of ``split`` and write them under ``root`` in the Cityscapes layout.

    Args:
        root: dataset root (created).
        split: ``train``, ``val`` or ``test`` (the same scenes as ``SyntheticDrivingDataset`` of that split).
        num_images: scenes to write (indices 0 .. num_images - 1).
        size: (H, W) of the images.
        seed: base seed of the scenes.
        city: the city folder and file-name prefix.
        density: multiplies the expected number of road users.

    Returns:
        The files written, one dict per image.
    """
    from perception.data.synthetic import render_frame

    written = []
    for index in range(num_images):
        layout, frame = render_frame(index, split, seed, int(size[0]), int(size[1]), density)
        written.append(write_cityscapes_frame(root, split, city, 0, index, layout, frame))
    return written
