"""GradNorm (Chen, Badrinarayanan, Lee, Rabinovich, "GradNorm: Gradient Normalization for Adaptive Loss Balancing
in Deep Multitask Networks", ICML 2018).

The loss is ``sum_k w_k L_k`` with learned weights ``w_k``. With ``G_k = |grad_W w_k L_k|`` the gradient norm of a
task on the last shared layer ``W``, ``L~_k = L_k(t) / L_k(0)`` its loss ratio and ``r_k = L~_k / mean(L~)`` its
relative inverse training rate, the weights minimise ``sum_k |G_k - mean(G) r_k^alpha|`` (the target treated as
a constant), so that tasks which train slowly get larger gradients. After every update the weights are
renormalised to sum to the number of tasks; here that happens at the start of the next step, just before use.

Mixed precision: the per-task gradients are unscaled before their norms are taken, and the weights' gradient is
written scaled by the AMP factor, like every other gradient. Distributed training: the network's gradient is an
ordinary one, but the weights' gradient is per rank, so the method sets ``manual_grad_sync`` and the trainer
averages all gradients, the weights' included, once per step.
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from perception.mtl.base import Weighting, with_extra, zero_with_graph
from perception.mtl.gradients import loss_scale_factor

_MIN_WEIGHT = 1e-3  # keeps a weight that overshoots below zero usable


def gradnorm_targets(norms: Tensor, losses: Tensor, initial_losses: Tensor, alpha: float) -> Tensor:
    """The target gradient norms ``mean(G) * r^alpha`` (Tensor[K]) from G (Tensor[K]) and the loss ratios."""
    ratios = losses / initial_losses
    relative = ratios / ratios.mean()
    return norms.mean() * relative ** alpha


class GradNorm(Weighting):
    """Loss weights learned so that the tasks' gradient norms train at balanced rates.

    Args:
        tasks: task names.
        alpha: strength of the restoring force towards balanced training rates (paper: 1.5 on NYUv2,
            0.12 on its synthetic tasks).

    Parameters: ``task_weights`` (one scalar per task, so a task that sits a step out gets no gradient).
    Buffers: ``initial_losses`` (``L_k(0)``, the first loss seen for each task; NaN until then).
    """

    manual_grad_sync = True

    def __init__(self, tasks: Iterable[str], alpha: float = 1.5) -> None:
        super().__init__(tasks)
        self.alpha = float(alpha)
        self.task_weights = nn.ParameterDict({t: nn.Parameter(torch.tensor(1.0)) for t in self.tasks})
        self.register_buffer("initial_losses", torch.full((len(self.tasks),), float("nan")))

    def shared_parameters_fn(self, model: nn.Module) -> Callable[[], Iterable[nn.Parameter]]:
        """The last shared layer, as in the paper (``model.last_shared_parameters``), when the model has one."""
        return getattr(model, "last_shared_parameters", model.shared_parameters)

    def forward(self, task_losses: Mapping[str, Tensor], present: Mapping[str, bool] | None = None
                ) -> tuple[Tensor, dict[str, Tensor]]:
        """``sum_k w_k L_k`` with the weights as constants (they learn only from the GradNorm loss)."""
        active = self.active_tasks(task_losses, present)
        total = zero_with_graph(task_losses, active)
        for t in active:
            total = total + self.task_weights[t].detach() * task_losses[t]
        return total, {t: self.task_weights[t].detach() for t in self.tasks}

    @torch.no_grad()
    def renormalize(self, active: Sequence[str]) -> None:
        """Make the active tasks' weights positive and sum to their number (the others stay untouched)."""
        if not active:
            return
        weights = torch.stack([self.task_weights[t] for t in active]).clamp_min(_MIN_WEIGHT)
        weights = weights * (len(active) / weights.sum())
        for t, w in zip(active, weights):
            self.task_weights[t].copy_(w)

    def backward(self, task_losses: Mapping[str, Tensor], shared_parameters: Callable[[], Iterable[nn.Parameter]],
                 present: Mapping[str, bool] | None = None,
                 scale: Callable[[Tensor], Tensor] = lambda loss: loss,
                 shared_features: Sequence[Tensor] | None = None,
                 extra: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        active = self.active_tasks(task_losses, present)
        self.renormalize(active)
        params = [p for p in shared_parameters() if p.requires_grad]
        if not active:
            return super().backward(task_losses, shared_parameters, present, scale, shared_features, extra)
        device = task_losses[active[0]].device
        factor = loss_scale_factor(scale, device)
        losses = torch.stack([task_losses[t] for t in active]).detach().float()
        index = torch.tensor([self.tasks.index(t) for t in active], device=self.initial_losses.device)
        initial = self.initial_losses.index_select(0, index)
        initial = torch.where(torch.isnan(initial), losses.to(initial.device), initial)
        self.initial_losses.index_copy_(0, index, initial)

        # |grad_W L_k| of the unweighted losses, unscaled: backward through the heads and W only.
        norms = []
        for t in active:
            grads = torch.autograd.grad(scale(task_losses[t]), params, retain_graph=True, allow_unused=True)
            squares = [g.float().pow(2).sum() for g in grads if g is not None]
            norms.append(torch.stack(squares).sum().sqrt() if squares else torch.zeros((), device=device))
        norms = torch.stack(norms) / factor

        # The network: an ordinary backward of the weighted sum (+ the unweighted extra term), the weights held
        # constant. The extra term takes no part in the balancing: it belongs to no task.
        total, logged = self(task_losses, present)
        total = with_extra(total, extra)
        scale(total).backward()

        # The weights: gradient of sum_k |w_k |g_k| - target_k|, written scaled like every other gradient.
        weights = [self.task_weights[t] for t in active]
        with torch.enable_grad():
            grad_norms = torch.stack(weights) * norms                     # G_k = |grad_W w_k L_k|
            targets = gradnorm_targets(grad_norms.detach(), losses, initial.to(losses.device), self.alpha)
            gradnorm_loss = (grad_norms - targets).abs().sum()
            weight_grads = torch.autograd.grad(gradnorm_loss, weights)
        for w, g in zip(weights, weight_grads):
            g = g * factor
            w.grad = g if w.grad is None else w.grad + g
        return total.detach(), logged
