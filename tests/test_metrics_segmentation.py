"""Confusion-matrix segmentation metrics against hand-computed values."""
from __future__ import annotations

import pytest
import torch

from perception.tasks.segmentation.metric import SegmentationMetric


def test_hand_computed_iou_accumulated_over_the_split():
    metric = SegmentationMetric(3, ["a", "b", "c"], ignore_index=255)
    # Batch 1: gt [0 0 1 1 | 255], pred [0 1 1 1 | 2]  (the ignored pixel counts nowhere).
    metric.update(torch.tensor([[[0, 1, 1, 1, 2]]]), torch.tensor([[[0, 0, 1, 1, 255]]]))
    # Batch 2: gt [2 2 0], pred [2 0 0].
    metric.update(torch.tensor([[[2, 0, 0]]]), torch.tensor([[[2, 2, 0]]]))
    out = metric.compute()
    # Summed confusion: class a: TP 2, FP 1, FN 1 -> 2/4; b: TP 2, FP 1, FN 0 -> 2/3; c: TP 1, FP 0, FN 1 -> 1/2.
    assert out["segmentation/iou/a"] == pytest.approx(0.5)
    assert out["segmentation/iou/b"] == pytest.approx(2 / 3)
    assert out["segmentation/iou/c"] == pytest.approx(0.5)
    assert out["segmentation/mIoU"] == pytest.approx((0.5 + 2 / 3 + 0.5) / 3)
    assert out["segmentation/pixel_acc"] == pytest.approx(5 / 7)
    # Per-image averaging would give a different number: the split is pooled.
    assert out["segmentation/mAcc"] == pytest.approx((2 / 3 + 1 + 1 / 2) / 3)
    # Per-class accuracy (YOLOP's lane accuracy for the lane class): TP / pixels labelled with the class.
    assert out["segmentation/acc/a"] == pytest.approx(2 / 3)
    assert out["segmentation/acc/b"] == pytest.approx(1.0)
    assert out["segmentation/acc/c"] == pytest.approx(0.5)


def test_absent_class_is_left_out_and_bad_labels_are_an_error():
    metric = SegmentationMetric(3)
    metric.update(torch.tensor([[0, 1]]), torch.tensor([[0, 1]]))
    out = metric.compute()
    assert out["segmentation/mIoU"] == 1.0 and "segmentation/iou/class_2" not in out
    metric.update(torch.tensor([[0]]), torch.tensor([[7]]))
    with pytest.raises(ValueError, match="outside 0..2"):
        metric.compute()
