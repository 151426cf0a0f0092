"""Tiny generated scenes with exact labels for all three tasks (test fixtures, made on the fly)."""
from __future__ import annotations

import numpy as np

# Semantic classes: 0 sky, 1 ground, 2 red block, 3 blue block. Detection classes: 0 red, 1 blue.
COLOURS = {0: (110, 160, 230), 1: (90, 90, 90), 2: (220, 40, 40), 3: (40, 60, 220)}


def toy_scene(rng: np.random.Generator, height: int = 128, width: int = 128, num_objects: int = 2) -> dict:
    """A sky/ground image with red and blue blocks side by side; boxes, semantic ids and depth are exact.

    Ground depth grows towards the horizon, the sky has no depth (0), and each block stands at one depth.
    """
    horizon = height // 3
    semantic = np.zeros((height, width), np.int64)
    semantic[horizon:] = 1
    rows = np.arange(height, dtype=np.float32)[:, None]
    ground = np.where(rows >= horizon, 40.0 / (1.0 + np.maximum(rows - horizon, 0) / 4.0), 0.0)
    depth = np.broadcast_to(ground, (height, width)).astype(np.float32).copy()
    band = width // num_objects
    boxes, labels = [], []
    for k in range(num_objects):
        cls = int(rng.integers(0, 2))
        w = int(rng.integers(band // 2, band - 4))
        h = int(rng.integers(height // 4, height // 2))
        x0 = k * band + int(rng.integers(0, band - w))
        y0 = int(rng.integers(horizon // 2, height - h))
        semantic[y0:y0 + h, x0:x0 + w] = 2 + cls
        depth[y0:y0 + h, x0:x0 + w] = 3.0 + 4.0 * k + 2.0 * cls
        boxes.append([x0, y0, x0 + w, y0 + h])
        labels.append(cls)
    image = np.zeros((height, width, 3), np.uint8)
    for cid, colour in COLOURS.items():
        image[semantic == cid] = colour
    image = np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
    return {"image": image, "boxes": np.array(boxes, np.float32), "labels": np.array(labels, np.int64),
            "semantic": semantic, "depth": depth}
