"""Cityscapes loader on tiny fixtures in the real layout: label table, boxes, disparity -> depth, errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
from cityscapesscripts.helpers.labels import labels as cs_labels

from perception.data.datasets.cityscapes import (CityscapesDataset, boxes_from_instance_ids,
                                                 crowd_boxes_from_instance_ids, disparity_to_depth)
from perception.data.io import DataError
from perception.data.labels import cityscapes_instance_names, cityscapes_tables
from _data_utils import tiny_cityscapes, write_png


def test_trainid_table_matches_cityscapesscripts():
    lut, names = cityscapes_tables("trainId")
    for label in cs_labels:
        if label.id < 0:
            continue
        expected = label.trainId if 0 <= label.trainId < 255 else 255
        assert lut[label.id] == expected, label.name
    assert len(names) == 19 and names[0] == "road" and names[18] == "bicycle"
    assert lut[34] == -1 and lut[200] == -1  # not in the table


def test_category_level_and_instance_classes():
    lut, names = cityscapes_tables("category")
    assert names == ["flat", "construction", "object", "nature", "sky", "human", "vehicle"]
    assert lut[7] == 0 and lut[26] == 6 and lut[0] == 255  # road -> flat, car -> vehicle, unlabeled -> ignore
    assert cityscapes_instance_names() == ["person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]


def test_disparity_to_depth_formula():
    code = np.array([[0, 1, 257, 2561]], np.uint16)  # invalid, d = 0, d = 1, d = 10
    depth = disparity_to_depth(code, baseline=0.2, fx=1000.0)
    np.testing.assert_allclose(depth, [[0.0, 0.0, 200.0, 20.0]], rtol=1e-6)


def test_boxes_from_instance_ids_skip_crowd_and_non_instance_classes():
    ids = np.zeros((10, 12), np.int32)
    ids[2:5, 3:7] = 26000  # car 0
    ids[6:9, 0:2] = 26001  # car 1
    ids[0:2, 8:12] = 24  # crowd of people: plain labelId
    ids[5:7, 9:11] = 29000  # caravan: an instance class without a trainId
    ids[7:10, 6:9] = 24003  # person
    boxes, labels = boxes_from_instance_ids(ids, {24: 0, 26: 2})
    assert boxes.tolist() == [[6, 7, 9, 10], [3, 2, 7, 5], [0, 6, 2, 9]]
    assert labels.tolist() == [0, 2, 2]


def test_group_regions_of_instance_classes_are_crowd_boxes():
    ids = np.full((12, 16), 7, np.int32)  # road: stuff, no box
    ids[0:3, 0:4] = 24  # a group of people
    ids[3, 4] = 24  # touches it diagonally: the same 8-connected group
    ids[8:11, 10:15] = 24  # another group of people, apart from the first
    ids[5:7, 0:2] = 26  # a group of cars
    ids[9:12, 0:3] = 30  # a trailer group: instance class without a trainId, no box
    ids[4:6, 8:10] = 26000  # a car instance: not a group
    boxes, labels = crowd_boxes_from_instance_ids(ids, {24: 0, 26: 2})
    assert boxes.tolist() == [[0, 0, 5, 4], [10, 8, 15, 11], [0, 5, 2, 7]]
    assert labels.tolist() == [0, 0, 2] and boxes.dtype == np.float32
    empty = crowd_boxes_from_instance_ids(np.full((4, 4), 26001, np.int32), {26: 2})
    assert empty[0].shape == (0, 4) and empty[1].shape == (0,)


def test_loader_values(tmp_path):
    tiny_cityscapes(tmp_path, count=2)
    ds = CityscapesDataset(tmp_path, "train")
    assert len(ds) == 2 and ds.tasks == ("detection", "segmentation", "depth")
    s = ds.load(1)
    assert s["image"].shape == (32, 64, 3) and s["image"].dtype == np.uint8
    assert s["semantic"][0, 0] == 10 and s["semantic"][31, 0] == 0 and s["semantic"][12, 7] == 13
    assert s["semantic"][5, 45] == 11  # the crowd is still "person" for segmentation
    # The car is a target; the crowd of people (plain id 24) is a crowd box, an ignore region of the metric.
    assert s["boxes"].tolist() == [[6, 10, 16, 20], [40, 4, 50, 8]] and s["labels"].tolist() == [2, 0]
    assert s["crowd"].tolist() == [False, True]
    np.testing.assert_allclose(s["depth"][31, 0], 0.2 * 1000 / 8, rtol=1e-6)
    np.testing.assert_allclose(s["depth"][12, 7], 0.2 * 1000 / 20, rtol=1e-6)
    assert s["depth"][0, 0] == 0
    assert s["meta"]["camera"]["fx"] == 1000.0


def test_polygon_boxes(tmp_path):
    polygons = {"imgHeight": 32, "imgWidth": 64, "objects": [
        {"label": "car", "polygon": [[5, 10], [14, 10], [14, 19], [5, 19]]},
        {"label": "cargroup", "polygon": [[0, 0], [3, 0], [3, 3]]},
        {"label": "person", "polygon": [[60, 20], [70, 25], [62, 31]]},
        {"label": "road", "polygon": [[0, 16], [63, 16], [63, 31]]}]}
    tiny_cityscapes(tmp_path, count=1)
    ann = tmp_path / "gtFine" / "train" / "aachen" / "aachen_000000_000019_gtFine_polygons.json"
    ann.write_text(json.dumps(polygons))
    s = CityscapesDataset(tmp_path, "train", boxes="polygons").load(0)
    # The cargroup is a crowd box of class car; the person's box is clipped to the image; road gives none.
    assert s["boxes"].tolist() == [[5, 10, 15, 20], [0, 0, 4, 4], [60, 20, 64, 32]]
    assert s["labels"].tolist() == [2, 2, 0] and s["crowd"].tolist() == [False, True, False]


def test_missing_folder_named(tmp_path):
    tiny_cityscapes(tmp_path, count=1)
    with pytest.raises(DataError, match="leftImg8bit/val: missing image folder"):
        CityscapesDataset(tmp_path, "val")
    (tmp_path / "disparity").rename(tmp_path / "disp")
    with pytest.raises(DataError, match="disparity/train: missing disparity folder"):
        CityscapesDataset(tmp_path, "train")
    assert len(CityscapesDataset(tmp_path, "train", tasks=["segmentation"])) == 1  # depth not needed


def test_empty_folder(tmp_path):
    for sub in ("leftImg8bit", "gtFine", "disparity", "camera"):
        (tmp_path / sub / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="no .*_leftImg8bit.png files found for the train split"):
        CityscapesDataset(tmp_path, "train")


def test_bad_files_named(tmp_path):
    files = tiny_cityscapes(tmp_path, count=1)
    ds = CityscapesDataset(tmp_path, "train")
    bad = np.full((32, 64), 7, np.uint8)
    bad[0, 0] = 40
    write_png(files[0]["labelIds"], bad)
    with pytest.raises(DataError, match=r"labelIds\.png: labelIds \[40\] are not in the Cityscapes label table"):
        ds.load(0)
    files[0]["labelIds"].unlink()
    with pytest.raises(DataError, match="labelIds.png: missing semantic label file"):
        ds.load(0)


def test_exporter_round_trip_through_the_loader(tmp_path):
    from perception.data.synthetic import export_cityscapes, generate_scene

    export_cityscapes(tmp_path, "val", num_images=2, size=(96, 192), seed=3)
    ds = CityscapesDataset(tmp_path, "val")
    for i in range(2):
        got, want = ds.load(i), generate_scene(i, "val", 3, 96, 192)
        np.testing.assert_array_equal(got["image"], want["image"])
        np.testing.assert_array_equal(got["semantic"], want["semantic"])
        order = lambda b, l: sorted(zip(l.tolist(), b.tolist()))  # noqa: E731
        # Instances written without an id (too small or occluded) come back as crowd regions, not targets.
        targets = ~got["crowd"]
        assert order(got["boxes"][targets], got["labels"][targets]) == order(want["boxes"], want["labels"])
        valid = got["depth"] > 0
        assert (valid == (want["depth"] > 0)).all()  # every measured pixel fits the 16-bit code
        # 1/256 px disparity quantisation: relative error <= depth / (256 * baseline * fx) / 2 (+ float rounding).
        bound = want["depth"][valid] / (256 * ds.camera(ds.files(i)["camera"])["fx"] * 0.209313) / 2 + 1e-5
        assert (np.abs(got["depth"][valid] - want["depth"][valid]) / want["depth"][valid] <= bound).all()


def test_camera_json_errors(tmp_path):
    files = tiny_cityscapes(tmp_path, count=1)
    files[0]["camera"].write_text(json.dumps({"intrinsic": {"fx": 1.0}}))
    with pytest.raises(DataError, match="camera.json: camera JSON lacks 'extrinsic'"):
        CityscapesDataset(tmp_path, "train").load(0)


def test_training_ignores_depth_beyond_the_heads_max_depth(tmp_path):
    """Cityscapes' smallest disparity code p = 2 (d = 1/256 px) gives baseline * fx * 256 m: 51.2 km here, 121 km
    with Cityscapes' camera. The depth loss treats depth beyond the head's max_depth as no measurement."""
    import torch

    from perception.config import config_from_dict
    from perception.data import JointTransform, collate
    from perception.models import build_model
    from perception.tasks.depth import DepthHead

    tiny_cityscapes(tmp_path, count=1)
    disparity_file = tmp_path / "disparity" / "train" / "aachen" / "aachen_000000_000019_disparity.png"
    disparity = np.zeros((32, 64), np.uint16)
    disparity[16:] = 1 + 256 * 8  # road at 25 m
    disparity[10:20, 5:15] = 1 + 256 * 20  # car at 10 m
    disparity[0:4, 20:40] = 2  # the smallest code stereo matching writes
    write_png(disparity_file, disparity)
    sample = CityscapesDataset(tmp_path, "train", tasks=["depth"]).load(0)
    np.testing.assert_allclose(sample["depth"][0, 20], 0.2 * 1000 * 256, rtol=1e-6)
    batch = collate([JointTransform((32, 64), train=False)(sample)])
    capped = torch.where(batch.targets["depth"] > 80, 0.0, batch.targets["depth"])
    assert (batch.targets["depth"] > 80).sum() == 4 * 20 and capped.max() == 25.0

    raw = torch.randn(1, 1, 8, 16, generator=torch.Generator().manual_seed(0))
    for loss in ("silog", "l1_log"):
        head = DepthHead(32, 32, max_depth=80.0, loss=loss)
        unbounded = DepthHead(32, 32, max_depth=80.0, loss=loss, loss_max_depth=1e9)
        assert head.loss_max_depth == 80.0
        want = head.compute_loss(raw, capped)  # as if the far pixels had no measurement
        assert torch.equal(head.compute_loss(raw, batch.targets["depth"]), want)
        assert not torch.isclose(unbounded.compute_loss(raw, batch.targets["depth"]), want)
    # The bound is a config key of the depth head (default its max_depth).
    cfg = config_from_dict({"model": {"tasks": ["depth"], "backbone": {"name": "test_resnet"}, "neck": {"channels": 32},
                                      "depth": {"channels": 32, "max_depth": 80.0, "loss_max_depth": 40.0}}})
    assert build_model(cfg.model).heads["depth"].loss_max_depth == 40.0
    with pytest.raises(ValueError, match="loss_max_depth: got 0.0001, expected more than min_depth=0.001"):
        config_from_dict({"model": {"depth": {"loss_max_depth": 1e-4}}})
