"""The synthetic driving scenes: determinism, exact geometry of depth, occlusion-aware boxes, variety, video."""
from __future__ import annotations

import math

import cv2
import numpy as np

from perception.data.synthetic import generate_scene, render_frame, write_sequence_video
from perception.data.synthetic.scene import PERSON, ROAD, SKY

H, W = 64, 128


def test_deterministic_and_split_by_seed():
    a, b = generate_scene(3, "train", 0, H, W), generate_scene(3, "train", 0, H, W)
    for key in ("image", "semantic", "depth", "boxes", "labels"):
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["image"], generate_scene(3, "val", 0, H, W)["image"])
    assert not np.array_equal(a["image"], generate_scene(3, "train", 1, H, W)["image"])
    assert not np.array_equal(a["image"], generate_scene(4, "train", 0, H, W)["image"])


def test_contract_and_ground_depth_from_geometry():
    for index in range(4):
        s = generate_scene(index, "train", 0, H, W)
        assert s["image"].shape == (H, W, 3) and s["image"].dtype == np.uint8
        assert s["semantic"].dtype == np.int64 and s["semantic"].max() <= 18
        sky = s["semantic"] == SKY
        assert (s["depth"][sky] == 0).all() and (s["depth"][~sky] > 0).all()
        cam = s["meta"]["camera"]
        rows = np.arange(H, dtype=np.float64)
        b = (rows - cam["v0"]) / cam["fy"]
        dy = b * math.cos(cam["pitch"]) + math.sin(cam["pitch"])  # ray's downward component per unit depth
        with np.errstate(divide="ignore"):
            ground = np.where(dy > 0, cam["height"] / dy, np.inf)  # depth where the ray meets the road plane
        road = s["semantic"] == ROAD
        r, _ = np.nonzero(road)
        np.testing.assert_allclose(s["depth"][road], ground[r], rtol=1e-4)
        # Everything stands on or above the ground: nothing below the horizon is farther than the road there.
        below = np.isfinite(ground)[:, None] & ~sky
        assert (s["depth"][below] <= np.broadcast_to(ground[:, None], (H, W))[below] * (1 + 1e-4)).all()


def test_boxes_enclose_exactly_the_visible_instance_pixels():
    total = 0
    for index in range(4):
        layout, frame = render_frame(index, "train", 0, H, W)
        for box, label, k in zip(frame.boxes, frame.labels, frame.box_instance):
            rows, cols = np.nonzero(frame.instance == k)
            assert box.tolist() == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
            assert label == layout.instance_kind[k] - PERSON
            assert (frame.semantic[frame.instance == k] == layout.instance_kind[k]).all()
            total += 1
        hidden = ~frame.instance_kept & ~np.isin(np.arange(len(frame.instance_kept)), np.unique(frame.instance))
        assert not frame.instance_kept[hidden].any()  # fully hidden instances have no box
        small = [k for k in np.unique(frame.instance) if k >= 0 and (frame.instance == k).sum() < 16]
        assert not frame.instance_kept[small].any()  # nor do tiny ones
    assert total >= 8


def test_variety():
    scenes = [generate_scene(i, "train", 0, H, W) for i in range(8)]
    classes = set(np.unique(np.concatenate([s["semantic"].ravel() for s in scenes])).tolist())
    labels = set(np.concatenate([s["labels"] for s in scenes]).tolist())
    heights = {round(s["meta"]["camera"]["height"], 3) for s in scenes}
    assert len(classes) >= 12 and len(labels) >= 3 and len(heights) == 8
    means = [s["image"].reshape(-1, 3).mean(0) for s in scenes]
    assert np.std(means, axis=0).max() > 3  # lighting and colours change between scenes


def test_sequence_video(tmp_path):
    path = write_sequence_video(tmp_path / "drive.avi", num_frames=6, fps=5, size=(H, W), seed=2, fourcc="MJPG")
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    assert len(frames) == 6 and frames[0].shape == (H, W, 3)
    assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).mean() > 2  # the camera moved
