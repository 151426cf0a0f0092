"""Fixed loss weights: ``sum_t w_t * L_t`` (equal weighting is every ``w_t = 1``)."""
from __future__ import annotations

from typing import Iterable, Mapping

import torch
from torch import Tensor

from perception.mtl.base import Weighting


class FixedWeighting(Weighting):
    """Constant weights per task.

    Args:
        tasks: task names.
        weights: task -> weight; tasks not listed get 1.
    """

    def __init__(self, tasks: Iterable[str], weights: Mapping[str, float] | None = None) -> None:
        super().__init__(tasks)
        weights = dict(weights or {})
        unknown = set(weights) - set(self.tasks)
        if unknown:
            raise ValueError(f"weighting.weights: unknown task(s) {sorted(unknown)}; the model has {self.tasks}")
        self.register_buffer("weights", torch.tensor([float(weights.get(t, 1.0)) for t in self.tasks]))

    def forward(self, task_losses: Mapping[str, Tensor], present: Mapping[str, bool] | None = None
                ) -> tuple[Tensor, dict[str, Tensor]]:
        # An absent task's loss is exactly 0, so weighting it changes nothing.
        total = sum(self.weights[self.tasks.index(t)] * loss for t, loss in task_losses.items())
        return total, {t: self.weights[i] for i, t in enumerate(self.tasks)}
