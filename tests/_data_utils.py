"""Tiny fixtures in the real on-disk formats, written by the tests themselves."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array), path
    return path


def write_rgb(path: Path, rgb: np.ndarray) -> Path:
    return write_png(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def cityscapes_frame(root: Path, split: str, city: str, stem: str, image: np.ndarray, label_ids: np.ndarray,
                     instance_ids: np.ndarray, disparity: np.ndarray, baseline: float = 0.2, fx: float = 1000.0,
                     polygons: dict | None = None) -> dict[str, Path]:
    """Write one frame in the Cityscapes layout; returns its files."""
    ann = root / "gtFine" / split / city
    files = {"image": write_rgb(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", image),
             "labelIds": write_png(ann / f"{stem}_gtFine_labelIds.png", label_ids.astype(np.uint8)),
             "instanceIds": write_png(ann / f"{stem}_gtFine_instanceIds.png", instance_ids.astype(np.uint16)),
             "disparity": write_png(root / "disparity" / split / city / f"{stem}_disparity.png",
                                    disparity.astype(np.uint16))}
    camera = root / "camera" / split / city / f"{stem}_camera.json"
    camera.parent.mkdir(parents=True, exist_ok=True)
    camera.write_text(json.dumps({"extrinsic": {"baseline": baseline, "pitch": 0.0, "roll": 0.0, "yaw": 0.0,
                                                "x": 1.7, "y": 0.0, "z": 1.2},
                                  "intrinsic": {"fx": fx, "fy": fx, "u0": image.shape[1] / 2,
                                                "v0": image.shape[0] / 2}}))
    files["camera"] = camera
    if polygons is not None:
        files["polygons"] = ann / f"{stem}_gtFine_polygons.json"
        files["polygons"].write_text(json.dumps(polygons))
    return files


def tiny_cityscapes(root: Path, split: str = "train", count: int = 2, height: int = 32,
                    width: int = 64) -> list[dict[str, Path]]:
    """``count`` frames: road below, sky above, a car (instance 26001) and a crowd of people (plain id 24)."""
    out = []
    for i in range(count):
        rng = np.random.default_rng(i)
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        label = np.full((height, width), 23, np.uint8)  # sky
        label[height // 2:] = 7  # road
        inst = label.astype(np.uint16).copy()
        label[10:20, 5 + i:15 + i] = 26  # car
        inst[10:20, 5 + i:15 + i] = 26000 + 1
        label[4:8, 40:50] = 24  # a crowd of people: plain id, no box
        inst[4:8, 40:50] = 24
        disparity = np.zeros((height, width), np.uint16)
        disparity[height // 2:] = 1 + 256 * 8  # d = 8 px
        disparity[10:20, 5 + i:15 + i] = 1 + 256 * 20  # d = 20 px
        out.append(cityscapes_frame(root, split, "aachen", f"aachen_{i:06d}_000019", image, label, inst, disparity))
    return out


def write_coco(root: Path, images: list[tuple[str, np.ndarray]], annotations: list[dict],
               categories: list[tuple[int, str]]) -> Path:
    """A COCO json next to ``images`` (file name, RGB array) written under ``root``."""
    entries = []
    for i, (name, image) in enumerate(images):
        write_rgb(root / name, image)
        entries.append({"id": i + 1, "file_name": name, "height": image.shape[0], "width": image.shape[1]})
    anns = [{"id": k + 1, "area": a["bbox"][2] * a["bbox"][3], "iscrowd": 0, **a} for k, a in enumerate(annotations)]
    path = root / "annotations.json"
    path.write_text(json.dumps({"images": entries, "annotations": anns,
                                "categories": [{"id": i, "name": n} for i, n in categories]}))
    return path
