"""UPGrad and DB-MTL: UPGrad's projections by hand and against scipy, its update conflicting with no task; DB-MTL's
balancing by hand, the moving averages it keeps (absent tasks, checkpoints), its invariance to the losses' scales,
and both training a shared network and running the real training step under bf16 autocast. (The written
gradient, AMP scaling and overflow, absent tasks and the loss of no task are in test_mtl_gradients.py and
test_mtl_weighting.py with the other methods; a skipped step leaving DB-MTL's state bit-identical in
test_engine_skip.py.)"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from _mtl_utils import TinyMultiTask, flat_grad, mse_losses, per_task_grads, regression_data
from perception.mtl import DBMTL, UPGrad, WeightingConfig, build_weighting
from perception.mtl.db_mtl import db_mtl_combine
from perception.mtl.upgrad import dual_cone_weights, upgrad_weights

TASKS = ["detection", "segmentation", "depth"]
F64 = torch.float64


def _gradients(num_tasks: int, dim: int, seed: int) -> torch.Tensor:
    g = torch.randn(num_tasks, dim, generator=torch.Generator().manual_seed(seed), dtype=F64)
    g = g * torch.rand(num_tasks, 1, generator=torch.Generator().manual_seed(seed + 100), dtype=F64) * 10 + 0.01
    if seed % 2 == 0:
        g[1] = -0.7 * g[0] + 0.2 * g[1]            # a strong conflict
    return g


# ----------------------------------------------------------------------------------------------------- UPGrad
def test_upgrad_two_conflicting_gradients_by_hand():
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=F64)
    # g1 projected: v >= (1, 0), v_1 at its bound, (M v)_2 = -1 + 2 v_2 = 0 -> v = (1, 0.5), pi(g1) = (0.5, 0.5).
    # g2 projected: v >= (0, 1), (M v)_1 = v_1 - 1 = 0 -> v = (1, 1), pi(g2) = (0, 1).
    w = dual_cone_weights(g @ g.T, torch.eye(2, dtype=F64))
    torch.testing.assert_close(w, torch.tensor([[1.0, 0.5], [1.0, 1.0]], dtype=F64))
    method = UPGrad(["a", "b"])
    direction, coefficients = method.combine(g.float(), torch.ones(2))
    torch.testing.assert_close(coefficients, torch.tensor([1.0, 0.75]))
    torch.testing.assert_close(direction, torch.tensor([0.25, 0.75]))      # the mean of (0.5, 0.5) and (0, 1)
    assert (g.float() @ direction >= 0).all()


def test_upgrad_leaves_agreeing_gradients_alone():
    g = torch.tensor([[2.0, 1.0, 0.0], [2.0, 1.0, 0.0]], dtype=F64)
    torch.testing.assert_close(upgrad_weights(g @ g.T), torch.tensor([0.5, 0.5], dtype=F64))  # equal: that one
    agreeing = torch.tensor([[1.0, 0.2, 0.0], [0.5, 1.0, 0.1], [0.1, 0.3, 2.0]], dtype=F64)
    torch.testing.assert_close(upgrad_weights(agreeing @ agreeing.T), torch.full((3,), 1 / 3, dtype=F64))


@pytest.mark.parametrize("num_tasks,seed", list(itertools.product([2, 3, 4], range(6))))
def test_upgrad_projections_match_scipy_and_conflict_with_no_task(num_tasks, seed):
    g = _gradients(num_tasks, 7, seed)
    gram = g @ g.T
    weights = dual_cone_weights(gram, torch.eye(num_tasks, dtype=F64))
    m = gram.numpy()
    for i in range(num_tasks):
        u = np.eye(num_tasks)[i]
        ref = minimize(lambda v: v @ m @ v, u + 0.5, jac=lambda v: 2 * m @ v, method="SLSQP",
                       bounds=[(b, None) for b in u], options={"ftol": 1e-15, "maxiter": 500})
        w = weights[i].numpy()
        assert (w >= u - 1e-9).all()
        assert w @ m @ w <= ref.fun * (1 + 1e-6) + 1e-12
        projection = weights[i] @ g                 # pi(g_i): in the dual cone, and g_i minus it is normal to it
        assert ((g @ projection) >= -1e-7 * (g.norm(dim=1) * projection.norm())).all()
        assert abs(float((g[i] - projection) @ projection)) <= 1e-9 * float(g[i] @ g[i])
    direction = upgrad_weights(gram) @ g
    assert ((g @ direction) >= -1e-7 * g.norm(dim=1) * direction.norm()).all()
    # Scale-free in the Gram matrix (a scaled problem gives the same weights).
    torch.testing.assert_close(upgrad_weights(1e6 * gram), upgrad_weights(gram))


# ----------------------------------------------------------------------------------------------------- DB-MTL
def test_db_mtl_scales_every_gradient_to_the_largest_norm():
    ema = torch.tensor([[3.0, 4.0], [0.0, 1.0], [0.0, 0.0]])
    direction, coefficients = db_mtl_combine(ema, eps=0.0 + 1e-12)
    torch.testing.assert_close(coefficients[:2], torch.tensor([1.0, 5.0]))      # |.| = 5 and 1
    torch.testing.assert_close(direction, torch.tensor([3.0, 9.0]))           # (3, 4) + 5 (0, 1)


def _backward(weighting, model, x, y, scales=None, tasks=None, present=None):
    model.zero_grad()
    outputs = model(x, tasks=tasks)
    return weighting.backward(mse_losses(outputs, y, scales), model.shared_parameters, present=present)


def test_db_mtl_writes_the_balanced_moving_average_of_log_loss_gradients():
    torch.manual_seed(0)
    model = TinyMultiTask(TASKS)
    x, y = regression_data(TASKS)
    weighting = DBMTL(TASKS, beta=0.9)
    weighting.shared_parameters_fn(model)
    shared = list(model.shared_parameters())
    assert weighting.grad_ema.shape == (3, sum(p.numel() for p in shared))
    ema = torch.zeros(3, weighting.grad_ema.shape[1])
    for step in range(2):
        losses = mse_losses(model(x), y, {"depth": 3.0})
        logs = {t: torch.log(l + 1e-8) for t, l in losses.items()}
        g = per_task_grads(model, logs, shared)
        heads = {t: torch.autograd.grad(logs[t], list(model.heads[t].parameters()), retain_graph=True)
                 for t in TASKS}
        ema = 0.9 * ema + 0.1 * g
        norms = ema.norm(dim=1)
        expected = (norms.max() / (norms + 1e-8)) @ ema
        total, weights = _backward(weighting, model, x, y, {"depth": 3.0})
        torch.testing.assert_close(flat_grad(shared), expected, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(weighting.grad_ema, ema, atol=1e-7, rtol=1e-5)
        for t in TASKS:                              # heads: the gradient of their own log loss
            for p, ref in zip(model.heads[t].parameters(), heads[t]):
                torch.testing.assert_close(p.grad, ref)
        assert total.item() == pytest.approx(sum(l.item() for l in losses.values()), rel=1e-6)  # plain losses
        assert min(weights[t].item() for t in TASKS) == pytest.approx(1.0)    # the largest norm keeps weight 1
        with torch.no_grad():                        # move the model: the second step's gradients differ
            for p in model.parameters():
                p.sub_(0.05 * p.grad)


def test_db_mtl_is_invariant_to_the_scale_of_each_loss():
    x, y = regression_data(TASKS)
    grads = []
    for scales in (None, {"detection": 1e-3, "segmentation": 1.0, "depth": 1e3}):
        torch.manual_seed(0)
        model = TinyMultiTask(TASKS)
        weighting = DBMTL(TASKS)
        for _ in range(3):
            _backward(weighting, model, x, y, scales)
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_db_mtl_absent_tasks_keep_their_average_and_it_survives_a_checkpoint():
    torch.manual_seed(0)
    model = TinyMultiTask(TASKS)
    x, y = regression_data(TASKS)
    weighting = build_weighting(WeightingConfig(method="db_mtl"), TASKS)
    _backward(weighting, model, x, y)
    first = weighting.grad_ema.clone()
    # Depth without labels in the batch: its row keeps its value, the others move.
    _, weights = _backward(weighting, model, x, y, present={"depth": False})
    torch.testing.assert_close(weighting.grad_ema[2], first[2], rtol=0, atol=0)
    assert not torch.equal(weighting.grad_ema[0], first[0]) and not torch.equal(weighting.grad_ema[1], first[1])
    assert weights["depth"].item() == 0.0 and all(torch.count_nonzero(p.grad) == 0
                                                  for p in model.heads["depth"].parameters())
    # Detection scheduled out (its head not run): likewise.
    second = weighting.grad_ema.clone()
    _, weights = _backward(weighting, model, x, y, tasks=["segmentation", "depth"])
    torch.testing.assert_close(weighting.grad_ema[0], second[0], rtol=0, atol=0)
    assert weights["detection"].item() == 0.0
    assert all(p.grad is None for p in model.heads["detection"].parameters())
    fresh = DBMTL(TASKS)                              # no buffer yet: it takes the checkpoint's size
    fresh.load_state_dict(weighting.state_dict())
    assert torch.equal(fresh.grad_ema, weighting.grad_ema)


def test_db_mtl_trains_a_shared_network():
    x, y = regression_data(TASKS, n=128)
    torch.manual_seed(0)
    start = {t: l.item() for t, l in mse_losses(TinyMultiTask(TASKS, hidden=16)(x), y).items()}
    for beta, bound in ((0.9, 0.75), (0.0, 0.5)):
        torch.manual_seed(0)
        model = TinyMultiTask(TASKS, hidden=16)
        weighting = DBMTL(TASKS, beta=beta)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(300):
            optimizer.zero_grad()
            _backward(weighting, model, x, y)
            optimizer.step()
        final = {t: l.item() for t, l in mse_losses(model(x), y).items()}
        assert all(final[t] < bound * start[t] for t in TASKS), (beta, final, start)


@pytest.mark.parametrize("method", ["upgrad", "db_mtl", "nash_mtl", "famo"])
def test_the_training_step_runs_under_bf16_autocast(method):
    from _mtl_utils import tiny_model
    from perception.data.batch import collate
    from perception.engine.step import TrainStep, make_grad_scaler
    from perception.mtl import TaskScheduler
    from scenes import toy_scene

    torch.manual_seed(0)
    model = tiny_model()
    weighting = build_weighting(WeightingConfig(method=method), model.tasks)
    params = [p for p in model.parameters() if p.requires_grad]
    cpu = torch.device("cpu")
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    step = TrainStep(model, model, weighting, optimizer, scheduler, make_grad_scaler("bf16", cpu),
                     TaskScheduler(model.tasks), cpu, amp="bf16", grad_clip=10.0)
    batch = collate([toy_scene(np.random.default_rng([5, i]), 32, 32) for i in range(2)])
    before = [p.detach().clone() for p in params]
    for index in range(3):
        step([batch], index)
    stats = step.pop_stats()
    assert float(stats["skipped"]) == 0 and torch.isfinite(stats["loss_sum"]).all()
    assert all(torch.isfinite(p).all() for p in params)
    assert sum(not torch.equal(p, b) for p, b in zip(params, before)) > len(params) // 2
    coefficients = torch.stack([step.last_weights[t] for t in model.tasks])
    assert torch.isfinite(coefficients).all() and (coefficients > 0).all()
