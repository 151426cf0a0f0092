"""The multi-task gain delta_m and the model-selection score."""
from __future__ import annotations

import json

import pytest

from perception.metrics import delta_m, merge_baselines, weighted_score

SIGNS = {"segmentation/mIoU": 1, "segmentation/pixel_acc": 1, "depth/abs_rel": -1, "depth/rmse": -1}


def test_delta_m_hand_computed(tmp_path):
    (tmp_path / "seg.json").write_text(json.dumps({"segmentation/mIoU": 0.50, "segmentation/pixel_acc": 0.80}))
    (tmp_path / "depth.json").write_text(json.dumps({"depth/abs_rel": 0.20, "depth/rmse": 4.0, "step": 10}))
    single = merge_baselines([tmp_path / "seg.json", tmp_path / "depth.json"])
    multi = {"segmentation/mIoU": 0.55, "segmentation/pixel_acc": 0.76, "depth/abs_rel": 0.18, "depth/rmse": 5.0}
    out = delta_m(multi, single, SIGNS)
    seg = (10.0 + -5.0) / 2          # mIoU +10 %, pixel acc -5 %
    depth = (10.0 + -25.0) / 2       # abs_rel 10 % lower (better), rmse 25 % higher (worse)
    assert out["delta_m/segmentation"] == pytest.approx(seg)
    assert out["delta_m/depth"] == pytest.approx(depth)
    assert out["delta_m"] == pytest.approx((seg + depth) / 2)


def test_delta_m_errors_name_the_missing_baseline(tmp_path):
    with pytest.raises(ValueError, match="depth/abs_rel"):
        delta_m({"depth/abs_rel": 0.1}, {"segmentation/mIoU": 0.5}, SIGNS)
    (tmp_path / "a.json").write_text(json.dumps({"depth/rmse": 1.0}))
    (tmp_path / "b.json").write_text(json.dumps({"depth/rmse": 2.0}))
    with pytest.raises(ValueError, match="b.json"):
        merge_baselines([tmp_path / "a.json", tmp_path / "b.json"])
    with pytest.raises(FileNotFoundError, match="missing.json"):
        merge_baselines([tmp_path / "missing.json"])


def test_weighted_score_negates_lower_is_better():
    score = weighted_score({"segmentation/mIoU": 0.6, "depth/abs_rel": 0.2, "other": 9},
                           {"segmentation/mIoU": 1.0, "depth/abs_rel": 1.0, "detection/mAP": 1.0})
    assert score == pytest.approx((0.6 - 0.2) / 2)
    with pytest.raises(ValueError, match="score"):
        weighted_score({"x/y": 1.0}, {"detection/mAP": 1.0})
