"""Multi-task learning methods: how task losses are weighted and combined."""
from __future__ import annotations

from typing import Iterable

from perception.mtl.base import Weighting
from perception.mtl.config import WEIGHTING_METHODS, WeightingConfig
from perception.mtl.fixed import FixedWeighting
from perception.mtl.uncertainty import UncertaintyWeighting


def build_weighting(cfg: WeightingConfig, tasks: Iterable[str]) -> Weighting:
    """The weighting module named by ``cfg.method`` for ``tasks``."""
    tasks = list(tasks)
    if cfg.method == "equal":
        return FixedWeighting(tasks)
    if cfg.method == "fixed":
        return FixedWeighting(tasks, cfg.weights)
    if cfg.method == "uncertainty":
        return UncertaintyWeighting(tasks, cfg.task_types, cfg.init_log_var)
    raise ValueError(f"weighting.method: unknown {cfg.method!r}; allowed: {', '.join(WEIGHTING_METHODS)}")


__all__ = ["WEIGHTING_METHODS", "FixedWeighting", "UncertaintyWeighting", "Weighting", "WeightingConfig",
           "build_weighting"]
