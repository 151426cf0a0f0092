"""COCO mAP through pycocotools: hand-computed values, and the same numbers as pycocotools run on COCO json files."""
from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch

from perception.tasks.detection.metric import DetectionMetric, coco_evaluate


def _crafted():
    """Two images: an exact hit, a box with IoU 0.75, a false positive and a missed box."""
    gts = [(np.array([[0, 0, 10, 10], [20, 20, 60, 60]], np.float32), np.array([0, 1])),
           (np.array([[5, 5, 45, 25]], np.float32), np.array([1]))]
    preds = [(np.array([[0, 0, 10, 10], [20, 20, 60, 50], [70, 70, 90, 90]], np.float32),
              np.array([0.9, 0.8, 0.95]), np.array([0, 1, 0])),
             (np.zeros((0, 4), np.float32), np.zeros(0), np.zeros(0, np.int64))]
    return gts, preds


def test_hand_computed_ap():
    gts = [(np.array([[0, 0, 10, 10], [20, 20, 60, 60]], np.float32), np.array([0, 1]))]
    preds = [(np.array([[0, 0, 10, 10], [20, 20, 60, 50]], np.float32), np.array([0.9, 0.8]), np.array([0, 1]))]
    summary, per_class = coco_evaluate(gts, preds, 2)
    # Class 1's box has IoU 30*40 / 40*40 = 0.75: a hit at the 6 thresholds 0.50..0.75 of 10, so AP 0.6.
    assert per_class == pytest.approx({0: 1.0, 1: 0.6})
    assert summary["mAP"] == pytest.approx(0.8)
    assert summary["mAP50"] == pytest.approx(1.0) and summary["mAP75"] == pytest.approx(1.0)


def test_matches_pycocotools_on_json_files(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gts, preds = _crafted()
    images, anns, dets = [], [], []
    for i, ((gb, gl), (pb, ps, pl)) in enumerate(zip(gts, preds), start=1):
        images.append({"id": i, "width": 100, "height": 100})
        for b, l in zip(gb, gl):
            x0, y0, x1, y1 = map(float, b)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(l) + 1, "iscrowd": 0,
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0)})
        for b, s, l in zip(pb, ps, pl):
            x0, y0, x1, y1 = map(float, b)
            dets.append({"image_id": i, "category_id": int(l) + 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
                         "score": float(s)})
    (tmp_path / "gt.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": [
        {"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}))
    (tmp_path / "dt.json").write_text(json.dumps(dets))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(tmp_path / "gt.json"))
        ev = COCOeval(coco, coco.loadRes(str(tmp_path / "dt.json")), "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()

    metric = DetectionMetric(2, ["a", "b"])
    as_t = torch.as_tensor
    metric.update([{"boxes": as_t(b), "scores": as_t(s), "labels": as_t(l)} for b, s, l in preds],
                  [as_t(b) for b, _ in gts], [as_t(l) for _, l in gts])
    out = metric.compute()
    assert out["detection/mAP"] == pytest.approx(ev.stats[0])
    assert out["detection/mAP50"] == pytest.approx(ev.stats[1])
    assert out["detection/mAP75"] == pytest.approx(ev.stats[2])
    assert 0 < out["detection/mAP"] < 1
    assert set(out) >= {"detection/AP/a", "detection/AP/b"}
    # Recall at IoU 0.5, 100 detections: class a finds its box, class b one of two (the IoU 0.75 hit) -> 0.75.
    assert out["detection/recall"] == pytest.approx(0.75)
    assert out["detection/recall"] == pytest.approx(ev.eval["recall"][0, :, 0, -1].mean())


def test_images_without_detection_labels_are_skipped_and_no_detections_give_zero():
    metric = DetectionMetric(2)
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
    hit = {"boxes": torch.tensor([[0.0, 0, 10, 10]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}
    # Image 1 has no detection labels: its (perfect-looking) prediction must not count as a false positive.
    metric.update([empty, hit], [torch.tensor([[0.0, 0, 10, 10]]), torch.zeros(0, 4)],
                  [torch.tensor([0]), torch.zeros(0, dtype=torch.long)], has=torch.tensor([True, False]))
    assert len(metric.gts) == 1
    assert metric.compute()["detection/mAP"] == 0.0


def _pycocotools_ap(tmp_path, gt_boxes, crowd, dt_boxes, scores):
    """COCOeval run on json files, one image, one class."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    xywh = lambda b: [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]  # noqa: E731
    anns = [{"id": k + 1, "image_id": 1, "category_id": 1, "bbox": xywh(b), "area": xywh(b)[2] * xywh(b)[3],
             "iscrowd": int(c)} for k, (b, c) in enumerate(zip(gt_boxes, crowd))]
    dets = [{"image_id": 1, "category_id": 1, "bbox": xywh(b), "score": s} for b, s in zip(dt_boxes, scores)]
    (tmp_path / "gt.json").write_text(json.dumps({"images": [{"id": 1, "width": 128, "height": 64}],
                                                  "annotations": anns, "categories": [{"id": 1, "name": "a"}]}))
    (tmp_path / "dt.json").write_text(json.dumps(dets))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(tmp_path / "gt.json"))
        ev = COCOeval(coco, coco.loadRes(str(tmp_path / "dt.json")), "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    return ev.stats[0]


# One real box and one crowd region (a group of people), a detection on each; the crowd's scores higher.
REAL, CROWD = [10, 10, 40, 40], [60, 10, 120, 50]
DETS, SCORES = [[10, 10, 40, 40], [70, 15, 100, 45]], [0.6, 0.9]


def test_crowd_region_is_ignored_as_pycocotools_does(tmp_path):
    gts = [(np.array([REAL, CROWD], np.float32), np.array([0, 0]), np.array([False, True]))]
    preds = [(np.array(DETS, np.float32), np.array(SCORES), np.array([0, 0]))]
    summary, per_class = coco_evaluate(gts, preds, 1)
    assert summary["mAP"] == pytest.approx(1.0) and per_class == pytest.approx({0: 1.0})
    assert summary["mAP"] == pytest.approx(_pycocotools_ap(tmp_path, [REAL, CROWD], [0, 1], DETS,
                                                           SCORES))
    # Dropping the crowd region would make the detection on it a false positive ranked first: AP 0.5.
    dropped, _ = coco_evaluate([(np.array([REAL], np.float32), np.array([0]))], preds, 1)
    assert dropped["mAP"] == pytest.approx(0.5)
    # A class with crowd regions only has no AP (COCOeval's own rule), also when nothing is detected.
    only_crowd = [(np.array([CROWD], np.float32), np.array([0]), np.array([True]))]
    assert coco_evaluate(only_crowd, [(np.zeros((0, 4)), np.zeros(0), np.zeros(0))], 1) == ({}, {})


def test_evaluator_feeds_the_batch_crowd_regions_to_the_metric():
    from perception.data import collate
    from perception.engine.evaluator import update_metrics
    from perception.tasks import build_tasks

    sample = {"image": np.zeros((64, 128, 3), np.uint8), "boxes": torch.tensor([REAL, CROWD], dtype=torch.float32),
              "labels": torch.tensor([0, 0]), "crowd": torch.tensor([False, True])}
    batch = collate([sample])
    target = batch.targets["detection"]
    assert target["boxes"][0].tolist() == [REAL] and target["crowd_boxes"][0].tolist() == [CROWD]
    metric = DetectionMetric(1, ["person"])
    pred = {"boxes": torch.tensor(DETS, dtype=torch.float32), "scores": torch.tensor(SCORES),
            "labels": torch.tensor([0, 0])}
    tasks = build_tasks({"people": {"type": "detection", "num_classes": 1, "class_names": ["person"]}})
    update_metrics(tasks, {"people": metric}, {"people": [pred]}, batch)
    assert metric.compute()["detection/mAP"] == pytest.approx(1.0)
