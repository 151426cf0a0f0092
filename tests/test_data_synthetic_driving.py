"""Drivable area and lane markings on the synthetic scenes: exact from the geometry, hidden by what stands on the
road, moved with the image by augmentation, and a detection + drivable + lanes + depth config from the command line."""
from __future__ import annotations

import json

import cv2
import numpy as np

from _tool_utils import ROOT, load_tool
from perception.data.batch import LABEL_KEYS
from perception.data.config import AugmentConfig
from perception.data.synthetic import frame_to_sample, render_frame
from perception.data.synthetic.scene import ROAD
from perception.data.transforms import JointTransform

H, W = 64, 128
TOL = 1e-3  # metres: float32 ground X against the float64 recomputation


def _ground_x(layout) -> np.ndarray:
    """World X of the ground point each pixel's ray meets (NaN above the horizon)."""
    dx, dy, _ = layout.camera.ray_directions()
    dx, dy = np.asarray(dx, np.float64), np.asarray(dy, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(dy > 1e-6, layout.camera.height / dy, np.nan)
    return t[:, None] * dx[None, :]


def test_labels_are_registered_as_segmentation_and_declared_by_the_dataset():
    from perception.data.datasets.synthetic import SyntheticDrivingDataset

    assert LABEL_KEYS["drivable"] == ("segmentation", ("drivable",))
    assert LABEL_KEYS["lanes"] == ("segmentation", ("lanes",))
    ds = SyntheticDrivingDataset(split="val", num_samples=2, height=H, width=W)
    assert {"drivable", "lanes"} <= set(ds.tasks)
    assert ds.classes["drivable"] == ["direct", "alternative", "background"]
    assert ds.classes["lanes"] == ["background", "lane"]
    s = ds.load(0)
    assert s["drivable"].shape == (H, W) and s["drivable"].dtype == np.int64 and set(np.unique(s["drivable"])) <= {0, 1, 2}
    assert s["lanes"].dtype == np.int64 and set(np.unique(s["lanes"])) <= {0, 1}


def test_drivable_is_the_visible_road_split_at_the_ego_lane():
    seen_direct = seen_alt = 0
    for index in range(6):
        layout, frame = render_frame(index, "train", 0, H, W)
        drivable, x = frame.drivable, _ground_x(layout)
        # Drivable is exactly the visible road: a car, a person or a pole on it makes it background.
        np.testing.assert_array_equal(drivable < 2, frame.semantic == ROAD)
        assert (drivable[frame.instance >= 0] == 2).all()
        lo, hi = layout.ego_lane
        direct, alt = drivable == 0, drivable == 1
        assert ((x[direct] >= lo - TOL) & (x[direct] <= hi + TOL)).all()  # under the ego lane
        assert ((x[alt] <= lo + TOL) | (x[alt] >= hi - TOL)).all()  # beside it
        assert lo < 0 < hi  # the camera drives in its lane
        seen_direct += direct.sum()
        seen_alt += alt.sum()
    assert seen_direct > 0 and seen_alt > 0


def test_lane_pixels_lie_on_the_painted_markings():
    total = 0
    for index in range(6):
        layout, frame = render_frame(index, "train", 0, H, W)
        lanes, x = frame.lanes.astype(bool), _ground_x(layout)
        assert (frame.semantic[lanes] == ROAD).all() and (frame.instance[lanes] < 0).all()
        lines = layout.lines[:, 0].astype(np.float64)
        near = np.abs(x[..., None] - lines).min(-1) if len(lines) else np.full(x.shape, np.inf)
        assert (near[lanes] < 0.075 + TOL).all()  # every lane pixel is on a line
        # Every visible road pixel well inside a solid line is a lane pixel.
        solid = lines[layout.lines[:, 1] == 0]
        if len(solid):
            inside = (np.abs(x[..., None] - solid).min(-1) < 0.075 - TOL) & (frame.semantic == ROAD)
            assert lanes[inside].all()
        total += lanes.sum()
    assert total > 0


def test_masks_move_with_the_image_under_augmentation():
    layout, frame = render_frame(1, "train", 0, H, W)
    sample = frame_to_sample(layout, frame, "synthetic://test")
    flip = JointTransform((H, W), train=True, augment=AugmentConfig(scale=(1.0, 1.0), hflip=1.0, color_p=0.0,
                                                                   blur_p=0.0, noise_p=0.0),
                          labels=["segmentation", "drivable", "lanes"])
    out = flip(dict(sample), seed=0)
    for key in ("drivable", "lanes", "semantic"):
        np.testing.assert_array_equal(out[key].numpy(), sample[key][:, ::-1])
    zoom = JointTransform((H, W), train=True, augment=AugmentConfig(scale=(2.0, 2.0), hflip=0.0, color_p=0.0,
                                                                   blur_p=0.0, noise_p=0.0),
                          labels=["segmentation", "drivable", "lanes"])
    out = zoom(dict(sample), seed=3)
    # Nearest neighbour: no blended codes; the road of the two maps stays the same pixels.
    assert set(np.unique(out["drivable"].numpy())) <= {0, 1, 2, 255}
    assert set(np.unique(out["lanes"].numpy())) <= {0, 1, 255}
    np.testing.assert_array_equal(out["drivable"].numpy() < 2, out["semantic"].numpy() == ROAD)


def test_the_multitask_config_trains_evaluates_and_infers(tmp_path, one_thread):
    from perception.config import load_config

    config = ROOT / "configs" / "synthetic_driving_multitask.yaml"
    cfg = load_config(config)
    tasks = cfg.model.build_tasks()
    assert {n: (t.TYPE, t.label) for n, t in tasks.items()} == {
        "objects": ("detection", "detection"), "drivable": ("segmentation", "drivable"),
        "lanes": ("segmentation", "lanes"), "depth": ("depth", "depth")}
    run = tmp_path / "run"
    overrides = ["model.backbone.name=test_resnet", "model.neck.channels=16", "model.tasks.drivable.channels=8",
                 "model.tasks.lanes.channels=8", "model.tasks.depth.channels=8", f"output_dir={run}",
                 "train.device=cpu", "train.progress=false", "train.tensorboard=false", "train.amp=none",
                 "train.channels_last=false", "train.max_steps=2", "train.warmup_steps=0", "train.log_interval=1",
                 "train.eval_interval=0", "train.num_overlays=0", "data.batch_size=2", "data.num_workers=0",
                 "data.image_size=[64, 128]",
                 "data.train=[{type: synthetic, split: train, options: {num_samples: 4, height: 64, width: 128}}]",
                 "data.val=[{type: synthetic, split: val, options: {num_samples: 2, height: 64, width: 128}}]"]
    assert load_tool("tools/train.py").main(["--config", str(config), *overrides]) == 0
    assert load_tool("tools/eval.py").main(["--config", str(config), "--checkpoint", str(run / "last.pt"),
                                            "--output", str(tmp_path / "metrics.json"), *overrides]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("objects/mAP50", "drivable/mIoU", "drivable/iou/direct", "lanes/mIoU", "lanes/iou/lane",
                "depth/abs_rel"):
        assert np.isfinite(metrics[key]), key
    frames = tmp_path / "frames"
    frames.mkdir()
    from perception.data.synthetic import generate_scene
    cv2.imwrite(str(frames / "a.png"), generate_scene(0, "test", 0, 64, 128)["image"][..., ::-1])
    out = tmp_path / "infer"
    assert load_tool("tools/infer.py").main(["--checkpoint", str(run / "last.pt"), "--source", str(frames),
                                             "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    record = json.loads((out / "predictions.jsonl").read_text().splitlines()[0])
    assert {n: r["type"] for n, r in record["tasks"].items()} == {
        "objects": "detection", "drivable": "segmentation", "lanes": "segmentation", "depth": "depth"}
    names = {c["name"] for c in record["tasks"]["drivable"]["semantic_classes"]}
    assert names <= {"direct", "alternative", "background"}
    picture = cv2.imread(str(out / "vis" / "a.jpg"))
    # The image with the boxes, then one panel per dense task: drivable, lanes and depth, side by side.
    assert picture.shape == (64, 4 * 128, 3)
