"""Per-task gradients of the shared parameters, and one combined gradient written back: the machinery of the
gradient methods (PCGrad, MGDA, CAGrad, Aligned-MTL).

A gradient method needs ``g_k = dL_k/d theta`` for every active task ``k`` and every shared parameter ``theta``,
while the task-specific heads simply get their ordinary gradients. ``K`` backward passes through the shared trunk
are the least that gives ``K`` separate gradients, and this is what is spent: ``K - 1`` ``autograd.grad`` calls on
the shared parameters only, then one ordinary ``backward`` of ``sum_k L_k`` that fills the heads' gradients and
leaves ``sum_k g_k`` in the shared parameters, from which the last task's gradient is the difference. A loss of no
task (``extra``, the soft-sharing penalty) takes one more ``autograd.grad`` when it reaches the shared parameters:
its gradient is kept apart from the tasks' and added once to the combined direction, unweighted.

Mixed precision: the losses are multiplied by the AMP scale ``s`` before every backward (as ``GradScaler.scale``
does), so the raw gradients are ``s * g_k``. They are divided by ``s`` before a method looks at them, and the
combined gradient is multiplied by ``s`` again when written into ``.grad``, so that the trainer's
``scaler.unscale_`` / ``scaler.step`` work as with a plain ``backward``. When any per-task gradient is inf/NaN
(an fp16 overflow) the written gradient is NaN, so that the scaler skips the step and lowers its scale.

Distributed training: these methods set ``manual_grad_sync``; the trainer runs forward/backward under
``no_sync()`` and averages every gradient once afterwards. Each rank therefore combines its own per-task
gradients (the usual per-rank approximation) and gradients cross the network once per step, not once per task.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from perception.mtl.base import Weighting, with_extra, zero_with_graph


def loss_scale_factor(scale: Callable[[Tensor], Tensor], device: torch.device) -> Tensor:
    """The factor ``scale`` multiplies losses by, as a 0-d float32 tensor on ``device`` (read without a sync)."""
    return scale(torch.ones((), device=device, dtype=torch.float32)).detach().float()


def flatten_grads(grads: Sequence[Tensor | None], params: Sequence[Tensor]) -> Tensor:
    """One float32 vector of ``grads`` (``None``, an unused parameter, counts as zeros). Shape: [sum of numels]."""
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).float()
                      for g, p in zip(grads, params)])


def masked_nan(x: Tensor, finite: Tensor) -> Tensor:
    """``x`` where ``finite`` (a 0-d bool) holds, all NaN otherwise: makes an AMP scaler skip the step."""
    return x.masked_fill(~finite, float("nan"))


@dataclass
class SharedGradients:
    """Per-task gradients of the shared parameters after :func:`backward_with_task_gradients`.

    Attributes:
        grads (Tensor[K, P]): unscaled float32 gradient of each active task's loss, flattened.
        finite (Tensor[]): bool, whether every entry of ``grads`` (and ``extra``) is finite.
        factor (Tensor[]): the AMP scale the losses were multiplied by.
        params: the shared parameters, in the order of the flattening.
        previous: their ``.grad`` before the call (gradient accumulation across micro-batches keeps it).
        extra (Tensor[P] | None): unscaled float32 gradient of the loss of no task, if one was given.
    """

    grads: Tensor
    finite: Tensor
    factor: Tensor
    params: list[nn.Parameter]
    previous: list[Tensor | None]
    extra: Tensor | None = None

    def write(self, direction: Tensor) -> None:
        """Set every shared parameter's ``.grad`` to its previous value plus ``direction`` (Tensor[P], unscaled)
        plus the extra term's gradient, scaled back by the AMP factor; all NaN when a gradient was not finite."""
        if self.extra is not None:
            direction = direction + self.extra
        direction = masked_nan(direction, self.finite) * self.factor
        for p, prev, chunk in zip(self.params, self.previous, direction.split([p.numel() for p in self.params])):
            chunk = chunk.view_as(p).to(p.dtype)
            p.grad = chunk if prev is None else prev + chunk


def backward_with_task_gradients(task_losses: Mapping[str, Tensor], active: Sequence[str],
                                 params: Sequence[nn.Parameter], scale: Callable[[Tensor], Tensor],
                                 extra: Tensor | None = None) -> tuple[Tensor, SharedGradients]:
    """Backpropagate ``sum_k L_k (+ extra)`` into everything but ``params`` and return the per-task gradients of
    ``params`` (and the extra term's, apart).

    The heads (every parameter not in ``params``) end with their ordinary gradients, the extra term's included;
    ``params`` end with their ``.grad`` as before the call, ready for :meth:`SharedGradients.write`.

    Args:
        task_losses: task -> scalar loss (inactive tasks are kept in the graph with zero gradient).
        active: the tasks to differentiate separately (at least one).
        params: the shared parameters.
        scale: the AMP loss scaler's ``scale`` (identity without AMP).
        extra: a scalar loss of no task, or None.

    Returns:
        the plain sum of the active losses and ``extra`` (detached), and the gradients.
    """
    device = task_losses[active[0]].device
    factor = loss_scale_factor(scale, device)
    grads = []
    for task in active[:-1]:
        per_param = torch.autograd.grad(scale(task_losses[task]), params, retain_graph=True, allow_unused=True)
        grads.append(flatten_grads(per_param, params))
    extra_grad = None
    if extra is not None and extra.requires_grad:
        per_param = torch.autograd.grad(scale(extra), params, retain_graph=True, allow_unused=True)
        extra_grad = flatten_grads(per_param, params)
    previous = [p.grad for p in params]
    for p in params:
        p.grad = None
    total = with_extra(sum(task_losses[t] for t in active) + zero_with_graph(task_losses, active), extra)
    scale(total).backward()
    summed = flatten_grads([p.grad for p in params], params)
    if extra_grad is not None:
        summed = summed - extra_grad
    # The last task's gradient is what the others leave of the sum: K backward passes in all, not K + 1.
    grads.append(summed - sum(grads) if grads else summed)
    for p, prev in zip(params, previous):
        p.grad = prev
    stacked = torch.stack(grads) / factor
    finite = torch.isfinite(stacked).all()
    if extra_grad is not None:
        extra_grad = extra_grad / factor
        finite = finite & torch.isfinite(extra_grad).all()
    return total.detach(), SharedGradients(stacked, finite, factor, list(params), previous, extra_grad)


class GradientWeighting(Weighting):
    """Base of the methods that combine per-task gradients of the shared parameters into one direction.

    Subclasses implement :meth:`combine`. Heads get the ordinary gradient of their own loss (weight 1, as in the
    papers); the shared parameters get the combined direction.

    Args:
        tasks: task names.
    """

    manual_grad_sync = True

    def forward(self, task_losses: Mapping[str, Tensor], present: Mapping[str, bool] | None = None
                ) -> tuple[Tensor, dict[str, Tensor]]:
        """The plain sum of the present tasks' losses (what the heads are trained on), e.g. for logging."""
        active = self.active_tasks(task_losses, present)
        total = sum((task_losses[t] for t in active), zero_with_graph(task_losses, active))
        return total, self.log_weights(active, None, _device(task_losses))

    def combine(self, grads: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        """The shared update direction from the per-task gradients.

        Args:
            grads (Tensor[K, P]): per-task gradients (unscaled, float32).
            losses (Tensor[K]): the tasks' losses (detached).

        Returns:
            the direction (Tensor[P]) and the coefficient of each task's gradient in it (Tensor[K]), for logging.
        """
        raise NotImplementedError

    def backward(self, task_losses: Mapping[str, Tensor], shared_parameters: Callable[[], Iterable[nn.Parameter]],
                 present: Mapping[str, bool] | None = None,
                 scale: Callable[[Tensor], Tensor] = lambda loss: loss,
                 shared_features: Sequence[Tensor] | None = None,
                 extra: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        active = self.active_tasks(task_losses, present)
        params = [p for p in shared_parameters() if p.requires_grad]
        if len(active) < 2 or not params:  # nothing to combine: an ordinary backward
            return super().backward(task_losses, shared_parameters, present, scale, shared_features, extra)
        total, shared = backward_with_task_gradients(task_losses, active, params, scale, extra)
        losses = torch.stack([task_losses[t].detach().float() for t in active])
        direction, coefficients = self.combine(shared.grads, losses)
        shared.write(direction)
        return total, self.log_weights(active, coefficients, losses.device)

    def log_weights(self, active: Sequence[str], coefficients: Tensor | None, device: torch.device | None = None
                    ) -> dict[str, Tensor]:
        """Task -> coefficient of its gradient in the shared update (1 when not combined, 0 when inactive)."""
        out = {}
        for t in self.tasks:
            if t not in active:
                out[t] = torch.zeros((), device=device)
            elif coefficients is None:
                out[t] = torch.ones((), device=device)
            else:
                out[t] = coefficients[list(active).index(t)].detach()
        return out


def _device(task_losses: Mapping[str, Tensor]) -> torch.device | None:
    return next(iter(task_losses.values())).device if task_losses else None
