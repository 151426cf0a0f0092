"""Uncertainty weighting (Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses for
Scene Geometry and Semantics", CVPR 2018).

Each task has a learnable ``s_t = log sigma_t^2``; the total is ``sum_t c_t * exp(-s_t) * L_t + s_t / 2`` with
``c_t = 1/2`` for regression-like losses (Gaussian likelihood) and ``1`` for classification-like ones (tempered
softmax). For a fixed loss the optimum is ``exp(s_t) = 2 c_t L_t``; for a squared error that is the noise variance.
"""
from __future__ import annotations

from typing import Iterable, Mapping

import torch
from torch import Tensor, nn

from perception.mtl.base import Weighting, zero_with_graph

# Whether each task's loss behaves like a regression (c = 1/2) or a classification (c = 1) likelihood.


class UncertaintyWeighting(Weighting):
    """Learned homoscedastic-uncertainty weights.

    One scalar parameter per task, so that a task absent from a step gets no gradient at all and the optimizer
    leaves its ``s_t`` exactly where it was (no drift towards small variances from the ``s_t / 2`` term).

    Args:
        tasks: task names.
        task_types: task -> ``regression`` or ``classification`` (a task not named is a regression); the
            trainer passes each task type's own kind (:attr:`perception.tasks.Task.LOSS_KIND`), which
            ``weighting.task_types`` overrides.
        init_log_var: initial ``s_t``, one float for all tasks or a task -> float mapping.
    """

    def __init__(self, tasks: Iterable[str], task_types: Mapping[str, str] | None = None,
                 init_log_var: float | Mapping[str, float] = 0.0) -> None:
        super().__init__(tasks)
        types = dict(task_types or {})
        unknown = set(types) - set(self.tasks)
        if unknown:
            raise ValueError(f"weighting.task_types: unknown task(s) {sorted(unknown)}; the model has {self.tasks}")
        for t in self.tasks:
            if types.get(t, "regression") not in ("regression", "classification"):
                raise ValueError(f"weighting.task_types.{t}: got {types[t]!r}, "
                                 "expected 'regression' or 'classification'")
        self.coeffs = {t: 0.5 if types.get(t, "regression") == "regression" else 1.0 for t in self.tasks}
        init = init_log_var if isinstance(init_log_var, Mapping) else {t: init_log_var for t in self.tasks}
        self.log_vars = nn.ParameterDict(
            {t: nn.Parameter(torch.tensor(float(init.get(t, 0.0)))) for t in self.tasks})

    def forward(self, task_losses: Mapping[str, Tensor], present: Mapping[str, bool] | None = None
                ) -> tuple[Tensor, dict[str, Tensor]]:
        active = self.active_tasks(task_losses, present)
        total = zero_with_graph(task_losses, active)
        for t in active:
            s = self.log_vars[t]
            total = total + self.coeffs[t] * torch.exp(-s) * task_losses[t] + 0.5 * s
        return total, self.effective_weights()

    def effective_weights(self) -> dict[str, Tensor]:
        """Task -> c_t * exp(-s_t), the weight each loss currently gets (detached)."""
        return {t: self.coeffs[t] * torch.exp(-self.log_vars[t].detach()) for t in self.tasks}

    def sigmas(self) -> dict[str, Tensor]:
        """Task -> sigma_t = exp(s_t / 2) (detached)."""
        return {t: torch.exp(0.5 * self.log_vars[t].detach()) for t in self.tasks}
