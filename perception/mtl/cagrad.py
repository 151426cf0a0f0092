"""CAGrad (Liu, Liu, Jin, Stone, Liu, "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS 2021).

The update maximises the worst task's improvement within a ball around the average gradient
``g0 = (1/K) sum_k g_k``: ``max_d min_k <g_k, d>`` s.t. ``|d - g0| <= c |g0|``. Its dual is a problem over the
simplex, ``w* = argmin_w g_w . g0 + sqrt(phi) |g_w|`` with ``g_w = sum_k w_k g_k`` and ``sqrt(phi) = c |g0|``,
and the update is ``d = g0 + sqrt(phi) / |g_w*| g_w*``, divided by ``1 + c^2`` (the paper code's ``rescale=1``).
``c = 0`` is plain averaging; ``c = 0.4`` is the paper's choice for NYUv2 and Cityscapes.

The paper's code solves the dual with scipy's SLSQP on the host. Here it is solved exactly on the device: on the
face of the simplex that holds the optimum, the stationarity conditions ``a + sqrt(phi) M w / t + lam 1 = 0``
with ``t = |g_w|`` give ``w`` as an affine function of ``lam``, and ``w^T M w = t^2`` leaves a quadratic in
``lam``. Every face and root is a candidate; the best feasible one wins (with the minimum-norm point as an extra
candidate for the corner case ``g_w* = 0``).
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor

from perception.mtl.gradients import GradientWeighting
from perception.mtl.mgda import min_norm_weights, simplex_faces


def cagrad_objective(weights: Tensor, gram: Tensor, c: float) -> Tensor:
    """The dual objective ``w^T M b + c sqrt(b^T M b) sqrt(w^T M w)`` (b = 1/K) for weights Tensor[..., K]."""
    num_tasks = gram.shape[0]
    mean = torch.full((num_tasks,), 1.0 / num_tasks, dtype=gram.dtype, device=gram.device)
    g0_norm = (mean @ gram @ mean).clamp_min(0.0).sqrt()
    quad = torch.einsum("...i,ij,...j->...", weights, gram, weights).clamp_min(0.0)
    return weights @ (gram @ mean) + c * g0_norm * quad.sqrt()


def cagrad_weights(gram: Tensor, c: float) -> Tensor:
    """The dual's minimiser ``w*`` over the simplex.

    Args:
        gram (Tensor[K, K]): ``G G^T`` of the task gradients.
        c: the radius of the ball, relative to ``|g0|``.

    Returns:
        Tensor[K], float64.
    """
    num_tasks = gram.shape[0]
    gram = gram.double()
    gram = gram / gram.diagonal().mean().clamp_min(1e-300)      # scale-free problem; keeps the ridge meaningful
    mean = torch.full((num_tasks,), 1.0 / num_tasks, dtype=gram.dtype, device=gram.device)
    a = gram @ mean                                              # M b
    radius = c * (mean @ a).clamp_min(0.0).sqrt()                # sqrt(phi) = c |g0|
    faces = simplex_faces(num_tasks, gram.device)                # [F, K]
    inside = faces[:, :, None] & faces[:, None, :]
    eye = torch.eye(num_tasks, dtype=gram.dtype, device=gram.device)
    # M restricted to the face, identity elsewhere, so that u = M_S^-1 a_S and v = M_S^-1 1_S vanish off the face.
    block = torch.where(inside, gram + 1e-12 * eye, eye.expand(faces.shape[0], -1, -1).masked_fill(inside, 0.0))
    rhs = torch.stack([a.expand_as(faces).masked_fill(~faces, 0.0), faces.to(gram.dtype)], dim=-1)  # [F, K, 2]
    solved, _ = torch.linalg.solve_ex(block, rhs)
    u, v = solved[..., 0], solved[..., 1]                        # [F, K]
    q2, q1, q0 = v.sum(-1), u.sum(-1), (u * a).sum(-1)           # v^T M v, u^T M v, u^T M u on the face
    disc = (q1 * q1 - q2 * (q0 - radius * radius)).clamp_min(0.0).sqrt()
    candidates = []
    for sign in (1.0, -1.0):
        lam = (-q1 + sign * disc) / q2
        # sum(w) = 1 by construction; the objective is evaluated exactly below, so any candidate that lies on the
        # simplex is safe to offer (the stationary one has t = -radius / (q1 + lam q2) > 0).
        w = (u + lam[:, None] * v) / (q1 + lam * q2)[:, None]
        ok = (w >= -1e-9).all(-1) & torch.isfinite(w).all(-1)
        candidates.append((w.masked_fill(~faces, 0.0), ok))
    min_norm = min_norm_weights(gram)[None]
    weights = torch.cat([w for w, _ in candidates] + [min_norm, torch.eye(num_tasks, dtype=gram.dtype,
                                                                          device=gram.device)])
    feasible = torch.cat([ok for _, ok in candidates]
                         + [torch.ones(1 + num_tasks, dtype=torch.bool, device=gram.device)])
    objective = cagrad_objective(weights, gram, c).masked_fill(~feasible, float("inf"))
    best = weights.index_select(0, objective.argmin().view(1))[0].clamp_min(0.0)
    return best / best.sum()


class CAGrad(GradientWeighting):
    """Conflict-averse gradient descent.

    Args:
        tasks: task names.
        c: radius of the trust region around the average gradient, relative to its norm (paper: 0.4).
    """

    def __init__(self, tasks: Iterable[str], c: float = 0.4) -> None:
        super().__init__(tasks)
        if c < 0:
            raise ValueError(f"weighting.cagrad_c: got {c}, expected a value >= 0")
        self.c = float(c)

    def combine(self, grads: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        num_tasks = grads.shape[0]
        gram = (grads @ grads.T).double()
        mean = torch.full((num_tasks,), 1.0 / num_tasks, dtype=gram.dtype, device=gram.device)
        if self.c == 0.0:
            coefficients = mean
        else:
            w = cagrad_weights(gram, self.c)
            g0_norm = (mean @ gram @ mean).clamp_min(0.0).sqrt()
            gw_norm = (w @ gram @ w).clamp_min(0.0).sqrt()
            coefficients = mean + self.c * g0_norm / (gw_norm + 1e-12) * w
        coefficients = (coefficients / (1.0 + self.c ** 2)).float()
        return coefficients @ grads, coefficients
