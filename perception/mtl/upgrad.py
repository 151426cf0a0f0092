"""UPGrad (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", arXiv 2406.16232, 2024).

Each task's gradient ``g_i`` is projected onto the dual cone of all the task gradients, ``{x : <g_k, x> >= 0 for
every k}`` (the directions that increase no task's loss to first order), and the projections are averaged:
``d = (1/K) sum_i pi(g_i)``. A gradient that conflicts with none of the others is left as it is (so agreeing
gradients give their mean, equal ones that gradient); a conflicting one loses just the component that hurts the
others. The average of points of the cone lies in the cone, so ``<g_k, d> >= 0`` for every task.

By the paper's Proposition 1, ``pi(g_i) = G^T w^(i)`` with ``w^(i) = argmin_{v >= e_i} v^T M v`` (``M = G G^T``):
one small quadratic programme per task on the ``K x K`` Gram matrix, and ``d = G^T mean_i w^(i)``. Each is solved
here exactly on the device: the optimum fixes some coordinates at their bound ``v_j = (e_i)_j`` and is stationary
in the others (``(M v)_j = 0``); every such split of the coordinates (``2^K``, 8 for three tasks) is solved in one
batched ``linalg.solve_ex`` and the feasible candidate of least objective is the optimum (the problem is convex
and every candidate is a feasible point or rejected). No host synchronisation and no QP package (torchjd, the
authors' library, calls quadprog on the host).
"""
from __future__ import annotations

import itertools
from typing import Iterable

import torch
from torch import Tensor

from perception.mtl.gradients import GradientWeighting


def dual_cone_weights(gram: Tensor, lower: Tensor, ridge: float = 1e-12) -> Tensor:
    """``argmin_{v >= lower} v^T M v`` for each row of ``lower``: the weights of the projection of ``G^T lower``
    onto the dual cone of the rows of ``G``.

    Args:
        gram (Tensor[K, K]): ``M = G G^T``.
        lower (Tensor[R, K]): the lower bounds ``u`` (UPGrad: the rows of the identity).
        ridge: added to the diagonal of ``M / mean(diag M)`` (keeps collinear gradients solvable).

    Returns:
        Tensor[R, K], float64.
    """
    k = gram.shape[0]
    gram = gram.double()
    # The minimiser does not depend on the scale of M; normalising keeps the ridge meaningful.
    eye = torch.eye(k, dtype=gram.dtype, device=gram.device)
    gram = gram / gram.diagonal().mean().clamp_min(1e-300) + ridge * eye
    lower = lower.to(gram)
    free = torch.tensor(list(itertools.product((False, True), repeat=k)), dtype=torch.bool,
                        device=gram.device)                                              # [S, K]
    # Rows of the free coordinates: (M v)_j = 0; rows at the bound: v_j = u_j.
    system = torch.where(free[:, :, None], gram, eye)                                   # [S, K, K]
    rhs = torch.where(free[None], 0.0, lower[:, None, :])                               # [R, S, K]
    v = torch.linalg.solve_ex(system.expand(lower.shape[0], -1, -1, -1), rhs[..., None])[0][..., 0]
    feasible = (v >= lower[:, None, :] - 1e-9).all(-1) & torch.isfinite(v).all(-1)     # [R, S]
    objective = torch.einsum("rsi,ij,rsj->rs", v, gram, v).masked_fill(~feasible, float("inf"))
    best = objective.argmin(dim=1)                                                      # v = u is always feasible
    return torch.gather(v, 1, best[:, None, None].expand(-1, 1, k))[:, 0]


def upgrad_weights(gram: Tensor) -> Tensor:
    """The coefficient of each task gradient in UPGrad's update, ``mean_i w^(i)``.

    Args:
        gram (Tensor[K, K]): ``G G^T`` of the task gradients.

    Returns:
        Tensor[K], float64.
    """
    k = gram.shape[0]
    return dual_cone_weights(gram, torch.eye(k, dtype=torch.float64, device=gram.device)).mean(0)


class UPGrad(GradientWeighting):
    """Unconflicting projection of gradients: the mean of each task's gradient projected onto the dual cone.

    Args:
        tasks: task names.
    """

    def __init__(self, tasks: Iterable[str]) -> None:
        super().__init__(tasks)

    def combine(self, grads: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        coefficients = upgrad_weights(grads @ grads.T).float()
        return coefficients @ grads, coefficients
