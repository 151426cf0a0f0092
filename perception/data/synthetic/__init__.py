"""Built-in synthetic driving scenes: procedural streets with exact depth, surface normal, semantic and box labels.

    sample = generate_scene(index=0, split="train", height=256, width=512)
    write_sequence_video("drive.mp4", num_frames=60, fps=10, size=(256, 512), seed=0)
    export_cityscapes("datasets/synthetic_cityscapes", split="train", num_images=100, size=(512, 1024))

The images and labels are for tests and demos (a model can be trained and inspected with no download); real
results need the real datasets (see datasets/README.md).
"""
from __future__ import annotations

import numpy as np

from perception.data.synthetic.camera import PinholeCamera
from perception.data.synthetic.render import Frame, render_layout
from perception.data.synthetic.scene import SceneLayout, sample_layout

SPLITS = {"train": 0, "val": 1, "test": 2}


def scene_rng(index: int, split: str = "train", seed: int = 0) -> np.random.Generator:
    """The random generator of scene ``index`` of ``split``: splits never share a scene."""
    if split not in SPLITS:
        raise ValueError(f"split: got {split!r}, expected one of {', '.join(SPLITS)}")
    if index < 0:
        raise IndexError(f"scene index {index} is negative")
    return np.random.default_rng(np.random.SeedSequence([seed, SPLITS[split], index]))


def render_frame(index: int, split: str = "train", seed: int = 0, height: int = 256, width: int = 512,
                 density: float = 1.0) -> tuple[SceneLayout, Frame]:
    """Layout and rendered frame of scene ``index`` (a pure function of its arguments)."""
    rng = scene_rng(index, split, seed)
    layout = sample_layout(rng, width, height, density=density)
    return layout, render_layout(layout, rng=rng)


def frame_to_sample(layout: SceneLayout, frame: Frame, path: str) -> dict:
    """A Sample dict (see ``perception.data.batch``) from a rendered frame."""
    height, width = frame.depth.shape
    return {"image": frame.image, "boxes": frame.boxes, "labels": frame.labels,
            "semantic": frame.semantic.astype(np.int64), "depth": frame.depth, "normals": frame.normals,
            "drivable": frame.drivable.astype(np.int64), "lanes": frame.lanes.astype(np.int64),
            "meta": {"path": path, "dataset": "synthetic", "orig_size": (height, width),
                     "camera": layout.camera.to_meta(), "files": {}}}


def generate_scene(index: int, split: str = "train", seed: int = 0, height: int = 256, width: int = 512,
                   density: float = 1.0) -> dict:
    """Scene ``index`` of ``split`` as a Sample: image, boxes, labels (8 Cityscapes instance classes),
    semantic (Cityscapes trainIds), depth (metres, 0 = sky), normals (camera-frame unit vectors, 0 = sky),
    drivable (0 ego lane, 1 other lanes, 2 background: BDD100K's codes), lanes (1 on painted markings, else 0)
    and meta with the camera intrinsics."""
    layout, frame = render_frame(index, split, seed, height, width, density)
    return frame_to_sample(layout, frame, f"synthetic://{split}/{seed}/{index}")


from perception.data.synthetic.export import export_cityscapes  # noqa: E402
from perception.data.synthetic.sequence import render_sequence, write_sequence_video  # noqa: E402

__all__ = ["Frame", "PinholeCamera", "SceneLayout", "export_cityscapes", "frame_to_sample", "generate_scene",
           "render_frame", "render_layout", "render_sequence", "sample_layout", "scene_rng", "write_sequence_video"]
