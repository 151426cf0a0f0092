"""Random Loss Weighting (Lin, Ye, Xu, Shi, Zhang, "Reasonable Effectiveness of Random Weighting: A Litmus Test
for Multi-Task Learning", TMLR 2022; arXiv 2111.10603, 2021).

Every step draws fresh weights ``lambda = softmax(z)``, ``z ~ N(0, I)``, over the tasks taking part: the
baseline that, in the paper, many elaborate weightings fail to beat. The weights sum to 1, as in the paper.
They are drawn on the losses' device from torch's generator (seeded by the trainer): no host synchronisation.
"""
from __future__ import annotations

from typing import Iterable, Mapping

import torch
from torch import Tensor

from perception.mtl.base import Weighting, zero_with_graph


class RandomLossWeighting(Weighting):
    """Random weights from a softmax of standard normal samples.

    Args:
        tasks: task names.
    """

    def __init__(self, tasks: Iterable[str]) -> None:
        super().__init__(tasks)

    def forward(self, task_losses: Mapping[str, Tensor], present: Mapping[str, bool] | None = None
                ) -> tuple[Tensor, dict[str, Tensor]]:
        active = self.active_tasks(task_losses, present)
        total = zero_with_graph(task_losses, active)
        device = next(iter(task_losses.values())).device if task_losses else None
        logged = {t: torch.zeros((), device=device) for t in self.tasks}
        if active:
            weights = torch.softmax(torch.randn(len(active), device=device), dim=0)
            for w, t in zip(weights, active):
                total = total + w * task_losses[t]
                logged[t] = w
        return total, logged
