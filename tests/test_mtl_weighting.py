"""Loss weightings (DWA, GradNorm, RLW) and the method configuration: each one's defining property."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from _mtl_utils import TinyMultiTask, mse_losses, regression_data
from perception.mtl import (WEIGHTING_METHODS, DBMTL, FAMO, AlignedMTL, CAGrad, DynamicWeightAverage,
                            FixedWeighting, GradNorm, MGDA, NashMTL, PCGrad, RandomLossWeighting, UncertaintyWeighting,
                            UPGrad, WeightingConfig, build_weighting)
from perception.mtl.dwa import dwa_weights
from perception.mtl.gradnorm import gradnorm_targets
from perception.utils.configurable import ConfigError, from_dict

TASKS = ["detection", "segmentation", "depth"]


# -------------------------------------------------------------------------------------------------------- DWA
def _feed_window(dwa: DynamicWeightAverage, steps: list[dict[str, float]]) -> None:
    for losses in steps:
        dwa({t: torch.tensor(v, requires_grad=True) for t, v in losses.items()})
    dwa.on_window_end()


def test_dwa_weights_follow_the_formula_on_a_hand_made_history():
    dwa = DynamicWeightAverage(TASKS, temperature=2.0)
    # Window averages: detection 4 -> 2 -> 1, segmentation 1 -> 1 -> 1, depth 2 -> 3 -> 3 (two steps each).
    _feed_window(dwa, [{"detection": 3.0, "segmentation": 1.0, "depth": 1.0},
                       {"detection": 5.0, "segmentation": 1.0, "depth": 3.0}])
    torch.testing.assert_close(dwa.weights, torch.ones(3))              # one window: w = 1
    _feed_window(dwa, [{"detection": 2.0, "segmentation": 0.5, "depth": 3.0},
                       {"detection": 2.0, "segmentation": 1.5, "depth": 3.0}])
    ratios = torch.tensor([2.0 / 4.0, 1.0, 3.0 / 2.0])
    expected = 3 * torch.exp(ratios / 2.0) / torch.exp(ratios / 2.0).sum()
    torch.testing.assert_close(dwa.weights, expected)
    assert dwa.weights.sum().item() == pytest.approx(3.0)
    # The next window's loss is weighted by them; a slower-falling task gets more weight.
    losses = {t: torch.tensor(1.0 + i, requires_grad=True) for i, t in enumerate(TASKS)}
    dwa.eval()                                                          # (not part of the history)
    total, logged = dwa(losses)
    dwa.train()
    assert total.item() == pytest.approx(float(expected @ torch.tensor([1.0, 2.0, 3.0])), rel=1e-6)
    assert logged["depth"] > logged["segmentation"] > logged["detection"]
    # Third window: only the last two windows count (detection 2 -> 1).
    _feed_window(dwa, [{"detection": 1.0, "segmentation": 1.0, "depth": 3.0}])
    ratios = torch.tensor([0.5, 1.0, 1.0])
    torch.testing.assert_close(dwa.weights, 3 * torch.softmax(ratios / 2.0, 0))


def test_dwa_ignores_evaluation_and_keeps_an_unseen_task_at_ratio_one():
    assert dwa_weights(torch.tensor([1.0, float("nan")]), torch.tensor([2.0, 1.0])).sum().item() == \
        pytest.approx(2.0)
    dwa = DynamicWeightAverage(["a", "b"])
    dwa.eval()
    dwa({"a": torch.tensor(9.0), "b": torch.tensor(9.0)})               # evaluation does not feed the window
    assert dwa.loss_count.sum().item() == 0
    dwa.train()
    _feed_window(dwa, [{"a": 2.0, "b": 2.0}])
    _feed_window(dwa, [{"a": 1.0}])                                     # b scheduled out all window
    torch.testing.assert_close(dwa.history[0], torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(dwa.weights, 2 * torch.softmax(torch.tensor([0.5, 1.0]) / 2.0, 0))
    state = dwa.state_dict()
    restored = DynamicWeightAverage(["a", "b"])
    restored.load_state_dict(state)
    torch.testing.assert_close(restored.weights, dwa.weights)


# --------------------------------------------------------------------------------------------------- GradNorm
def _gradient_norms(model, weighting, losses):
    params = list(model.last_shared_parameters())
    return torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(
        weighting.task_weights[t] * losses[t], params, retain_graph=True)]).norm() for t in losses]).detach()


def test_gradnorm_moves_the_gradient_norms_towards_their_targets():
    tasks = ["a", "b"]
    x, y = regression_data(tasks)
    scales = {"a": 100.0}                                               # a's loss is 100x larger
    torch.manual_seed(0)
    model = TinyMultiTask(tasks)
    gradnorm = GradNorm(tasks, alpha=1.5)
    optimizer = torch.optim.Adam([{"params": model.parameters(), "lr": 1e-3},
                                  {"params": gradnorm.parameters(), "lr": 2.5e-2}])

    def log_gap():
        losses = mse_losses(model(x), y, scales)
        norms = _gradient_norms(model, gradnorm, losses)
        current = torch.stack([losses[t].detach() for t in tasks])
        initial = torch.where(torch.isnan(gradnorm.initial_losses), current, gradnorm.initial_losses)
        targets = gradnorm_targets(norms, current, initial, 1.5)
        return math.log(norms[0] / norms[1]) - math.log(targets[0] / targets[1])

    before = log_gap()
    assert before > math.log(50.0)                                      # a's gradient dominates at the start
    for _ in range(60):
        optimizer.zero_grad()
        gradnorm.backward(mse_losses(model(x), y, scales), gradnorm.shared_parameters_fn(model))
        optimizer.step()
    after = log_gap()
    assert abs(after) < 0.2 * abs(before)                               # (measured: 5.9 -> 0.1)
    gradnorm.renormalize(tasks)
    weights = torch.stack([gradnorm.task_weights[t].detach() for t in tasks])
    assert weights.sum().item() == pytest.approx(2.0) and weights[0] < weights[1]


def test_gradnorm_trains_the_network_on_the_weighted_sum_and_skips_absent_tasks():
    torch.manual_seed(0)
    model = TinyMultiTask(TASKS)
    x, y = regression_data(TASKS)
    gradnorm = GradNorm(TASKS)
    with torch.no_grad():
        for t, w in zip(TASKS, (0.5, 1.0, 1.5)):
            gradnorm.task_weights[t].fill_(w)
    outputs = model(x, tasks=["detection", "depth"])                    # segmentation scheduled out
    losses = mse_losses(outputs, y)
    reference = torch.autograd.grad(0.5 * losses["detection"] + 1.5 * losses["depth"], list(model.parameters()),
                                    retain_graph=True, allow_unused=True)
    # Renormalisation acts on the active tasks only: 0.5 and 1.5 already sum to 2.
    gradnorm.backward(losses, gradnorm.shared_parameters_fn(model))
    for p, g in zip(model.parameters(), reference):
        if g is None:
            assert p.grad is None
        else:
            torch.testing.assert_close(p.grad, g)
    assert gradnorm.task_weights["segmentation"].grad is None
    assert gradnorm.task_weights["detection"].grad is not None
    assert math.isnan(gradnorm.initial_losses[1].item())               # never seen: no L(0) yet
    assert gradnorm.initial_losses[0].item() == pytest.approx(losses["detection"].item())


# -------------------------------------------------------------------------------------------------------- RLW
def test_random_loss_weighting_draws_softmax_normal_weights_per_step():
    rlw = RandomLossWeighting(TASKS)
    losses = {t: torch.tensor(float(i + 1), requires_grad=True) for i, t in enumerate(TASKS)}
    torch.manual_seed(5)
    total, weights = rlw(losses)
    torch.manual_seed(5)
    expected = torch.softmax(torch.randn(3), 0)
    torch.testing.assert_close(torch.stack([weights[t] for t in TASKS]), expected)
    assert total.item() == pytest.approx(float(expected @ torch.tensor([1.0, 2.0, 3.0])), rel=1e-6)
    draws = torch.stack([torch.stack(list(rlw(losses)[1].values())) for _ in range(2000)])
    torch.testing.assert_close(draws.sum(1), torch.ones(2000))
    assert (draws.std(0) > 0.1).all()                                   # fresh weights every step
    torch.testing.assert_close(draws.mean(0), torch.full((3,), 1 / 3), atol=0.02, rtol=0)
    # An absent task gets weight 0, the others still sum to 1.
    _, weights = rlw({"detection": losses["detection"], "depth": losses["depth"]})
    assert weights["segmentation"].item() == 0.0
    assert (weights["detection"] + weights["depth"]).item() == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------ configuration
@pytest.mark.parametrize("method,cls", [("equal", FixedWeighting), ("fixed", FixedWeighting),
                                        ("uncertainty", UncertaintyWeighting), ("dwa", DynamicWeightAverage),
                                        ("gradnorm", GradNorm), ("rlw", RandomLossWeighting), ("pcgrad", PCGrad),
                                        ("mgda", MGDA), ("cagrad", CAGrad), ("aligned_mtl", AlignedMTL),
                                        ("famo", FAMO), ("nash_mtl", NashMTL), ("upgrad", UPGrad),
                                        ("db_mtl", DBMTL)])
def test_every_method_is_one_config_value(method, cls):
    cfg = from_dict(WeightingConfig, {"method": method, "dwa_temperature": 3.0, "gradnorm_alpha": 0.5,
                                      "cagrad_c": 0.2, "mgda_normalization": "l2", "db_mtl_beta": 0.5})
    weighting = build_weighting(cfg, TASKS)
    assert type(weighting) is cls and weighting.tasks == TASKS
    gradient_method = cls in (PCGrad, MGDA, CAGrad, AlignedMTL, NashMTL, UPGrad, DBMTL, GradNorm)
    assert weighting.manual_grad_sync is gradient_method
    assert weighting.needs_features is (cls is MGDA)
    assert weighting.needs_post_step is (cls is FAMO)
    params = {DynamicWeightAverage: ("temperature", 3.0), GradNorm: ("alpha", 0.5), CAGrad: ("c", 0.2),
              MGDA: ("normalization", "l2"), DBMTL: ("beta", 0.5)}
    if cls in params:
        name, value = params[cls]
        assert getattr(weighting, name) == value
    assert set(WEIGHTING_METHODS) >= {method}


@pytest.mark.parametrize("data,match", [
    ({"method": "pcgard"}, "Did you mean 'pcgrad'"),
    ({"method": "dwa", "dwa_temperature": 0}, "dwa_temperature"),
    ({"method": "cagrad", "cagrad_c": -1}, "cagrad_c"),
    ({"method": "famo", "famo_weight_decay": -0.1}, "famo_weight_decay"),
    ({"method": "db_mtl", "db_mtl_beta": 1.0}, "db_mtl_beta"),
    ({"method": "mgda", "mgda_normalization": "max"}, "mgda_normalization"),
    ({"task_schedule": {"method": "round-robin"}}, "round_robin"),
    ({"task_schedule": {"method": "random", "tasks_per_step": 0}}, "tasks_per_step"),
])
def test_bad_method_settings_are_named(data, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(WeightingConfig, data)


# ------------------------------------------------------------------------------------- a loss of no task (extra)
@pytest.mark.parametrize("through", ["parameters", "features"])
@pytest.mark.parametrize("method", WEIGHTING_METHODS)
def test_a_loss_of_no_task_reaches_every_method_once_and_unweighted(method, through):
    # ``extra`` (the soft-sharing penalty) must add its own gradient exactly once, whatever the method does with
    # the task losses: the gradients with it minus those without it are its gradient alone (under an AMP scale).
    torch.manual_seed(0)
    model = TinyMultiTask(TASKS)
    x, y = regression_data(TASKS)
    cfg = WeightingConfig(method=method, weights={"detection": 2.0, "segmentation": 0.5})
    weighting = build_weighting(cfg, TASKS)
    params = list(model.parameters())
    scale = lambda loss: 4.0 * loss  # noqa: E731
    weighting.shared_parameters_fn(model)
    initial = copy.deepcopy(weighting.state_dict())   # stateful methods (DB-MTL) start both passes alike

    def penalty(features):
        if through == "parameters":   # on a shared and on a task's own parameter
            return 0.3 * model.trunk[0].weight.pow(2).sum() + 0.2 * model.heads["depth"].weight.pow(2).sum()
        return 0.3 * features[0].pow(2).mean()

    def backward(with_extra: bool):
        weighting.load_state_dict(initial)
        model.zero_grad()
        weighting.zero_grad()
        outputs, features = model(x, return_features=True)
        extra = penalty(features) if with_extra else None
        torch.manual_seed(3)                                   # RLW's weights, PCGrad's visiting order
        total, _ = weighting.backward(mse_losses(outputs, y, {"depth": 3.0}), weighting.shared_parameters_fn(model),
                                      scale=scale, shared_features=features, extra=extra)
        return total, [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]

    total_without, without = backward(False)
    total_with, with_ = backward(True)
    _, features = model(x, return_features=True)
    expected = penalty(features)
    reference = torch.autograd.grad(scale(expected), params, allow_unused=True)
    for p, a, b, ref in zip(params, without, with_, reference):
        torch.testing.assert_close(b - a, ref if ref is not None else torch.zeros_like(p), atol=2e-6, rtol=1e-4)
    torch.testing.assert_close(total_with - total_without, expected.detach(), atol=1e-6, rtol=1e-5)
