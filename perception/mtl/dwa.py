"""Dynamic Weight Average (Liu, Johns, Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019).

``lambda_k(t) = K exp(w_k(t-1) / T) / sum_i exp(w_i(t-1) / T)`` with ``w_k(t-1) = L_k(t-1) / L_k(t-2)``, the ratio
of a task's average loss over the last two windows (epochs in the paper), ``T = 2``; ``w = 1`` (so
``lambda = 1``) for the first two windows. A task whose loss falls more slowly gets more weight.

Windows: the module sums each task's loss on the device during the training steps (no host synchronisation) and
closes a window in :meth:`on_window_end`, which the trainer calls at every log interval. Under distributed
training the sums are averaged over the ranks there, so that every rank uses the same weights.
"""
from __future__ import annotations

from typing import Iterable, Mapping

import torch
import torch.distributed as dist
from torch import Tensor

from perception.mtl.base import Weighting, zero_with_graph


def dwa_weights(last: Tensor, before_last: Tensor, temperature: float = 2.0) -> Tensor:
    """DWA's weights from two windows' average losses (Tensor[K] each; NaN where a window is missing).

    Returns:
        Tensor[K] summing to K.
    """
    ratio = last / before_last
    ratio = torch.where(torch.isfinite(ratio), ratio, torch.ones_like(ratio))
    return last.shape[0] * torch.softmax(ratio / temperature, dim=0)


class DynamicWeightAverage(Weighting):
    """Weights from the rate at which each task's loss falls.

    Args:
        tasks: task names.
        temperature: softness ``T`` of the softmax (paper: 2).

    Buffers (saved in checkpoints): ``weights`` in use, ``history`` (last two window averages, NaN until known),
    ``loss_sum``/``loss_count`` of the open window.
    """

    def __init__(self, tasks: Iterable[str], temperature: float = 2.0) -> None:
        super().__init__(tasks)
        if temperature <= 0:
            raise ValueError(f"weighting.dwa_temperature: got {temperature}, expected a value > 0")
        self.temperature = float(temperature)
        num_tasks = len(self.tasks)
        self.register_buffer("weights", torch.ones(num_tasks))
        self.register_buffer("history", torch.full((2, num_tasks), float("nan")))
        self.register_buffer("loss_sum", torch.zeros(num_tasks))
        self.register_buffer("loss_count", torch.zeros(num_tasks))

    def forward(self, task_losses: Mapping[str, Tensor], present: Mapping[str, bool] | None = None
                ) -> tuple[Tensor, dict[str, Tensor]]:
        active = self.active_tasks(task_losses, present)
        if active and self.training and torch.is_grad_enabled():  # training steps feed the window, evaluation not
            index = torch.tensor([self.tasks.index(t) for t in active], device=self.loss_sum.device)
            losses = torch.stack([task_losses[t].detach().float() for t in active]).to(self.loss_sum.device)
            self.loss_sum.index_add_(0, index, losses)
            self.loss_count.index_add_(0, index, torch.ones_like(losses))
        total = zero_with_graph(task_losses, active)
        for t in active:
            total = total + self.weights[self.tasks.index(t)] * task_losses[t]
        return total, {t: self.weights[i].detach() for i, t in enumerate(self.tasks)}

    @torch.no_grad()
    def on_window_end(self) -> None:
        """Close the window: its average losses enter the history and set the weights of the next window."""
        sums = torch.stack([self.loss_sum, self.loss_count])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)
        total, count = sums
        # A task without a step in this window keeps its last average (ratio 1 next time).
        average = torch.where(count > 0, total / count.clamp_min(1.0), self.history[0])
        self.history.copy_(torch.stack([average, self.history[0]]))
        self.weights.copy_(dwa_weights(self.history[0], self.history[1], self.temperature))
        self.loss_sum.zero_()
        self.loss_count.zero_()
