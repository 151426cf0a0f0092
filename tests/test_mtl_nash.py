"""Nash-MTL: the bargaining solution (equations to 1e-4, positive, the closed forms for orthogonal and parallel
gradients, scipy's minimiser of the same convex problem), the weights reused with nash_update_every, and a tiny
training run. (The written gradient, AMP and absent tasks are in test_mtl_gradients.py with the other methods.)"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from _engine_utils import tiny_config, toy_loader_fn
from perception.engine.checkpoint import load_checkpoint
from perception.engine.trainer import train
from perception.mtl import NashMTL, WeightingConfig, build_weighting
from perception.mtl.nash_mtl import nash_weights


def _residual(gram: torch.Tensor, alpha: torch.Tensor) -> float:
    """The largest relative violation of (G G^T alpha)_k = 1 / alpha_k."""
    return float(((gram @ alpha) * alpha - 1.0).abs().max())


HAND_MADE = {
    "two_conflicting": [[1.0, 0.0], [-0.5, 1.0]],
    "two_agreeing_unequal": [[3.0, 1.0, 0.0], [0.2, 0.1, 0.05]],
    "three_mixed": [[1.0, 2.0, 0.0, 0.0], [-1.0, 0.5, 1.0, 0.0], [0.0, 0.1, -0.3, 10.0]],
}


@pytest.mark.parametrize("name", list(HAND_MADE))
def test_hand_made_gradients_solve_the_bargaining_equations(name):
    g = torch.tensor(HAND_MADE[name], dtype=torch.float64)
    gram = g @ g.T
    alpha = nash_weights(gram)
    assert (alpha > 0).all()
    assert _residual(gram, alpha) < 1e-4
    # Every task's directional derivative along the update is 1 / alpha_k > 0: no task's loss goes up.
    assert ((g @ (alpha @ g)) > 0).all()


def test_orthogonal_and_parallel_gradients_have_closed_forms():
    g = torch.diag(torch.tensor([2.0, 0.5, 4.0], dtype=torch.float64))
    torch.testing.assert_close(nash_weights(g @ g.T), 1.0 / torch.tensor([2.0, 0.5, 4.0], dtype=torch.float64))
    # g_2 = 2 g_1, |g_1| = n: alpha_1 = 2 alpha_2, alpha_2 = 1 / (2 sqrt(2) n).
    g1 = torch.tensor([3.0, 4.0], dtype=torch.float64)
    g = torch.stack([g1, 2 * g1])
    torch.testing.assert_close(nash_weights(g @ g.T), torch.tensor([2.0, 1.0], dtype=torch.float64)
                               / (2 * math.sqrt(2) * 5.0), rtol=1e-6, atol=0)


@pytest.mark.parametrize("seed", range(12))
def test_matches_scipys_minimiser_of_the_same_convex_problem(seed):
    rng = np.random.default_rng(seed)
    k = 2 + seed % 3
    g = rng.normal(size=(k, 20)) * rng.uniform(0.01, 10.0, size=(k, 1))    # tasks of very different scales
    gram = g @ g.T
    alpha = nash_weights(torch.tensor(gram)).numpy()
    # f(a) = a^T M a / 2 - sum log a, stationary exactly where M a = 1 / a; minimised in log a to stay positive.
    f = lambda u: 0.5 * np.exp(u) @ gram @ np.exp(u) - u.sum()  # noqa: E731
    jac = lambda u: np.exp(u) * (gram @ np.exp(u)) - 1.0        # noqa: E731
    ref = np.exp(minimize(f, np.zeros(k), jac=jac, method="BFGS", options={"gtol": 1e-12}).x)
    np.testing.assert_allclose(alpha, ref, rtol=1e-4)
    assert _residual(torch.tensor(gram), torch.tensor(alpha)) < 1e-4


def test_weights_are_reused_between_solves_and_survive_a_checkpoint():
    nash = build_weighting(WeightingConfig(method="nash_mtl", nash_update_every=3), ["a", "b"])
    assert isinstance(nash, NashMTL) and nash.update_every == 3
    g1 = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    g2 = torch.tensor([[1.0, 1.0], [-1.0, 4.0]])
    _, first = nash.combine(g1, torch.ones(2))
    _, reused = nash.combine(g2, torch.ones(2))       # step 2 of 3: the weights of g1
    torch.testing.assert_close(reused, first)
    state = nash.state_dict()
    other = NashMTL(["a", "b"], update_every=3)
    other.load_state_dict(state)
    assert other.calls == 2 and torch.equal(other.alpha, nash.alpha)
    nash.combine(g2, torch.ones(2))                   # step 3: reused
    _, fresh = nash.combine(g2, torch.ones(2))        # step 4: solved again, for g2
    m = (g2 @ g2.T).double()
    torch.testing.assert_close(fresh, nash_weights(m / torch.linalg.matrix_norm(m)).float())
    assert not torch.allclose(fresh, first)
    with pytest.raises(ValueError, match="nash_update_every"):
        WeightingConfig(method="nash_mtl", nash_update_every=0).validate()


def test_a_tiny_run_trains_with_finite_losses(tmp_path):
    cfg = tiny_config(tmp_path / "run", "weighting.method=nash_mtl", "train.max_steps=8", "train.log_interval=1")
    run_dir = train(cfg, loader_fn=toy_loader_fn())
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    totals = [r["loss/total"] for r in log if "loss/total" in r]
    assert len(totals) == 8 and all(math.isfinite(t) for t in totals)
    assert all(r[f"weight/{t}"] > 0 for r in log if "weight/depth" in r for t in ("detection", "segmentation", "depth"))
    state = load_checkpoint(run_dir / "last.pt")
    assert (state["weighting"]["alpha"] > 0).all()
