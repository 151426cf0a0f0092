"""Nash-MTL (Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik, Fetaya, "Multi-Task Learning as a Bargaining
Game", ICML 2022, arXiv 2202.01017).

The update ``d = sum_k alpha_k g_k`` is the Nash bargaining solution of the tasks: ``alpha > 0`` solves
``G G^T alpha = 1 / alpha`` (element-wise), i.e. every task's directional derivative ``<g_k, d>`` equals
``1 / alpha_k``. With orthogonal gradients ``alpha_k = 1 / |g_k|``: each task gets a step of equal length.

The system is the stationarity condition of the strictly convex ``f(alpha) = alpha^T M alpha / 2 - sum_k log
alpha_k`` (``M = G G^T``), which is self-concordant. It is minimised here by damped Newton steps
``alpha <- alpha - dx / (1 + lambda)`` (``lambda`` the Newton decrement; full steps once ``lambda < 1/4``): that
step provably stays inside the positive orthant and converges, so a fixed number of iterations runs on the device
with no line search and no host synchronisation (the paper's code calls cvxpy on the host every few steps). The
problem is solved on the gradients' correlation matrix (see :func:`nash_weights`), the same for every scale of
every task's gradient; a ridge of 1e-12 on it keeps the problem bounded when the gradients are linearly dependent.

Scale: as in the paper's released code the system is solved for ``M / |M|_F``, so that the update's length
follows the gradients' (the bare solution always has ``|d| = sqrt(K)``). ``nash_update_every = n`` reuses the
weights of the last solve for ``n - 1`` steps (the paper's speed-up); here that saves only the small solve, since
the per-task gradients are still needed to combine.
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from perception.mtl.gradients import GradientWeighting


def nash_weights(gram: Tensor, iterations: int = 40, ridge: float = 1e-12) -> Tensor:
    """The positive solution of ``gram @ alpha = 1 / alpha``.

    Args:
        gram (Tensor[K, K]): ``G G^T`` of the task gradients.
        iterations: damped Newton iterations (the count is fixed: no host-side convergence test).
        ridge: added to the diagonal of the correlation matrix (relative to each task's squared norm).

    Returns:
        Tensor[K], float64; NaN where ``gram`` was not finite.
    """
    gram = gram.double()
    k = gram.shape[0]
    # alpha = D beta with D = diag(M)^-1/2 turns the system into C beta = 1 / beta for the correlation matrix
    # C = D M D (unit diagonal): the same problem for every scale of every task's gradient.
    inv_norm = gram.diagonal().clamp_min(1e-300).rsqrt()
    corr = gram * inv_norm[:, None] * inv_norm[None, :] + ridge * torch.eye(k, dtype=gram.dtype, device=gram.device)
    beta = torch.ones(k, dtype=gram.dtype, device=gram.device)          # exact for orthogonal gradients
    for _ in range(iterations):
        grad = corr @ beta - 1.0 / beta
        hessian = corr + torch.diag(1.0 / (beta * beta))
        step = torch.linalg.solve_ex(hessian, grad)[0]
        decrement = (grad * step).sum().clamp_min(0.0).sqrt()
        # Self-concordant damping: the step stays in the Dikin ellipsoid, hence beta > 0.
        beta = beta - step * torch.where(decrement < 0.25, 1.0, 1.0 / (1.0 + decrement))
    return beta * inv_norm


class NashMTL(GradientWeighting):
    """Nash bargaining over the task gradients of the shared parameters.

    Args:
        tasks: task names.
        update_every: solve for the weights every this many steps and reuse them in between (paper: 1 or 25).
        iterations: damped Newton iterations per solve.

    Buffers (saved in checkpoints, restored by a skipped step): ``alpha`` of the last solve per task; the step
    counter of ``update_every`` is extra state of the module (also in checkpoints).
    """

    def __init__(self, tasks: Iterable[str], update_every: int = 1, iterations: int = 40) -> None:
        super().__init__(tasks)
        if update_every < 1:
            raise ValueError(f"weighting.nash_update_every: got {update_every}, expected an integer >= 1")
        self.update_every = int(update_every)
        self.iterations = int(iterations)
        self.register_buffer("alpha", torch.zeros(len(self.tasks)))
        self.calls = 0
        self._active: tuple[int, ...] | None = None   # the task subset the stored alpha was solved for
        self._indices: dict[tuple[int, ...], Tensor] = {}

    def get_extra_state(self) -> dict:
        return {"calls": self.calls}

    def set_extra_state(self, state: dict) -> None:
        self.calls = int(state.get("calls", 0))
        self._active = None  # after a resume the next step solves again

    def backward(self, task_losses: Mapping[str, Tensor], shared_parameters: Callable[[], Iterable[nn.Parameter]],
                 present: Mapping[str, bool] | None = None,
                 scale: Callable[[Tensor], Tensor] = lambda loss: loss,
                 shared_features: Sequence[Tensor] | None = None,
                 extra: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        # combine() sees only the active tasks' gradients: remember which tasks they are.
        self._current = tuple(self.tasks.index(t) for t in self.active_tasks(task_losses, present))
        return super().backward(task_losses, shared_parameters, present, scale, shared_features, extra)

    def _index(self, index: tuple[int, ...]) -> Tensor:
        # Cached per task subset: a host list copied to the device every step would block on CUDA.
        cached = self._indices.get(index)
        if cached is None or cached.device != self.alpha.device:
            cached = self._indices[index] = torch.tensor(index, device=self.alpha.device)
        return cached

    def combine(self, grads: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        index = getattr(self, "_current", None) or tuple(range(grads.shape[0]))
        positions = self._index(index)
        reuse = self.update_every > 1 and self.calls % self.update_every != 0 and self._active == index
        self.calls += 1
        if reuse:
            alpha = self.alpha.index_select(0, positions).to(grads.dtype)
        else:
            gram = (grads @ grads.T).double()
            # The paper's scale: the solution for M / |M|_F (see the module docstring).
            alpha = nash_weights(gram / torch.linalg.matrix_norm(gram).clamp_min(1e-300), self.iterations).float()
            # A non-finite solve (an fp16 overflow: the step is skipped) leaves the stored weights as they were.
            stored = self.alpha.index_select(0, positions)
            fresh = alpha.to(self.alpha.device)
            self.alpha.index_copy_(0, positions, torch.where(torch.isfinite(fresh), fresh, stored))
            self._active = index
        return alpha @ grads, alpha
