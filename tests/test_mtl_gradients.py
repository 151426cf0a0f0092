"""Gradient methods: each one's defining property, the gradients they write, AMP and absent tasks."""
from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from _mtl_utils import TinyMultiTask, flat_grad, mse_losses, per_task_grads, regression_data
from perception.mtl import MGDA, AlignedMTL, CAGrad, PCGrad, WeightingConfig, build_weighting
from perception.mtl.aligned_mtl import aligned_coefficients, symmetric_eigh
from perception.mtl.cagrad import cagrad_objective, cagrad_weights
from perception.mtl.mgda import min_norm_weights
from perception.mtl.pcgrad import project_conflicting

TASKS = ["detection", "segmentation", "depth"]


def random_gradients(num_tasks: int, dim: int, seed: int) -> torch.Tensor:
    g = torch.randn(num_tasks, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    if seed % 3 == 0:
        g[1] = -0.5 * g[0] + 0.1 * g[1]          # a strong conflict
    return g


# ----------------------------------------------------------------------------------------------------- PCGrad
@pytest.mark.parametrize("seed", range(20))
def test_pcgrad_removes_every_conflict_between_two_tasks(seed):
    grads = random_gradients(2, 6, seed)
    projected = project_conflicting(grads)
    if grads[0] @ grads[1] < 0:
        assert projected[0] @ projected[1] >= -1e-12             # the pair no longer conflicts
        assert projected[0] @ grads[1] == pytest.approx(0.0, abs=1e-12)  # each lies on the other's normal plane
        assert projected[1] @ grads[0] == pytest.approx(0.0, abs=1e-12)
    else:
        torch.testing.assert_close(projected, grads)


def test_pcgrad_leaves_agreeing_gradients_unchanged_and_projects_in_the_given_order():
    agreeing = torch.tensor([[1.0, 0.2, 0.0], [0.5, 1.0, 0.1], [0.1, 0.3, 2.0]], dtype=torch.float64)
    torch.testing.assert_close(project_conflicting(agreeing), agreeing)
    # Three tasks, by hand: g0 conflicts with g1 and g2, and the visiting order matters.
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0], [-1.0, -2.0]], dtype=torch.float64)
    # g1 first: (1, 0) -> (0.5, 0.5), which still conflicts with g2 (dot -1.5): -> (0.5, 0.5) - 0.3 (1, 2).
    projected = project_conflicting(g, orders=[[1, 2], [0, 2], [0, 1]])
    torch.testing.assert_close(projected[0], torch.tensor([0.2, -0.1], dtype=torch.float64))
    # g2 first: (1, 0) -> (0.8, -0.4), which conflicts with g1 (dot -1.2): -> (0.8, -0.4) - 0.6 (1, -1).
    projected = project_conflicting(g, orders=[[2, 1], [0, 2], [0, 1]])
    torch.testing.assert_close(projected[0], torch.tensor([0.2, 0.2], dtype=torch.float64))


# ------------------------------------------------------------------------------------------------------- MGDA
@pytest.mark.parametrize("seed", range(20))
def test_min_norm_weights_of_two_gradients_match_the_closed_form(seed):
    g1, g2 = random_gradients(2, 5, seed)
    weights = min_norm_weights(torch.stack([g1, g2]) @ torch.stack([g1, g2]).T)
    # Sener & Koltun, Algorithm 1: gamma = clip(((g2 - g1) . g2) / |g1 - g2|^2, 0, 1) is the weight of g1.
    gamma = float(torch.clamp((g2 - g1) @ g2 / ((g1 - g2) @ (g1 - g2)), 0.0, 1.0))
    assert weights[0].item() == pytest.approx(gamma, abs=1e-9)
    assert weights.sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize("num_tasks,seed", list(itertools.product([2, 3, 4], range(6))))
def test_min_norm_direction_is_a_common_descent_direction_and_optimal(num_tasks, seed):
    grads = random_gradients(num_tasks, 7, seed)
    weights = min_norm_weights(grads @ grads.T)
    direction = weights @ grads
    norm2 = direction @ direction
    # The min-norm point d satisfies d . g_k >= |d|^2 >= 0 for every task.
    assert ((grads @ direction) >= norm2 - 1e-9).all()
    gram = (grads @ grads.T).numpy()
    reference = minimize(lambda w: w @ gram @ w, np.full(num_tasks, 1 / num_tasks), method="SLSQP",
                         bounds=[(0, 1)] * num_tasks, constraints={"type": "eq", "fun": lambda w: w.sum() - 1},
                         tol=1e-14)
    assert norm2.item() <= reference.fun + 1e-9


# ----------------------------------------------------------------------------------------------------- CAGrad
@pytest.mark.parametrize("num_tasks,seed", list(itertools.product([2, 3], range(8))))
def test_cagrad_dual_matches_a_generic_solver(num_tasks, seed):
    grads = random_gradients(num_tasks, 6, seed)
    gram = grads @ grads.T
    weights = cagrad_weights(gram, 0.4)
    assert weights.min() >= 0 and weights.sum().item() == pytest.approx(1.0)
    fn = lambda w: float(cagrad_objective(torch.as_tensor(w), gram, 0.4))  # noqa: E731
    reference = minimize(fn, np.full(num_tasks, 1 / num_tasks), method="SLSQP", bounds=[(0, 1)] * num_tasks,
                         constraints={"type": "eq", "fun": lambda w: w.sum() - 1}, tol=1e-14)
    assert fn(weights.numpy()) <= reference.fun + 1e-7


def test_cagrad_stays_in_the_ball_and_improves_the_worst_task():
    grads = torch.tensor([[1.0, 0.1], [-0.8, 0.6]])
    method = CAGrad(["a", "b"], c=0.4)
    direction, _ = method.combine(grads, torch.ones(2))
    unscaled = direction * (1 + 0.4 ** 2)                        # undo the paper code's rescale
    g0 = grads.mean(0)
    assert torch.linalg.vector_norm(unscaled - g0) <= 0.4 * torch.linalg.vector_norm(g0) + 1e-5
    assert (grads @ unscaled).min() > (grads @ g0).min()        # the worst task improves more than with g0
    plain, _ = CAGrad(["a", "b"], c=0.0).combine(grads, torch.ones(2))
    torch.testing.assert_close(plain, g0)


# ------------------------------------------------------------------------------------------------ Aligned-MTL
def test_aligned_mtl_equalises_the_singular_values():
    grads = random_gradients(3, 8, 1)
    basis_sum = aligned_coefficients(grads @ grads.T)
    # The aligned gradients B G have equal singular values; their sum is (B^T 1) G.
    eigvals, eigvecs = torch.linalg.eigh(grads @ grads.T)
    aligned = eigvals.min().sqrt() * eigvecs @ torch.diag(eigvals.rsqrt()) @ eigvecs.T @ grads
    singular = torch.linalg.svdvals(aligned)
    torch.testing.assert_close(singular, singular.min().expand(3))
    torch.testing.assert_close(basis_sum @ grads, aligned.sum(0))
    # Orthogonal gradients of equal norm are already aligned: the update is their sum.
    torch.testing.assert_close(aligned_coefficients(torch.eye(3)), torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize("seed", range(12))
def test_jacobi_eigendecomposition_matches_lapack(seed):
    grads = random_gradients(2 + seed % 3, 6, seed)
    if seed % 4 == 0:
        grads[1] = 2.0 * grads[0]                                # rank-deficient
    gram = grads @ grads.T
    eigvals, eigvecs = symmetric_eigh(gram)
    torch.testing.assert_close(eigvals.sort().values, torch.linalg.eigvalsh(gram), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close((eigvecs * eigvals) @ eigvecs.T, gram, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(eigvecs.T @ eigvecs, torch.eye(gram.shape[0], dtype=gram.dtype))


# ------------------------------------------------------------------------------ backward on a shared network
@pytest.mark.parametrize("method", ["pcgrad", "mgda", "cagrad", "aligned_mtl", "nash_mtl", "upgrad"])
def test_backward_writes_the_combined_gradient_and_heads_get_their_own(method):
    torch.manual_seed(0)
    model = TinyMultiTask(TASKS)
    x, y = regression_data(TASKS)
    weighting = build_weighting(WeightingConfig(method=method, mgda_on_features=False), TASKS)
    shared = list(model.shared_parameters())
    losses = mse_losses(model(x), y, {"depth": 3.0})
    grads = per_task_grads(model, losses, shared).float()
    head_grads = {t: torch.autograd.grad(losses[t], list(model.heads[t].parameters()), retain_graph=True)
                  for t in TASKS}
    torch.manual_seed(1)                                      # PCGrad's visiting order
    expected, _ = weighting.combine(grads, torch.stack([l.detach() for l in losses.values()]))
    torch.manual_seed(1)
    model.zero_grad()
    total, weights = weighting.backward(losses, model.shared_parameters)
    torch.testing.assert_close(flat_grad(shared), expected, atol=1e-6, rtol=1e-5)
    for t in TASKS:
        for p, g in zip(model.heads[t].parameters(), head_grads[t]):
            torch.testing.assert_close(p.grad, g)
    assert total.item() == pytest.approx(sum(l.item() for l in losses.values()), rel=1e-6)
    assert set(weights) == set(TASKS)


def test_mgda_on_features_equals_weights_times_task_gradients():
    torch.manual_seed(0)
    model = TinyMultiTask(TASKS)
    x, y = regression_data(TASKS)
    weighting = MGDA(TASKS, on_features=True, normalization="none")
    assert weighting.needs_features and weighting.manual_grad_sync
    outputs, features = model(x, return_features=True)
    losses = mse_losses(outputs, y)
    feature_grads = [torch.autograd.grad(losses[t], features[0], retain_graph=True)[0].reshape(-1) for t in TASKS]
    z = torch.stack(feature_grads)
    alpha = min_norm_weights(z @ z.T).float()
    shared = list(model.shared_parameters())
    expected = alpha @ per_task_grads(model, losses, shared)   # sum_k a_k dL_k/dtheta, through the features
    head = {t: torch.autograd.grad(losses[t], list(model.heads[t].parameters()), retain_graph=True)
            for t in TASKS}
    model.zero_grad()
    _, weights = weighting.backward(losses, model.shared_parameters, shared_features=features)
    torch.testing.assert_close(flat_grad(shared), expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(torch.stack([weights[t] for t in TASKS]), alpha)
    for t in TASKS:                                            # heads: their own, unweighted gradient
        for p, g in zip(model.heads[t].parameters(), head[t]):
            torch.testing.assert_close(p.grad, g)
    # The combined direction does not increase any task's loss to first order (on the features).
    direction = alpha @ z
    assert ((z @ direction) >= -1e-7).all()


@pytest.mark.parametrize("method", ["pcgrad", "mgda", "cagrad", "aligned_mtl", "nash_mtl", "upgrad", "db_mtl",
                                    "gradnorm"])
def test_amp_scaled_backward_matches_the_unscaled_one_and_skips_on_overflow(method):
    torch.manual_seed(0)
    model = TinyMultiTask(TASKS)
    x, y = regression_data(TASKS)
    weighting = build_weighting(WeightingConfig(method=method), TASKS)
    params = list(model.parameters()) + list(weighting.parameters())
    weighting.shared_parameters_fn(model)
    initial = copy.deepcopy(weighting.state_dict())       # DB-MTL's moving averages: the same start for both

    def step(scale, features_too=True):
        weighting.load_state_dict(initial)
        model.zero_grad()
        weighting.zero_grad()
        outputs, features = model(x, return_features=True)
        torch.manual_seed(3)
        weighting.backward(mse_losses(outputs, y), weighting.shared_parameters_fn(model), scale=scale,
                           shared_features=features if features_too else None)
        return [p.grad.clone() if p.grad is not None else None for p in params]

    plain = step(lambda loss: loss)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    optimizer = torch.optim.SGD(params, lr=0.1)
    scaled = step(scaler.scale)
    scaler.unscale_(optimizer)
    for p, ref, raw in zip(params, plain, scaled):
        if ref is None:
            assert p.grad is None
            continue
        torch.testing.assert_close(raw, ref * 1024.0, rtol=1e-4, atol=1e-6)   # written scaled
        torch.testing.assert_close(p.grad, ref, rtol=1e-4, atol=1e-7)         # what the optimizer steps on
    scaler.update()
    # An overflowing task (inf loss) must make the scaler skip the step, not write finite garbage.
    before = [p.detach().clone() for p in params]
    optimizer.zero_grad()
    outputs, features = model(x, return_features=True)
    losses = mse_losses(outputs, y)
    losses["depth"] = losses["depth"] * torch.tensor(float("inf"))
    weighting.backward(losses, weighting.shared_parameters_fn(model), scale=scaler.scale, shared_features=features)
    scaler.step(optimizer)
    scaler.update()
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    assert scaler.get_scale() < 1024.0


@pytest.mark.parametrize("method", ["pcgrad", "mgda", "cagrad", "aligned_mtl", "nash_mtl", "upgrad"])
def test_absent_and_scheduled_out_tasks_get_no_update(method):
    torch.manual_seed(0)
    model = TinyMultiTask(TASKS)
    x, y = regression_data(TASKS)
    weighting = build_weighting(WeightingConfig(method=method), TASKS)
    # Detection scheduled out (its head not run), depth without labels in the batch (loss exactly 0).
    outputs, features = model(x, tasks=["segmentation", "depth"], return_features=True)
    losses = mse_losses(outputs, y)
    losses["depth"] = losses["depth"] * 0.0
    model.zero_grad()
    _, weights = weighting.backward(losses, model.shared_parameters, present={"depth": False},
                                    shared_features=features)
    assert all(p.grad is None for p in model.heads["detection"].parameters())
    assert all(torch.count_nonzero(p.grad) == 0 for p in model.heads["depth"].parameters())
    reference = per_task_grads(model, mse_losses(model(x, tasks=["segmentation"]), y), list(model.trunk.parameters()))
    torch.testing.assert_close(flat_grad(list(model.trunk.parameters())), reference[0])  # only segmentation left
    assert weights["detection"].item() == 0.0 and weights["depth"].item() == 0.0


def test_gradient_methods_train_a_shared_network():
    x, y = regression_data(TASKS, n=128)
    torch.manual_seed(0)
    start = {t: l.item() for t, l in mse_losses(TinyMultiTask(TASKS, hidden=16)(x), y).items()}
    final = {}
    for method in ["equal", "pcgrad", "mgda", "cagrad", "aligned_mtl", "nash_mtl", "upgrad"]:
        torch.manual_seed(0)
        model = TinyMultiTask(TASKS, hidden=16)
        weighting = build_weighting(WeightingConfig(method=method), TASKS)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(300):
            outputs, features = model(x, return_features=True)
            optimizer.zero_grad()
            weighting.backward(mse_losses(outputs, y), model.shared_parameters, shared_features=features)
            optimizer.step()
        final[method] = {t: l.item() for t, l in mse_losses(model(x), y).items()}
        assert all(final[method][t] < 0.5 * start[t] for t in TASKS), (method, final[method], start)


@pytest.mark.parametrize("sharing", ["hard", "mtan"])
def test_mgda_on_the_real_pyramid_equals_the_weighted_parameter_gradients(sharing):
    # P6/P7 are computed from P5: replacing each level's gradient must still give sum_k a_k dL_k/dtheta; with
    # task attention between the pyramid and the heads too (the attention modules belong to their tasks).
    import numpy as np

    from _mtl_utils import tiny_model
    from perception.data.batch import collate
    from scenes import toy_scene

    torch.manual_seed(0)
    model = tiny_model(sharing=sharing)
    batch = collate([toy_scene(np.random.default_rng(0), 64, 64) for _ in range(2)])
    outputs, features = model(batch.images, return_features=True)
    assert len(features) == 6
    losses, _ = model.compute_losses(outputs, batch)
    shared = list(model.shared_parameters())
    reference = per_task_grads(model, losses, shared)
    own = {t: torch.autograd.grad(losses[t], list(model.task_parameters(t)), retain_graph=True) for t in model.tasks}
    model.zero_grad()
    _, weights = MGDA(model.tasks).backward(losses, model.shared_parameters, shared_features=features)
    alpha = torch.stack([weights[t] for t in model.tasks])
    assert alpha.min() > 0 and alpha.sum().item() == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(flat_grad(shared), alpha @ reference, atol=2e-5, rtol=1e-4)
    for t in model.tasks:                       # heads (and attention modules): their own, unweighted gradient
        for p, g in zip(model.task_parameters(t), own[t]):
            torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=1e-4)
