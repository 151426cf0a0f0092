"""DB-MTL (Lin, Ye, Xu, Zhang, Kwok, "Dual-Balancing Multi-Task Learning", arXiv 2308.12029, 2023).

Two balancings. Loss scale: every task is trained on ``log(L_k + eps)``, whose gradient ``grad L_k / (L_k + eps)``
no longer depends on the scale of the loss (heads included). Gradient magnitude: on the shared parameters each
task's gradient of its log loss is smoothed by an exponential moving average, ``g~_k <- beta g~_k + (1 - beta)
g_k``, and the update is ``d = sum_k (max_j |g~_j| / |g~_k|) g~_k``: every task's smoothed gradient scaled up to
the largest norm, so that no task's gradient is drowned by another's.

The moving averages are a buffer ``grad_ema`` of shape ``[K, P]`` (``P``: the number of shared parameters), as in
LibMTL's implementation, whose default ``beta = 0.9`` is taken here; with the 1 - beta weight on the first
gradient of a zero-initialised average, the first steps are smaller (a built-in warm-up). The buffer is allocated
once, in :meth:`DBMTL.shared_parameters_fn` (before the training step's first snapshot), saved in checkpoints and
restored by a skipped step; a task absent from a step keeps its row. It costs ``4 K P`` bytes of memory (62 MB for
three tasks on the demo model's 5.2 M shared parameters). Under distributed training each rank averages its own gradients
(the per-rank approximation of every gradient method here) and the combined gradient is then averaged.
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from perception.mtl.base import Weighting, with_extra
from perception.mtl.gradients import GradientWeighting, backward_with_task_gradients


def db_mtl_combine(ema: Tensor, eps: float = 1e-8) -> tuple[Tensor, Tensor]:
    """``sum_k (max_j |g~_j| / |g~_k|) g~_k`` and the coefficients ``max_j |g~_j| / (|g~_k| + eps)``.

    Args:
        ema (Tensor[K, P]): the smoothed gradients.
        eps: keeps a zero gradient's coefficient finite.
    """
    norms = torch.linalg.vector_norm(ema, dim=1)
    coefficients = norms.max() / (norms + eps)
    return coefficients @ ema, coefficients


class DBMTL(GradientWeighting):
    """Log-transformed losses and gradients balanced to the largest (smoothed) norm.

    Args:
        tasks: task names.
        beta: the moving average's decay (LibMTL: 0.9; 0 uses the current gradients only).
        eps: added to each loss before the logarithm.
    """

    def __init__(self, tasks: Iterable[str], beta: float = 0.9, eps: float = 1e-8) -> None:
        super().__init__(tasks)
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"weighting.db_mtl_beta: got {beta}, expected a value in [0, 1)")
        self.beta, self.eps = float(beta), float(eps)
        self.register_buffer("grad_ema", torch.zeros(len(self.tasks), 0))
        self._indices: dict[tuple[int, ...], Tensor] = {}

    def _allocate(self, params: Sequence[nn.Parameter]) -> None:
        size = sum(p.numel() for p in params if p.requires_grad)
        if self.grad_ema.shape[1] != size:
            device = params[0].device if params else self.grad_ema.device
            self.grad_ema = torch.zeros(len(self.tasks), size, device=device)

    def shared_parameters_fn(self, model: nn.Module) -> Callable[[], Iterable[nn.Parameter]]:
        """The model's shared parameters; allocates the moving averages for them (once, at set-up)."""
        self._allocate(list(model.shared_parameters()))
        return model.shared_parameters

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # The buffer's size is the model's: take it from the checkpoint rather than fail on a shape mismatch.
        saved = state_dict.get(prefix + "grad_ema")
        if saved is not None and saved.shape != self.grad_ema.shape:
            self.grad_ema = torch.zeros(saved.shape, device=self.grad_ema.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _index(self, index: tuple[int, ...], device: torch.device) -> Tensor:
        # Cached per task subset: a host list copied to the device every step would block on CUDA.
        cached = self._indices.get(index)
        if cached is None or cached.device != device:
            cached = self._indices[index] = torch.tensor(index, device=device)
        return cached

    def backward(self, task_losses: Mapping[str, Tensor], shared_parameters: Callable[[], Iterable[nn.Parameter]],
                 present: Mapping[str, bool] | None = None,
                 scale: Callable[[Tensor], Tensor] = lambda loss: loss,
                 shared_features: Sequence[Tensor] | None = None,
                 extra: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        active = self.active_tasks(task_losses, present)
        params = [p for p in shared_parameters() if p.requires_grad]
        # Every parameter (heads too) is trained on the log losses; inactive tasks stay in the graph at weight 0.
        logs = {t: torch.log(loss.float() + self.eps) if t in active else loss for t, loss in task_losses.items()}
        device = next(iter(task_losses.values())).device
        # What is logged as the total: the plain losses (comparable with the other methods), not their logarithms.
        raw = sum((task_losses[t].detach().float() for t in active), torch.zeros((), device=device))
        raw = with_extra(raw, None if extra is None else extra.detach())
        if len(active) < 2 or not params:      # nothing to balance: an ordinary backward of the log losses
            _, weights = Weighting.backward(self, logs, shared_parameters, present, scale, shared_features, extra)
            return raw, weights
        self._allocate(params)
        _, shared = backward_with_task_gradients(logs, active, params, scale, extra)
        positions = self._index(tuple(self.tasks.index(t) for t in active), shared.grads.device)
        previous = self.grad_ema.index_select(0, positions)
        ema = shared.grads + self.beta * (previous - shared.grads)
        # A non-finite step is skipped: the averages keep their old values (the written gradient is NaN anyway).
        ema = torch.where(shared.finite, ema, previous)
        self.grad_ema.index_copy_(0, positions, ema)
        direction, coefficients = db_mtl_combine(ema)
        shared.write(direction)
        return raw, self.log_weights(active, coefficients, shared.grads.device)
