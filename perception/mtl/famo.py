"""Fast Adaptive Multitask Optimization (Liu, Liu, Jin, Stone, Liu, "FAMO: Fast Adaptive Multitask Optimization",
NeurIPS 2023, arXiv 2306.03792).

Task logits ``xi`` give the weights ``z = softmax(xi)``. The model minimises ``sum_i z_i log(L_i + eps)`` scaled
by ``1 / c`` with ``c = sum_i z_i / (L_i + eps)`` (detached), so each loss gets the gradient weight
``z_i / ((L_i + eps) c)`` and those weights sum to 1: one backward, O(1) in the number of tasks. After the
optimizer step, the losses of the same batch give ``d_i = log(L_i^before + eps) - log(L_i^after + eps)`` (how much
each task improved) and ``xi`` takes one step of its own Adam (lr 0.025, L2 weight decay 0.01 as in the paper)
along ``(dz/dxi)^T d = z * (d - z.d)``: a task that improved less than the others gains weight.

The logits and their Adam moments are buffers, not parameters: the network's optimizer never sees them, the
training step's snapshot (:class:`perception.engine.step.StateSnapshot`) saves and restores them with a skipped
step, and checkpoints carry them in the weighting's ``state_dict``. The update runs on the device (no host
synchronisation); under distributed training ``d`` is averaged over the ranks so that every rank keeps the same
logits. Losses must be non-negative (the lower bound ``m_i`` of the paper is 0).
"""
from __future__ import annotations

from typing import Iterable, Mapping

import torch
import torch.distributed as dist
from torch import Tensor

from perception.mtl.base import Weighting, zero_with_graph


def famo_logit_gradient(z: Tensor, improvement: Tensor) -> Tensor:
    """``(dz/dxi)^T d`` for ``z = softmax(xi)``: ``z * (d - z.d)`` (the Jacobian ``diag(z) - z z^T`` is symmetric)."""
    return z * (improvement - (z * improvement).sum())


class FAMO(Weighting):
    """FAMO's loss weighting; the training step calls :meth:`post_step` after each optimizer step.

    Args:
        tasks: task names.
        lr: learning rate of the logits' Adam (paper: 0.025).
        weight_decay: L2 weight decay ``gamma`` of the logits (paper: 0.01).
        eps: added to every loss before the logarithm (paper: 1e-8).
        betas: Adam's moment decays.
        adam_eps: Adam's denominator epsilon.

    Buffers (saved in checkpoints, restored by a skipped step): ``logits``, ``exp_avg``, ``exp_avg_sq`` and
    ``adam_steps`` (per task: a task absent from a step keeps its logit and moments as they were).
    """

    needs_post_step: bool = True  # the training step recomputes the losses after the optimizer step

    def __init__(self, tasks: Iterable[str], lr: float = 0.025, weight_decay: float = 0.01, eps: float = 1e-8,
                 betas: tuple[float, float] = (0.9, 0.999), adam_eps: float = 1e-8) -> None:
        super().__init__(tasks)
        if lr <= 0:
            raise ValueError(f"weighting.famo_lr: got {lr}, expected a value > 0")
        if weight_decay < 0:
            raise ValueError(f"weighting.famo_weight_decay: got {weight_decay}, expected a value >= 0")
        self.lr, self.weight_decay, self.eps = float(lr), float(weight_decay), float(eps)
        self.betas, self.adam_eps = (float(betas[0]), float(betas[1])), float(adam_eps)
        k = len(self.tasks)
        for name in ("logits", "exp_avg", "exp_avg_sq", "adam_steps"):
            self.register_buffer(name, torch.zeros(k))
        self._masks: dict[tuple[bool, ...], Tensor] = {}
        self._active: list[str] = []

    def _mask(self, active: list[str]) -> Tensor:
        # Cached per task subset: a host list copied to the device every step would block on CUDA.
        key = tuple(t in active for t in self.tasks)
        mask = self._masks.get(key)
        if mask is None or mask.device != self.logits.device:
            mask = self._masks[key] = torch.tensor(key, device=self.logits.device)
        return mask

    def weights(self, active: list[str] | None = None) -> Tensor:
        """``z``: the softmax of the active tasks' logits (0 for the others), Tensor[K]."""
        mask = self._mask(self.tasks if active is None else active)
        return torch.softmax(self.logits.masked_fill(~mask, -torch.inf), dim=0)

    def forward(self, task_losses: Mapping[str, Tensor], present: Mapping[str, bool] | None = None
                ) -> tuple[Tensor, dict[str, Tensor]]:
        active = self.active_tasks(task_losses, present)
        self._active = active
        total = zero_with_graph(task_losses, active)
        if not active:
            return total, {t: torch.zeros_like(self.logits[0]) for t in self.tasks}
        z = self.weights(active)
        index = [self.tasks.index(t) for t in active]
        losses = torch.stack([task_losses[t].float() for t in active]) + self.eps
        zs = z[index]
        c = (zs / losses.detach()).sum()
        total = total + (zs * torch.log(losses)).sum() / c
        return total, {t: z[i].detach() for i, t in enumerate(self.tasks)}

    @torch.no_grad()
    def post_step(self, losses_before: Mapping[str, Tensor], losses_after: Mapping[str, Tensor]) -> None:
        """One Adam step of the logits from the losses of one batch before and after the optimizer step.

        Only the tasks of the last :meth:`forward` whose improvement is finite move; the others keep their logit
        and moments bit for bit.

        Args:
            losses_before: task -> the loss the step was taken on.
            losses_after: task -> the loss of the same batch after the optimizer step.
        """
        active = [t for t in self._active if t in losses_before and t in losses_after]
        if not active:
            return
        zero = torch.zeros((), device=self.logits.device)
        before = torch.stack([losses_before[t].float().to(zero.device) if t in active else zero
                              for t in self.tasks])
        after = torch.stack([losses_after[t].float().to(zero.device) if t in active else zero for t in self.tasks])
        improvement = torch.log(before + self.eps) - torch.log(after + self.eps)
        mask = self._mask(active)
        ok = mask & torch.isfinite(improvement)
        improvement = torch.where(ok, improvement, 0.0)
        if dist.is_available() and dist.is_initialized():
            # Every rank must keep the same logits: average the improvements and the mask of who may move.
            packed = torch.stack([improvement, ok.float()])
            dist.all_reduce(packed)
            world = dist.get_world_size()
            ok = packed[1] == world
            improvement = torch.where(ok, packed[0] / world, 0.0)
        # Under-the-mask softmax: inactive tasks have z = 0 and gradient 0.
        z = self.weights(active)
        grad = famo_logit_gradient(z, improvement) + self.weight_decay * self.logits
        beta1, beta2 = self.betas
        steps = self.adam_steps + 1
        exp_avg = beta1 * self.exp_avg + (1 - beta1) * grad
        exp_avg_sq = beta2 * self.exp_avg_sq + (1 - beta2) * grad * grad
        denom = (exp_avg_sq / (1 - beta2 ** steps)).sqrt() + self.adam_eps
        logits = self.logits - self.lr * (exp_avg / (1 - beta1 ** steps)) / denom
        for buffer, new in ((self.logits, logits), (self.exp_avg, exp_avg), (self.exp_avg_sq, exp_avg_sq),
                            (self.adam_steps, steps)):
            buffer.copy_(torch.where(ok, new, buffer))
