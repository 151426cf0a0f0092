"""Aligned-MTL (Senushkin, Patakin, Kuznetsov, Konushin, "Independent Component Alignment for Multi-Task Learning",
CVPR 2023).

The task gradients ``G`` (K x P) are replaced by the aligned ``G~ = sigma_min U V^T`` (``G = U Sigma V^T``): all
singular values set to the smallest one, which makes the linear system of gradients perfectly conditioned (no task
dominates, no conflicting components cancel). From the eigendecomposition of ``M = G G^T = V L V^T``,
``G~ = B G`` with ``B = sqrt(l_min) V L^-1/2 V^T``; the update is ``sum_k G~_k = (B^T 1) . G``. Directions with an
eigenvalue below the numerical tolerance are dropped (a rank-deficient ``G``), by masking rather than slicing so
that the shapes never depend on the data.

The K x K eigendecomposition is a few cyclic Jacobi sweeps on the device: ``torch.linalg.eigh`` checks for
convergence on the host (a synchronisation every step) and raises on the NaN an fp16 overflow brings, where the
step should instead be skipped by the AMP scaler.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor

from perception.mtl.gradients import GradientWeighting


def symmetric_eigh(matrix: Tensor, sweeps: int = 8) -> tuple[Tensor, Tensor]:
    """Eigenvalues (unsorted, Tensor[K]) and eigenvectors (columns, Tensor[K, K]) of a small symmetric matrix by
    cyclic Jacobi rotations: each rotation zeroes one off-diagonal pair; convergence is quadratic, so a few sweeps
    reach machine precision for the K <= 8 of multi-task learning."""
    k = matrix.shape[0]
    eye = torch.eye(k, dtype=matrix.dtype, device=matrix.device)
    a, vectors = matrix, eye
    pairs = [(p, q) for p in range(k - 1) for q in range(p + 1, k)]
    diag_pq = [eye[:, [p]] @ eye[[p]] + eye[:, [q]] @ eye[[q]] for p, q in pairs]    # E_pp + E_qq
    skew_pq = [eye[:, [p]] @ eye[[q]] - eye[:, [q]] @ eye[[p]] for p, q in pairs]    # E_pq - E_qp
    for _ in range(sweeps):
        for (p, q), diag, skew in zip(pairs, diag_pq, skew_pq):
            theta = 0.5 * torch.atan2(2.0 * a[p, q], a[q, q] - a[p, p])             # makes the new a_pq zero
            rotation = eye + (torch.cos(theta) - 1.0) * diag + torch.sin(theta) * skew
            a = rotation.T @ a @ rotation
            vectors = vectors @ rotation
    return a.diagonal(), vectors


def aligned_coefficients(gram: Tensor) -> Tensor:
    """``B^T 1``: the coefficient of each original gradient in the aligned update.

    Args:
        gram (Tensor[K, K]): ``G G^T``.

    Returns:
        Tensor[K], float64.
    """
    gram = gram.double()
    eigvals, eigvecs = symmetric_eigh(gram)
    tol = eigvals.max().clamp_min(0.0) * gram.shape[0] * torch.finfo(torch.float32).eps
    kept = eigvals > tol
    smallest = torch.where(kept, eigvals, torch.full_like(eigvals, float("inf"))).min()
    smallest = torch.nan_to_num(smallest, posinf=0.0)                      # all gradients zero: no update
    inv_sqrt = torch.where(kept, eigvals.clamp_min(1e-300).rsqrt(), torch.zeros_like(eigvals))
    basis = smallest.sqrt() * (eigvecs * inv_sqrt) @ eigvecs.T
    return basis.sum(0)


class AlignedMTL(GradientWeighting):
    """Gradients aligned to equal singular values.

    Args:
        tasks: task names.
    """

    def __init__(self, tasks: Iterable[str]) -> None:
        super().__init__(tasks)

    def combine(self, grads: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        coefficients = aligned_coefficients(grads @ grads.T).float()
        return coefficients @ grads, coefficients
