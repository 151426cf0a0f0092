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
