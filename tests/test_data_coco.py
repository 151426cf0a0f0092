"""COCO-format detection: contiguous labels, crowd handling, class maps into a mixed label space."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from _data_utils import write_coco

from perception.data import build_dataset, collate
from perception.data.config import AugmentConfig, DataConfig, DatasetConfig
from perception.data.datasets.coco import COCODetectionDataset
from perception.data.io import DataError, check_sample
from perception.utils.configurable import ConfigError

CATEGORIES = [(3, "car"), (1, "person"), (18, "dog")]


def _coco(root, annotations=None):
    images = [("a.png", np.zeros((20, 30, 3), np.uint8)), ("b.png", np.zeros((20, 30, 3), np.uint8))]
    annotations = annotations if annotations is not None else [
        {"image_id": 1, "category_id": 3, "bbox": [2, 3, 10, 5]},
        {"image_id": 1, "category_id": 18, "bbox": [0, 0, 4, 4]},
        {"image_id": 1, "category_id": 1, "bbox": [20, 1, 5, 15], "iscrowd": 1},
        {"image_id": 2, "category_id": 1, "bbox": [1.5, 2.5, 3, 4]},
    ]
    return write_coco(root, images, annotations, CATEGORIES)


def test_contiguous_labels_and_crowd(tmp_path):
    _coco(tmp_path)
    ds = COCODetectionDataset(tmp_path, "train")
    assert ds.classes["detection"] == ["person", "car", "dog"]  # by category id
    s = ds.load(0)
    # The iscrowd annotation stays, flagged: an ignore region for the metric, no training target.
    assert s["boxes"].tolist() == [[2, 3, 12, 8], [0, 0, 4, 4], [20, 1, 25, 16]]
    assert s["labels"].tolist() == [1, 2, 0] and s["crowd"].tolist() == [False, False, True]
    s = ds.load(1)
    assert s["boxes"].tolist() == [[1.5, 2.5, 4.5, 6.5]] and s["labels"].tolist() == [0]
    assert s["crowd"].tolist() == [False]
    sub = COCODetectionDataset(tmp_path, "train", categories=["dog", "car"])
    assert sub.load(0)["labels"].tolist() == [1, 0] and sub.load(0)["crowd"].tolist() == [False, False]


def test_crowd_reaches_the_batch_apart_from_the_targets(tmp_path):
    _coco(tmp_path)
    cfg = DataConfig(val=[DatasetConfig(type="coco", root=str(tmp_path), class_map={"dog": None})],
                     image_size=(40, 60))
    ds = build_dataset(cfg, "val", ["detection"])
    raw = ds.raw(0)  # the class map drops the dog and its flag with it
    assert raw["labels"].tolist() == [1, 0] and raw["crowd"].tolist() == [False, True]
    batch = collate([ds[0], ds[1]])
    # Evaluation fits 20x30 into 40x60: every coordinate doubles.
    assert batch.targets["detection"]["boxes"][0].tolist() == [[4, 6, 24, 16]] and batch.targets["detection"]["labels"][0].tolist() == [1]
    assert batch.targets["detection"]["crowd_boxes"][0].tolist() == [[40, 2, 50, 32]] and batch.targets["detection"]["crowd_labels"][0].tolist() == [0]
    assert batch.targets["detection"]["boxes"][1].tolist() == [[3, 5, 9, 13]] and batch.targets["detection"]["crowd_boxes"][1].shape == (0, 4)
    moved = batch.to("cpu")
    assert torch.equal(moved.targets["detection"]["crowd_boxes"][0], batch.targets["detection"]["crowd_boxes"][0]) and len(moved.targets["detection"]["crowd_labels"]) == 2


def test_class_map_into_cityscapes_classes(tmp_path):
    _coco(tmp_path)
    cfg = DataConfig(
        train=[DatasetConfig(type="synthetic", options={"num_samples": 2, "height": 64, "width": 128}),
               DatasetConfig(type="coco", root=str(tmp_path), class_map={"dog": None})],
        image_size=(64, 128), augment=AugmentConfig(scale=(1.0, 1.0), hflip=0.0, color_p=0.0))
    ds = build_dataset(cfg, "train", ["detection", "segmentation", "depth"])
    assert ds.tasks == ("detection", "segmentation", "depth")
    coco = ds.raw(2)
    # car -> Cityscapes "car" (2); the dog is dropped; the crowd of persons -> "person" (0), still a crowd.
    assert coco["labels"].tolist() == [2, 0] and coco["crowd"].tolist() == [False, True]
    assert "semantic" not in coco and "depth" not in coco
    assert ds.raw(3)["labels"].tolist() == [0]  # person
    star = DataConfig(train=[DatasetConfig(type="coco", root=str(tmp_path), class_map={"*": None})],
                      detection_classes=["car", "truck"])
    assert build_dataset(star, "train", ["detection"]).raw(0)["labels"].tolist() == [0]
    bad = DataConfig(train=[DatasetConfig(type="coco", root=str(tmp_path))], detection_classes=["car", "truck"])
    with pytest.raises(ConfigError, match=r"detection classes 'person', 'dog' are not in data.detection_classes"):
        build_dataset(bad, "train", ["detection"])
    typo = DataConfig(train=[DatasetConfig(type="coco", root=str(tmp_path), class_map={"dgo": None})])
    with pytest.raises(ConfigError, match="class_map key 'dgo' is not a class of this dataset. Did you mean 'dog'"):
        build_dataset(typo, "train", ["detection"])


def test_bad_boxes_named(tmp_path):
    _coco(tmp_path, [{"image_id": 1, "category_id": 3, "bbox": [2, 3, 0, 5]}])
    s = COCODetectionDataset(tmp_path, "train").load(0)
    with pytest.raises(DataError, match=r"annotations.json \(image id 1, a.png\): box .* has zero or negative area"):
        check_sample(s)
    _coco(tmp_path, [{"image_id": 1, "category_id": 3, "bbox": [25, 3, 10, 5]}])
    s = COCODetectionDataset(tmp_path, "train").load(0)
    with pytest.raises(DataError, match=r"a.png\): box \[25.0, 3.0, 35.0, 8.0\] lies outside the 20x30 image"):
        check_sample(s)


def test_crowd_flags_checked(tmp_path):
    _coco(tmp_path)
    s = COCODetectionDataset(tmp_path, "train").load(0)
    s["crowd"] = s["crowd"][:2]
    with pytest.raises(DataError, match=r"a.png\): crowd flags of shape \(2,\) and dtype bool for 3 boxes"):
        check_sample(s)


# --- semantic maps from polygons / RLE, depth and normals from folders ------------------------------------------

def _write_uint16_png(path, array):
    import cv2
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array.astype(np.uint16))


def _custom(root):
    """Two 10x12 images: a.png with a car polygon (48 px), an overlapping smaller person polygon (36 px) and a
    crowd of persons; b.png with an uncompressed-RLE car (columns 2..4) and a polygon reaching outside the image.
    Depth: a 16-bit PNG for a, none for b; normals for a."""
    images = [("a.png", np.zeros((10, 12, 3), np.uint8)), ("b.png", np.zeros((10, 12, 3), np.uint8))]
    annotations = [
        {"image_id": 1, "category_id": 5, "bbox": [0, 0, 8, 6], "segmentation": [[0, 0, 8, 0, 8, 6, 0, 6]]},
        {"image_id": 1, "category_id": 2, "bbox": [4, 2, 6, 6], "segmentation": [[4, 2, 10, 2, 10, 8, 4, 8]]},
        {"image_id": 1, "category_id": 2, "bbox": [10, 0, 2, 4], "iscrowd": 1,
         "segmentation": [[10, 0, 12, 0, 12, 4, 10, 4]]},
        {"image_id": 2, "category_id": 5, "bbox": [2, 0, 3, 10], "segmentation": {"counts": [20, 30, 70],
                                                                                 "size": [10, 12]}},
        {"image_id": 2, "category_id": 2, "bbox": [0, 8, 12, 2], "segmentation": [[-5, 8, 20, 8, 20, 15, -5, 15]]},
    ]
    write_coco(root, images, annotations, [(2, "person"), (5, "car")])
    depth = np.arange(120, dtype=np.uint16).reshape(10, 12) * 3
    _write_uint16_png(root / "depth" / "a.png", depth)
    normals = np.zeros((10, 12, 3), np.float32)
    normals[..., 2] = 1.0
    (root / "normals").mkdir()
    np.save(root / "normals" / "a.npy", normals)
    return depth


def _expected_a(fill):
    exp = np.full((10, 12), fill, np.uint8)
    exp[0:6, 0:8] = 1       # car, the larger mask, painted first
    exp[2:8, 4:10] = 0      # person, smaller, stays on top where they overlap
    exp[0:4, 10:12] = 255   # the crowd: ignore
    return exp


def test_polygons_rle_and_crowd_paint_exact_semantic_maps(tmp_path):
    _custom(tmp_path)
    ds = COCODetectionDataset(tmp_path, "train")
    assert ds.tasks == ("detection", "segmentation") and ds.classes["segmentation"] == ["person", "car"]
    a, b = ds.load(0), ds.load(1)
    np.testing.assert_array_equal(a["semantic"], _expected_a(255))  # uncovered pixels: ignore by default
    exp_b = np.full((10, 12), 255, np.uint8)
    exp_b[:, 2:5] = 1       # the RLE car (column-major counts: 20 off, 30 on)
    exp_b[8:10, :] = 0      # the polygon outside the image, clipped; smaller (24 px) than the car (30 px): on top
    np.testing.assert_array_equal(b["semantic"], exp_b)
    assert a["labels"].tolist() == [1, 0, 0] and a["crowd"].tolist() == [False, False, True]
    bg = COCODetectionDataset(tmp_path, "train", background="background")
    assert bg.classes["segmentation"] == ["person", "car", "background"] and bg.classes["detection"] == ["person", "car"]
    np.testing.assert_array_equal(bg.load(0)["semantic"], _expected_a(2))
    # A category of the file may be the background too; its boxes stay boxes.
    named = COCODetectionDataset(tmp_path, "train", background="person")
    assert named.classes["segmentation"] == ["person", "car"] and named.background_label == 0
    # The same car as a compressed RLE (a string of counts, as pycocotools' encode writes it) gives the same map.
    import json
    path = tmp_path / "annotations.json"
    data = json.loads(path.read_text())
    data["annotations"][3]["segmentation"] = {"counts": "d0n0V2", "size": [10, 12]}
    path.write_text(json.dumps(data))
    np.testing.assert_array_equal(COCODetectionDataset(tmp_path, "train").load(1)["semantic"], exp_b)
    # A detection-only model loads no masks.
    assert "semantic" not in COCODetectionDataset(tmp_path, "train", tasks=["detection"]).load(0)


def test_depth_and_normals_by_file_stem_and_images_without_them(tmp_path):
    depth = _custom(tmp_path)
    ds = COCODetectionDataset(tmp_path, "train", depth_dir="depth", depth_scale=0.5, normals_dir=str(tmp_path / "normals"))
    assert ds.tasks == ("detection", "segmentation", "depth", "normals")
    a, b = ds.load(0), ds.load(1)
    np.testing.assert_array_equal(a["depth"], depth.astype(np.float32) * 0.5)  # 0.5 m per unit: exact in float32
    assert a["depth"].dtype == np.float32 and a["meta"]["files"]["depth"].endswith("a.png")
    np.testing.assert_array_equal(a["normals"][..., 2], np.ones((10, 12), np.float32))
    assert "depth" not in b and "normals" not in b  # no file of stem "b": that image trains the other tasks only
    mm = COCODetectionDataset(tmp_path, "train", depth_dir="depth").load(0)["depth"]  # default: millimetres
    np.testing.assert_allclose(mm, depth / 1000.0, rtol=1e-6)
    (tmp_path / "depth" / "a.png").unlink()
    metres = np.full((10, 12), 2.25, np.float32)
    np.save(tmp_path / "depth" / "a.npy", metres)
    np.testing.assert_array_equal(COCODetectionDataset(tmp_path, "train", depth_dir="depth").load(0)["depth"], metres)
    # Through the mix and the collate: the Batch's has[] marks which samples carry depth.
    cfg = DataConfig(val=[DatasetConfig(type="coco", root=str(tmp_path), options={"depth_dir": "depth"})],
                     image_size=(10, 12))
    mix = build_dataset(cfg, "val", ["detection", "segmentation", "depth"])
    assert mix.tasks == ("detection", "segmentation", "depth") and mix.classes["segmentation"] == ["person", "car"]
    batch = collate([mix[0], mix[1]])
    assert batch.has["depth"].tolist() == [True, False] and batch.has["segmentation"].tolist() == [True, True]
    assert set(torch.unique(batch.targets["depth"][0]).tolist()) == {0.0, 2.25}  # 2.25 m, 0 in the padding
    assert float(batch.targets["depth"][1].abs().sum()) == 0.0


def test_bad_custom_files_give_one_line_errors_naming_them(tmp_path):
    import json

    _custom(tmp_path)
    np.save(tmp_path / "depth" / "b.npy", np.ones((5, 5), np.float32))
    with pytest.raises(DataError, match=r"b.npy: depth map of size 5x5 does not match the image's 10x12") as err:
        COCODetectionDataset(tmp_path, "train", depth_dir="depth").load(1)
    assert "\n" not in str(err.value)
    (tmp_path / "depth" / "b.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match=r"b.npy: cannot read the depth .npy file"):
        COCODetectionDataset(tmp_path, "train", depth_dir="depth").load(1)
    with pytest.raises(DataError, match=r"nowhere: missing depth folder"):
        COCODetectionDataset(tmp_path, "train", depth_dir="nowhere")
    path = tmp_path / "annotations.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["category_id"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"annotations.json: annotation 1 has category_id 99, which is not in its "
                                        r"categories \[2, 5\]"):
        COCODetectionDataset(tmp_path, "train")
    data["annotations"][0]["category_id"] = 5
    data["annotations"][3]["segmentation"]["size"] = [4, 4]
    data["annotations"][1]["segmentation"] = [[1, 2, 3]]
    path.write_text(json.dumps(data))
    ds = COCODetectionDataset(tmp_path, "train")
    with pytest.raises(DataError, match=r"annotations.json: annotation 2: polygons need an even number"):
        ds.load(0)
    with pytest.raises(DataError, match=r"annotations.json: annotation 4: RLE of size \[4, 4\] for an image of 10x12"):
        ds.load(1)
    # A model task the files do not provide is simply not this dataset's.
    assert COCODetectionDataset(tmp_path, "train", tasks=["detection", "depth"]).tasks == ("detection",)


def _custom_folder(root, count=4):
    """``count`` 32x48 images with a person polygon, a car polygon and a 16-bit millimetre depth PNG each (the
    last image has no depth file), as a CVAT / labelme COCO export next to a depth folder."""
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for i in range(count):
        image = rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)
        images.append((f"img_{i}.png", image))
        annotations += [
            {"image_id": i + 1, "category_id": 1, "bbox": [4, 4, 12, 20], "segmentation": [[4, 4, 16, 4, 16, 24, 4, 24]]},
            {"image_id": i + 1, "category_id": 3, "bbox": [20, 10, 24, 16],
             "segmentation": [[20, 10, 44, 10, 44, 26, 20, 26]]}]
        if i < count - 1:
            _write_uint16_png(root / "depth" / f"img_{i}.png", np.full((32, 48), 1000 + 500 * i, np.uint16))
    write_coco(root, images, annotations, [(1, "person"), (3, "car")])
    return root


def test_the_custom_config_trains_detection_segmentation_and_depth_and_evaluates(tmp_path):
    import json

    from _tool_utils import ROOT, load_tool

    from perception.config import load_config

    config = ROOT / "configs" / "custom_coco.yaml"
    cfg = load_config(config)
    assert set(cfg.model.build_tasks()) == {"detection", "segmentation", "depth"}
    data, run = _custom_folder(tmp_path / "custom"), tmp_path / "run"
    options = "{background: background, depth_dir: depth}"
    overrides = ["model.backbone.name=test_resnet", "model.backbone.pretrained=false", "model.neck.channels=16",
                 "model.tasks.segmentation.channels=8", "model.tasks.depth.channels=8", f"output_dir={run}",
                 "train.device=cpu", "train.progress=false", "train.tensorboard=false", "train.amp=none",
                 "train.channels_last=false", "train.max_steps=2", "train.warmup_steps=0", "train.log_interval=1",
                 "train.eval_interval=0", "train.num_overlays=0", "data.batch_size=2", "data.num_workers=0",
                 "data.image_size=[32, 48]",
                 *(f"data.{split}=[{{type: coco, root: {data}, split: {split}, options: {options}}}]"
                   for split in ("train", "val"))]
    assert load_tool("tools/train.py").main(["--config", str(config), *overrides]) == 0
    assert load_tool("tools/eval.py").main(["--config", str(config), "--checkpoint", str(run / "last.pt"),
                                            "--output", str(tmp_path / "metrics.json"), *overrides]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert 0.0 <= metrics["segmentation/mIoU"] <= 1.0 and 0.0 <= metrics["detection/mAP50"] <= 1.0
    assert metrics["depth/abs_rel"] >= 0.0
    assert load_tool("tools/infer.py").main(["--checkpoint", str(run / "last.pt"), "--source",
                                             str(data / "img_0.png"), "--out", str(tmp_path / "infer"),
                                             "--device", "cpu", "--quiet"]) == 0
    assert (tmp_path / "infer" / "vis" / "img_0.jpg").is_file()  # the picture: boxes, class map, depth panels
