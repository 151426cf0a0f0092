"""Uncertainty weighting (Kendall et al. 2018) recovers known noise variances; partial labels do not drift it."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from perception.data import collate
from perception.models import build_model
from perception.models.config import ModelConfig
from perception.mtl import FixedWeighting, UncertaintyWeighting, WeightingConfig, build_weighting
from perception.utils.configurable import from_dict
from scenes import toy_scene


def test_learned_variances_match_the_noise_of_two_regression_tasks():
    torch.manual_seed(0)
    n, variances = 4000, {"near": 0.01, "far": 1.0}         # noise variances 100x apart
    x = torch.randn(n, 3)
    true_w = {"near": torch.tensor([1.0, -2.0, 0.5]), "far": torch.tensor([-1.0, 0.3, 2.0])}
    y = {t: x @ true_w[t] + math.sqrt(v) * torch.randn(n) for t, v in variances.items()}
    heads = torch.nn.ModuleDict({t: torch.nn.Linear(3, 1) for t in variances})
    weighting = UncertaintyWeighting(list(variances), task_types={t: "regression" for t in variances})
    optimizer = torch.optim.Adam(list(heads.parameters()) + list(weighting.parameters()), lr=0.05)
    for _ in range(1500):
        losses = {t: torch.mean((heads[t](x).squeeze(1) - y[t]) ** 2) for t in variances}
        loss, _ = weighting(losses)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for task, variance in variances.items():
        # For 1/2 exp(-s) L + s/2 the optimum is exp(s) = L, the residual variance: the noise variance.
        learned = math.exp(weighting.log_vars[task].item())
        assert learned == pytest.approx(variance, rel=0.15), task
    weights = weighting.effective_weights()
    assert weights["near"] / weights["far"] == pytest.approx(100.0, rel=0.3)


def test_classification_and_regression_optima():
    weighting = UncertaintyWeighting(["segmentation", "depth"],      # classification c = 1, regression c = 1/2
                                     task_types={"segmentation": "classification", "depth": "regression"})
    optimizer = torch.optim.Adam(weighting.parameters(), lr=0.05)
    losses = {"segmentation": torch.tensor(0.3), "depth": torch.tensor(0.3)}
    for _ in range(1000):
        loss, _ = weighting(losses)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert math.exp(weighting.log_vars["segmentation"].item()) == pytest.approx(0.6, rel=1e-3)  # 2 c L
    assert math.exp(weighting.log_vars["depth"].item()) == pytest.approx(0.3, rel=1e-3)
    assert weighting.sigmas()["depth"].item() == pytest.approx(math.sqrt(0.3), rel=1e-3)


def test_total_matches_the_formula_and_absent_tasks_add_nothing():
    weighting = UncertaintyWeighting(["detection", "depth"], task_types={"detection": "classification"},
                                     init_log_var={"detection": 0.5, "depth": -1.0})
    losses = {"detection": torch.tensor(2.0), "depth": torch.tensor(3.0)}
    total, weights = weighting(losses)
    expected = 1.0 * math.exp(-0.5) * 2.0 + 0.25 + 0.5 * math.exp(1.0) * 3.0 - 0.5
    assert total.item() == pytest.approx(expected, rel=1e-6)
    assert weights["depth"].item() == pytest.approx(0.5 * math.exp(1.0), rel=1e-6)
    total, _ = weighting({"detection": torch.tensor(2.0), "depth": torch.tensor(0.0)}, {"depth": False})
    assert total.item() == pytest.approx(math.exp(-0.5) * 2.0 + 0.25, rel=1e-6)
    with pytest.raises(ValueError, match="expected 'regression' or 'classification'"):
        UncertaintyWeighting(["depth"], task_types={"depth": "ordinal"})


def test_fixed_and_equal_weighting():
    losses = {"detection": torch.tensor(2.0), "segmentation": torch.tensor(3.0), "depth": torch.tensor(5.0)}
    equal = build_weighting(WeightingConfig(method="equal"), losses)
    assert equal(losses)[0].item() == pytest.approx(10.0)
    fixed = FixedWeighting(list(losses), {"depth": 0.1})
    assert fixed(losses)[0].item() == pytest.approx(5.5)
    with pytest.raises(ValueError, match="unknown task"):
        FixedWeighting(["depth"], {"dpth": 1.0})


def test_partial_labels_train_without_nan_and_leave_absent_tasks_untouched():
    torch.manual_seed(0)
    cfg = from_dict(ModelConfig, {"backbone": {"name": "test_resnet"}, "neck": {"channels": 32},
                                  "detection": {"num_classes": 2, "num_convs": 1},
                                  "segmentation": {"num_classes": 4, "channels": 32}, "depth": {"channels": 32}})
    model = build_model(cfg)
    weighting = UncertaintyWeighting(model.tasks, {name: task.LOSS_KIND for name, task in model.task_specs.items()})
    optimizer = torch.optim.AdamW(list(model.parameters()) + list(weighting.parameters()), lr=1e-3)
    rng = np.random.default_rng(0)
    samples = [toy_scene(rng, 96, 96) for _ in range(3)]
    for s in samples:
        del s["boxes"], s["labels"]              # no image has boxes
    del samples[1]["depth"]                      # one image lacks depth
    batch = collate(samples, labels=["detection", "segmentation", "depth"])
    assert batch.present() == {"detection": False, "segmentation": True, "depth": True}
    for step in range(5):
        outputs = model(batch.images)
        task_losses, _ = model.compute_losses(outputs, batch)
        assert task_losses["detection"].item() == 0.0
        loss, _ = weighting(task_losses, batch.present())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
    assert weighting.log_vars["detection"].item() == 0.0       # no drift of the absent task's variance
    assert weighting.log_vars["depth"].item() != 0.0
    assert all(torch.isfinite(p).all() for p in model.parameters())
