"""Depth metrics against values computed by hand (numpy) on small arrays."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from perception.tasks.depth.metric import DepthMetric
from perception.tasks.depth.metric import eigen_crop_mask


def _reference(p, g):
    e = np.log(p) - np.log(g)
    r = np.maximum(g / p, p / g)
    return {"abs_rel": np.mean(np.abs(g - p) / g), "sq_rel": np.mean((g - p) ** 2 / g),
            "rmse": np.sqrt(np.mean((g - p) ** 2)), "rmse_log": np.sqrt(np.mean(e ** 2)),
            "log10": np.mean(np.abs(np.log10(g) - np.log10(p))), "delta1": np.mean(r < 1.25),
            "delta2": np.mean(r < 1.25 ** 2), "delta3": np.mean(r < 1.25 ** 3),
            "silog": 100 * np.sqrt(np.mean(e ** 2) - np.mean(e) ** 2), "abs_err": np.mean(np.abs(g - p))}


GT = np.array([[[1.0, 2.0, 4.0, 0.0], [8.0, 3.0, 0.0, 5.0]],
               [[2.0, 2.0, 2.0, 2.0], [10.0, 0.0, 1.0, 6.0]]])
PRED = np.array([[[1.1, 1.5, 4.0, 9.0], [6.0, 3.3, 2.0, 7.0]],
                 [[2.0, 2.6, 1.0, 2.2], [12.0, 5.0, 1.4, 6.5]]])


@pytest.mark.parametrize("average", ["pixel", "image"])
def test_metrics_match_hand_computation(average):
    metric = DepthMetric(average=average)
    metric.update(torch.tensor(PRED[:1]), torch.tensor(GT[:1]))
    metric.update(torch.tensor(PRED[1:]), torch.tensor(GT[1:]))
    out = metric.compute()
    valid = GT > 0
    pooled = _reference(PRED[valid], GT[valid])
    if average == "pixel":
        expected = pooled
    else:
        per_image = [_reference(PRED[i][valid[i]], GT[i][valid[i]]) for i in range(2)]
        expected = {k: np.mean([r[k] for r in per_image]) for k in per_image[0]}
    for key, value in expected.items():
        if key == "abs_err":
            continue
        assert out[f"depth/{key}"] == pytest.approx(value, rel=1e-9), key
    # The MTL benchmarks' errors are always pooled over pixels.
    assert out["depth/abs_err"] == pytest.approx(pooled["abs_err"])
    assert out["depth/rel_err"] == pytest.approx(pooled["abs_rel"])


def test_cap_clamps_predictions_and_drops_far_ground_truth():
    metric = DepthMetric(depth_cap=5.0, average="pixel")
    metric.update(torch.tensor([[9.0, 9.0, 0.5]]), torch.tensor([[4.0, 7.0, 1.0]]))
    out = metric.compute()
    # gt 7 > cap is dropped; prediction 9 is clamped to 5: errors |4-5|/4 and |1-0.5|/1.
    assert out["depth/abs_rel"] == pytest.approx((0.25 + 0.5) / 2)
    assert out["depth/rmse"] == pytest.approx(np.sqrt((1 + 0.25) / 2))


def test_eigen_crop():
    mask = eigen_crop_mask(480, 640)
    assert mask.sum() == (471 - 45) * (601 - 41)
    assert mask[45, 41] and not mask[44, 41] and not mask[45, 601]
    metric = DepthMetric(eigen_crop=True, average="pixel")
    gt = torch.full((1, 48, 64), 2.0)
    pred = torch.full((1, 48, 64), 2.0)
    pred[0, 0, :] = 4.0  # outside the crop (row 0): must not count
    metric.update(pred, gt)
    assert metric.compute()["depth/abs_rel"] == 0.0
