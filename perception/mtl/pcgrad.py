"""PCGrad (Yu, Kumar, Gupta, Levine, Hausman, Finn, "Gradient Surgery for Multi-Task Learning", NeurIPS 2020).

For every task ``i`` and, in random order, every other task ``j`` whose gradient conflicts with it
(``g_i^PC . g_j < 0``), project ``g_i^PC`` onto the normal plane of ``g_j``:
``g_i^PC <- g_i^PC - (g_i^PC . g_j) / |g_j|^2 * g_j``; the shared update is ``sum_i g_i^PC``.

Every ``g_i^PC`` stays a linear combination of the original gradients, so the projections are carried out on the
``K x K`` coefficient matrix with the Gram matrix ``G G^T``: the ``P``-long gradients are touched twice (the Gram
matrix and the final combination) whatever the number of projections, and no step waits for the device (the
conflict test is a ``min(dot, 0)``, not a branch).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import Tensor

from perception.mtl.gradients import GradientWeighting

_EPS = 1e-20


def pcgrad_coefficients(gram: Tensor, orders: Sequence[Sequence[int]]) -> Tensor:
    """Coefficients ``C`` such that the projected gradients are ``C @ G``.

    Args:
        gram (Tensor[K, K]): ``G G^T`` of the task gradients.
        orders: for each task ``i``, the order in which the other tasks are visited (``i`` itself is skipped).

    Returns:
        Tensor[K, K]: row ``i`` expresses ``g_i^PC`` in the original gradients.
    """
    num_tasks = gram.shape[0]
    coeffs = torch.eye(num_tasks, dtype=gram.dtype, device=gram.device)
    rows = []
    for i in range(num_tasks):
        row = coeffs[i]
        for j in orders[i]:
            if j == i:
                continue
            dot = row @ gram[:, j]                                          # g_i^PC . g_j
            row = row - torch.clamp(dot, max=0.0) / gram[j, j].clamp_min(_EPS) * coeffs[j]
        rows.append(row)
    return torch.stack(rows)


def project_conflicting(grads: Tensor, orders: Sequence[Sequence[int]] | None = None) -> Tensor:
    """PCGrad's projected gradients.

    Args:
        grads (Tensor[K, P]): per-task gradients.
        orders: visiting order of the other tasks per task (default: random, from torch's CPU generator).

    Returns:
        Tensor[K, P]: ``g_i^PC`` for every task.
    """
    if orders is None:
        orders = random_orders(grads.shape[0])
    gram = (grads @ grads.T).double()
    return pcgrad_coefficients(gram, orders).to(grads.dtype) @ grads


def random_orders(num_tasks: int) -> list[list[int]]:
    """A random permutation of the tasks per task (drawn on the host: no device synchronisation)."""
    return [torch.randperm(num_tasks).tolist() for _ in range(num_tasks)]


class PCGrad(GradientWeighting):
    """Projecting conflicting gradients.

    Args:
        tasks: task names.
    """

    def __init__(self, tasks: Iterable[str]) -> None:
        super().__init__(tasks)

    def combine(self, grads: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        gram = (grads @ grads.T).double()                    # float32 products, float64 for the small solve
        coefficients = pcgrad_coefficients(gram, random_orders(grads.shape[0])).sum(0)  # sum_i g_i^PC
        return (coefficients.to(grads.dtype) @ grads), coefficients.float()
