"""The synthetic driving scenes: determinism, exact geometry of depth and normals, occlusion-aware boxes, variety,
video."""
from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np

from perception.data.synthetic import generate_scene, render_frame, write_sequence_video
from perception.data.synthetic.scene import BOX, CAR, PERSON, ROAD, SIDEWALK, SKY, TERRAIN

H, W = 64, 128


def test_deterministic_and_split_by_seed():
    a, b = generate_scene(3, "train", 0, H, W), generate_scene(3, "train", 0, H, W)
    for key in ("image", "semantic", "depth", "normals", "boxes", "labels"):
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


# Normals are in the camera frame: x right, y down, z along the optical axis; they point out of the surface, towards
# the camera. The ground's is "up": (0, -cos(pitch), -sin(pitch)), i.e. towards -y (tilted towards the camera by
# the downward pitch).

def _camera_points(layout, depth: np.ndarray) -> np.ndarray:
    """Camera-frame 3-D points [H, W, 3] of every pixel from its depth (z) and the intrinsics."""
    cam = layout.camera
    u = np.arange(depth.shape[1], dtype=np.float64)
    v = np.arange(depth.shape[0], dtype=np.float64)
    return np.stack([(u[None, :] - cam.u0) / cam.fx * depth, (v[:, None] - cam.v0) / cam.fy * depth,
                     depth.astype(np.float64)], -1)


def test_normals_are_unit_vectors_up_on_the_ground_and_tangent_to_the_surfaces():
    for index in range(3):
        layout, frame = render_frame(index, "train", 0, H, W)
        n, sky = frame.normals, frame.semantic == SKY
        assert n.shape == (H, W, 3) and n.dtype == np.float32
        assert (n[sky] == 0).all()
        np.testing.assert_allclose(np.linalg.norm(n[~sky], axis=-1), 1.0, atol=1e-6)
        pitch = layout.camera.pitch
        ground = np.isin(frame.semantic, (ROAD, SIDEWALK, TERRAIN))
        np.testing.assert_allclose(n[ground], np.broadcast_to([0, -math.cos(pitch), -math.sin(pitch)],
                                                               n[ground].shape), atol=1e-6)
        # Every visible surface faces the camera (a ray meets it from the front; 0 only at grazing silhouettes).
        points = _camera_points(layout, frame.depth)
        facing = (n * points).sum(-1) / np.maximum(np.linalg.norm(points, axis=-1), 1e-9)
        assert (facing[~sky] < 1e-3).all()
        # The normal is perpendicular to the surface: the step to a neighbour pixel on the same surface (same
        # normal, class and instance, depth within 1 %) has no component along it. Planes and boxes are exact.
        for a, b in (((slice(None), slice(0, -1)), (slice(None), slice(1, None))),
                     ((slice(0, -1), slice(None)), (slice(1, None), slice(None)))):
            same = ((n[a] == n[b]).all(-1) & (frame.semantic[a] == frame.semantic[b])
                    & (frame.instance[a] == frame.instance[b]) & ~sky[a] & ~sky[b]
                    & (np.abs(frame.depth[a] - frame.depth[b]) < 0.01 * frame.depth[a]))
            step = points[b] - points[a]
            along = np.abs((step * n[a]).sum(-1)) / np.maximum(np.linalg.norm(step, axis=-1), 1e-12)
            assert same.sum() > H * W / 4 and np.quantile(along[same], 0.99) < 1e-4


def test_box_faces_the_camera_with_the_pitch_and_its_side_faces_sideways():
    layout, _ = render_frame(0, "train", 0, H, W)
    ground = layout.camera.height
    pitch = 0.05
    # Only two boxes: one straight ahead (its front seen), one to the right and near (its left side seen too).
    lo = np.array([[-1.0, ground - 2.0, 10.0], [3.0, ground - 1.5, 4.0]], np.float32)
    hi = np.array([[1.0, ground, 12.0], [4.5, ground, 9.0]], np.float32)
    layout = dataclasses.replace(
        layout, camera=dataclasses.replace(layout.camera, pitch=pitch), lo=lo, hi=hi, shape=np.array([BOX, BOX]),
        part_kind=np.array([CAR, CAR]), part_mat=np.array([0, 0]), part_instance=np.array([0, 1]),
        emissive=np.array([False, False]), instance_kind=np.array([CAR, CAR]), velocity=np.zeros(2, np.float32))
    from perception.data.synthetic import render_layout

    frame = render_layout(layout)
    (u, v), = np.rint(layout.camera.project(np.array([[0.0, ground - 1.0, 10.0]]))[0]).astype(int)
    assert frame.instance[v, u] == 0
    np.testing.assert_allclose(frame.normals[v, u], [0, math.sin(pitch), -math.cos(pitch)], atol=1e-6)
    (u, v), = np.rint(layout.camera.project(np.array([[3.0, ground - 0.75, 6.5]]))[0]).astype(int)
    assert frame.instance[v, u] == 1
    np.testing.assert_allclose(frame.normals[v, u], [-1, 0, 0], atol=1e-6)   # the left face of a box on the right
    faces = np.array([[0, math.sin(pitch), -math.cos(pitch)], [-1, 0, 0],    # front, left side,
                      [0, -math.cos(pitch), -math.sin(pitch)]])              # top
    distance = np.linalg.norm(frame.normals[frame.instance >= 0][:, None] - faces[None], axis=-1)
    assert distance.min(1).max() < 1e-6   # every box pixel shows one of the three faces the camera can see


def test_the_dataset_exposes_normals():
    from perception.data.datasets.synthetic import SyntheticDrivingDataset

    ds = SyntheticDrivingDataset(split="val", num_samples=1, height=H, width=W)
    assert "normals" in ds.tasks
    sample = ds.load(0)
    np.testing.assert_array_equal(sample["normals"], render_frame(0, "val", 0, H, W)[1].normals)
