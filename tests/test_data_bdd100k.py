"""BDD100K in its official layout on generated files: boxes, drivable codes, the lane bit code, one-line errors, and
configs/bdd100k.yaml trained and evaluated with the metrics YOLOP and HybridNets report."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from _tool_utils import ROOT, load_tool
from perception.data.datasets.bdd100k import BDD100KDataset, lane_mask
from perception.data.io import DataError

H, W = 36, 64


def _drivable(i: int) -> np.ndarray:
    code = np.full((H, W), 2, np.uint8)
    code[H // 2:, W // 4: W // 2] = 0  # the ego road
    code[H // 2:, W // 2: 3 * W // 4] = 1 + (i % 2)  # an alternative lane in even frames
    return code


def _lanes() -> np.ndarray:
    code = np.full((H, W), 255, np.uint8)  # background: every bit set, bit 3 among them
    code[H // 2:, W // 4] = 0b00110  # a solid single white line (category 6, bit 3 clear)
    code[H // 2:, W // 2] = 0b10010  # a dashed double white (category 2, bit 4 dashed)
    return code


def write_bdd(root: Path, count: int = 3) -> Path:
    """``count`` frames per split in the official layout."""
    for split in ("train", "val"):
        dirs = [root / "images" / "100k" / split, root / "labels" / "drivable" / "masks" / split,
                root / "labels" / "lane" / "masks" / split, root / "labels" / "det_20"]
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)
        frames = []
        for i in range(count):
            stem = f"{split[0]}{i:04d}-abcd"
            image = np.full((H, W, 3), 90, np.uint8)
            image[_drivable(i) == 0] = (160, 160, 160)
            cv2.imwrite(str(dirs[0] / f"{stem}.jpg"), image)
            cv2.imwrite(str(dirs[1] / f"{stem}.png"), _drivable(i))
            cv2.imwrite(str(dirs[2] / f"{stem}.png"), _lanes())
            labels = [{"id": "1", "category": "car", "box2d": {"x1": 4.0, "y1": 6.0, "x2": 20.0, "y2": 18.0}},
                      {"id": "2", "category": "traffic sign", "box2d": {"x1": 40.0, "y1": 2.0, "x2": 48.0, "y2": 10.0}},
                      {"id": "3", "category": "bus", "box2d": {"x1": 30.0, "y1": 10.0, "x2": 60.0, "y2": 30.0}},
                      {"id": "4", "category": "trailer", "box2d": {"x1": 1.0, "y1": 1.0, "x2": 3.0, "y2": 3.0}}]
            frames.append({"name": f"{stem}.jpg", "attributes": {"weather": "clear"}, "labels": labels})
        (dirs[3] / f"det_{split}.json").write_text(json.dumps(frames))
    return root


def test_lane_bit_code():
    code = np.array([255, 0, 8, 7, 0b101111, 0b110110], np.uint8)
    assert lane_mask(code).tolist() == [0, 1, 0, 1, 0, 1]


def test_reads_boxes_drivable_and_lanes_of_the_official_layout(tmp_path):
    ds = BDD100KDataset(write_bdd(tmp_path / "bdd"), "train")
    assert len(ds) == 3 and ds.tasks == ("detection", "drivable", "lanes")
    assert len(ds.classes["detection"]) == 10 and ds.classes["drivable"] == ["direct", "alternative", "background"]
    s = ds.load(1)
    np.testing.assert_array_equal(s["boxes"], [[4, 6, 20, 18], [40, 2, 48, 10], [30, 10, 60, 30]])
    assert s["labels"].tolist() == [2, 9, 4]  # car, traffic sign, bus; the trailer is left out
    np.testing.assert_array_equal(s["drivable"], _drivable(1))
    expected = np.zeros((H, W), np.int64)
    expected[H // 2:, [W // 4, W // 2]] = 1
    np.testing.assert_array_equal(s["lanes"], expected)
    assert s["meta"]["files"]["lanes"].endswith(f"labels/lane/masks/train/{ds.images[1][:-4]}.png")


def test_yolop_options_merge_vehicles_and_binary_drivable(tmp_path):
    ds = BDD100KDataset(write_bdd(tmp_path / "bdd"), "val", merge_vehicles=True, binary_drivable=True)
    assert ds.classes["detection"] == ["vehicle"] and ds.classes["drivable"] == ["background", "drivable"]
    s = ds.load(0)
    assert s["labels"].tolist() == [0, 0] and s["boxes"][:, 0].tolist() == [4, 30]  # car and bus; no sign
    np.testing.assert_array_equal(s["drivable"], (_drivable(0) < 2).astype(np.int64))
    only = BDD100KDataset(tmp_path / "bdd", "val", tasks=["lanes", "depth"])
    assert only.tasks == ("lanes",) and set(only.load(0)) == {"image", "lanes", "meta"}


def test_bad_files_are_one_line_errors_naming_them(tmp_path):
    root = write_bdd(tmp_path / "bdd")
    mask_dir = root / "labels" / "drivable" / "masks" / "train"
    first = sorted(mask_dir.iterdir())[0]
    cv2.imwrite(str(first), np.full((H, W), 7, np.uint8))
    with pytest.raises(DataError, match=rf"{first.name}: drivable mask value 7") as err:
        BDD100KDataset(root, "train").load(0)
    assert "\n" not in str(err.value)
    first.unlink()
    with pytest.raises(DataError, match=rf"{first.name}: missing drivable area mask"):
        BDD100KDataset(root, "train").load(0)
    lane = sorted((root / "labels" / "lane" / "masks" / "train").iterdir())[1]
    lane.write_bytes(b"not a png")
    with pytest.raises(DataError, match=lane.name):
        BDD100KDataset(root, "train").load(1)
    det = root / "labels" / "det_20" / "det_val.json"
    frames = json.loads(det.read_text())
    frames[0]["labels"][0]["category"] = "spaceship"
    det.write_text(json.dumps(frames))
    with pytest.raises(DataError, match=r"det_val.json: frame .* label 0: unknown category 'spaceship'"):
        BDD100KDataset(root, "val")
    det.write_text("{not json")
    with pytest.raises(DataError, match="det_val.json"):
        BDD100KDataset(root, "val")
    with pytest.raises(DataError, match="images/100k/val: missing image folder"):
        BDD100KDataset(tmp_path / "elsewhere", "val")


def test_the_shipped_config_trains_evaluates_and_exports_with_the_yolop_metrics(tmp_path, capsys, one_thread):
    from perception.config import load_config

    config = ROOT / "configs" / "bdd100k.yaml"
    cfg = load_config(config)
    assert list(cfg.data.image_size) == [384, 640] and cfg.data.train[0].type == "bdd100k"
    assert {n: t.label for n, t in cfg.model.build_tasks().items()} == {
        "objects": "detection", "drivable": "drivable", "lanes": "lanes"}
    data, run = write_bdd(tmp_path / "bdd"), tmp_path / "run"
    overrides = ["model.backbone.name=test_resnet", "model.backbone.pretrained=false", "model.neck.channels=16",
                 "model.tasks.drivable.channels=8", "model.tasks.lanes.channels=8", f"output_dir={run}",
                 "train.device=cpu", "train.progress=false", "train.tensorboard=false", "train.amp=none",
                 "train.channels_last=false", "train.max_steps=2", "train.warmup_steps=0", "train.log_interval=1",
                 "train.eval_interval=0", "train.num_overlays=0", "data.batch_size=2", "data.num_workers=0",
                 "data.image_size=[32, 64]",
                 *(f"data.{split}=[{{type: bdd100k, root: {data}, split: {split}, "
                   "options: {merge_vehicles: true, binary_drivable: true}}]" for split in ("train", "val"))]
    assert load_tool("tools/train.py").main(["--config", str(config), *overrides]) == 0
    assert load_tool("tools/eval.py").main(["--config", str(config), "--checkpoint", str(run / "last.pt"),
                                            "--output", str(tmp_path / "metrics.json"), *overrides]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("objects/recall", "objects/mAP50", "drivable/mIoU", "lanes/iou/lane", "lanes/acc/lane"):
        assert 0.0 <= metrics[key] <= 1.0, key
    # The trained network exports with both masks as outputs, checked against PyTorch on a BDD100K frame.
    frame = next((data / "images" / "100k" / "val").glob("*.jpg"))
    assert load_tool("tools/export.py").main(["--checkpoint", str(run / "last.pt"), "--out", str(tmp_path / "m.onnx"),
                                              "--exporter", "torchscript", "--check-image", str(frame)]) == 0
    report = capsys.readouterr().out
    assert "drivable__logits" in report and "lanes__logits" in report
