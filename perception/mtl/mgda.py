"""MGDA-UB (Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018).

The shared update is the minimum-norm point of the convex hull of the task gradients,
``d = sum_k a_k g_k`` with ``a = argmin_{a in simplex} |sum_k a_k g_k|^2``: a common descent direction
(``d . g_k >= |d|^2 >= 0`` for every task) that is zero only at a Pareto-stationary point. The upper bound (UB)
variant takes the gradients with respect to the shared representation ``Z`` (the FPN pyramid) instead of the
shared parameters, which needs one cheap backward through the heads per task instead of one through the whole
trunk; the weights ``a`` then multiply the losses for the shared part, while every head gets its own gradient.

The small quadratic programme over the simplex is solved exactly and without a host synchronisation: the optimum
lies in the relative interior of one face of the simplex, each face's equality-constrained minimum comes from its
KKT system, and the best feasible one is kept (``2^K - 1`` faces: 7 for three tasks).

Gradient normalisation (options of the paper's code): before the solve each task's gradient is divided by its
norm (``l2``), its loss (``loss``) or both (``loss+``, the setting of the paper's experiments and the default
here); the weights found are applied to the raw losses, as there. Without it (``none``) the task with the
smallest gradient dominates the min-norm point, and tasks whose losses differ in scale stall.
"""
from __future__ import annotations

import itertools
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from perception.mtl.base import with_extra, zero_with_graph
from perception.mtl.gradients import GradientWeighting, loss_scale_factor, masked_nan

NORMALIZATIONS = ("none", "l2", "loss", "loss+")


def simplex_faces(num_tasks: int, device: torch.device | None = None) -> Tensor:
    """Every non-empty subset of the tasks as a boolean mask, Tensor[2^K - 1, K]."""
    masks = [m for m in itertools.product((False, True), repeat=num_tasks) if any(m)]
    return torch.tensor(masks, dtype=torch.bool, device=device)


def min_norm_weights(gram: Tensor) -> Tensor:
    """``argmin_{a >= 0, sum a = 1} a^T M a``: the weights of the minimum-norm point of the gradients' hull.

    Args:
        gram (Tensor[K, K]): ``M = G G^T`` of the task gradients.

    Returns:
        Tensor[K] on the simplex (float64).
    """
    num_tasks = gram.shape[0]
    gram = gram.double()
    # The weights do not depend on the scale of M; normalising keeps the ridge below meaningful.
    gram = gram / gram.diagonal().mean().clamp_min(1e-300)
    faces = simplex_faces(num_tasks, gram.device)                           # [F, K]
    num_faces = faces.shape[0]
    inside = faces[:, :, None] & faces[:, None, :]                          # [F, K, K]
    eye = torch.eye(num_tasks, dtype=gram.dtype, device=gram.device)
    # KKT of min a^T M a s.t. sum_S a = 1, a_i = 0 off the face: rows 2 (M a)_i + lam = 0 on the face,
    # a_i = 0 off it, and the sum constraint. The ridge keeps collinear gradients solvable.
    block = torch.where(inside, 2.0 * gram + 1e-12 * eye, eye.expand(num_faces, -1, -1).masked_fill(inside, 0.0))
    system = torch.zeros(num_faces, num_tasks + 1, num_tasks + 1, dtype=gram.dtype, device=gram.device)
    system[:, :num_tasks, :num_tasks] = block
    system[:, :num_tasks, num_tasks] = faces.to(gram.dtype)
    system[:, num_tasks, :num_tasks] = faces.to(gram.dtype)
    rhs = torch.zeros(num_faces, num_tasks + 1, 1, dtype=gram.dtype, device=gram.device)
    rhs[:, num_tasks] = 1.0
    solution, _ = torch.linalg.solve_ex(system, rhs)                        # no error check: no sync
    weights = solution[:, :num_tasks, 0].masked_fill(~faces, 0.0)           # [F, K]
    feasible = (weights >= -1e-9).all(dim=1) & torch.isfinite(weights).all(dim=1)
    objective = torch.einsum("fi,ij,fj->f", weights, gram, weights).masked_fill(~feasible, float("inf"))
    best = weights.index_select(0, objective.argmin().view(1))[0].clamp_min(0.0)
    return best / best.sum()


def gradient_normalizers(norms: Tensor, losses: Tensor, normalization: str) -> Tensor:
    """The paper code's per-task gradient normalisers (Tensor[K]) from gradient norms and losses (Tensor[K])."""
    if normalization == "l2":
        return norms
    if normalization == "loss":
        return losses
    if normalization == "loss+":
        return losses * norms
    return torch.ones_like(norms)


class MGDA(GradientWeighting):
    """Minimum-norm combination of the task gradients.

    Args:
        tasks: task names.
        on_features: MGDA-UB: gradients with respect to the shared features (the trainer then passes them as
            ``shared_features``); without features (or with ``False``) the shared parameters are used.
        normalization: ``loss+`` (the paper's experiments), ``none`` (the bare algorithm), ``l2`` or ``loss``.
    """

    def __init__(self, tasks: Iterable[str], on_features: bool = True, normalization: str = "loss+") -> None:
        super().__init__(tasks)
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"weighting.mgda_normalization: got {normalization!r}, expected one of "
                             f"{', '.join(NORMALIZATIONS)}")
        self.needs_features = on_features
        self.normalization = normalization

    def weights_from_gram(self, gram: Tensor, losses: Tensor) -> Tensor:
        """Min-norm weights (Tensor[K], float32) from the Gram matrix of the raw gradients and the losses."""
        gram = gram.double()
        norms = gram.diagonal().clamp_min(0.0).sqrt()
        scale = gradient_normalizers(norms, losses.double(), self.normalization).clamp_min(1e-20)
        return min_norm_weights(gram / (scale[:, None] * scale[None, :])).float()

    def combine(self, grads: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        weights = self.weights_from_gram(grads @ grads.T, losses)
        return weights @ grads, weights

    def backward(self, task_losses: Mapping[str, Tensor], shared_parameters: Callable[[], Iterable[nn.Parameter]],
                 present: Mapping[str, bool] | None = None,
                 scale: Callable[[Tensor], Tensor] = lambda loss: loss,
                 shared_features: Sequence[Tensor] | None = None,
                 extra: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        active = self.active_tasks(task_losses, present)
        features = [f for f in (shared_features or []) if f.requires_grad]
        if not self.needs_features or not features or len(active) < 2:
            return super().backward(task_losses, shared_parameters, present, scale, shared_features, extra)
        factor = loss_scale_factor(scale, features[0].device)
        # Gradients of each loss with respect to the shared features: backward through the heads only.
        per_task = []
        for task in active:
            grads = torch.autograd.grad(scale(task_losses[task]), features, retain_graph=True, allow_unused=True)
            per_task.append([g if g is not None else torch.zeros_like(f) for g, f in zip(grads, features)])
        gram = torch.stack([torch.stack([sum(torch.vdot(a.reshape(-1).float(), b.reshape(-1).float())
                                             for a, b in zip(gi, gj)) for gj in per_task]) for gi in per_task])
        gram = gram / factor ** 2
        finite = torch.isfinite(gram).all()
        losses = torch.stack([task_losses[t].detach().float() for t in active])
        weights = self.weights_from_gram(gram, losses)
        # The shared trunk receives sum_k a_k dL_k/dZ (still scaled by the AMP factor, as the backward is):
        # hooks replace the features' gradient during one ordinary backward that also trains the heads. A loss
        # of no task (extra) adds its own gradient unweighted: through the features here, directly elsewhere.
        combined = [masked_nan(sum(w * g[level].float() for w, g in zip(weights, per_task)), finite)
                    for level in range(len(features))]
        if extra is not None and extra.requires_grad:
            grads = torch.autograd.grad(scale(extra), features, retain_graph=True, allow_unused=True)
            combined = [c + g.float() if g is not None else c for c, g in zip(combined, grads)]
        combined = [c.to(f.dtype) for c, f in zip(combined, features)]
        handles = [f.register_hook(lambda grad, c=c: c) for f, c in zip(features, combined)]
        total = with_extra(sum(task_losses[t] for t in active) + zero_with_graph(task_losses, active), extra)
        try:
            scale(total).backward()
        finally:
            for handle in handles:
                handle.remove()
        return total.detach(), self.log_weights(active, weights, weights.device)
