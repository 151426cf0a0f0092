"""Multi-task learning methods: how task losses (or their gradients) are combined, and which tasks each step trains.

Loss weightings (``forward``): equal/fixed, uncertainty, DWA, GradNorm (learned, gradient-based), RLW, FAMO (updated
after the optimizer step from the losses of the same batch: ``post_step``).
Gradient methods (``backward``, per-task gradients of the shared parameters): PCGrad, MGDA-UB, CAGrad, Aligned-MTL,
Nash-MTL, UPGrad, DB-MTL.
"""
from __future__ import annotations

from typing import Iterable, Mapping

from perception.mtl.aligned_mtl import AlignedMTL
from perception.mtl.base import Weighting
from perception.mtl.cagrad import CAGrad
from perception.mtl.config import TASK_SCHEDULES, WEIGHTING_METHODS, TaskScheduleConfig, WeightingConfig
from perception.mtl.db_mtl import DBMTL
from perception.mtl.dwa import DynamicWeightAverage
from perception.mtl.famo import FAMO
from perception.mtl.fixed import FixedWeighting
from perception.mtl.gradients import GradientWeighting
from perception.mtl.gradnorm import GradNorm
from perception.mtl.mgda import MGDA
from perception.mtl.nash_mtl import NashMTL
from perception.mtl.pcgrad import PCGrad
from perception.mtl.rlw import RandomLossWeighting
from perception.mtl.scheduling import (LossRatioScheduler, RandomScheduler, RoundRobinScheduler, TaskScheduler,
                                       build_task_scheduler)
from perception.mtl.uncertainty import UncertaintyWeighting
from perception.mtl.upgrad import UPGrad


def build_weighting(cfg: WeightingConfig, tasks: Iterable[str], loss_kinds: Mapping[str, str] | None = None
                    ) -> Weighting:
    """The weighting module named by ``cfg.method`` for ``tasks``.

    Args:
        cfg: the ``weighting`` section.
        tasks: the task names.
        loss_kinds: task -> ``regression`` or ``classification`` (the tasks' own kinds, for uncertainty
            weighting; ``cfg.task_types`` overrides them).
    """
    tasks = list(tasks)
    if cfg.method == "equal":
        return FixedWeighting(tasks)
    if cfg.method == "fixed":
        return FixedWeighting(tasks, cfg.weights)
    if cfg.method == "uncertainty":
        return UncertaintyWeighting(tasks, {**dict(loss_kinds or {}), **cfg.task_types}, cfg.init_log_var)
    if cfg.method == "dwa":
        return DynamicWeightAverage(tasks, cfg.dwa_temperature)
    if cfg.method == "gradnorm":
        return GradNorm(tasks, cfg.gradnorm_alpha)
    if cfg.method == "rlw":
        return RandomLossWeighting(tasks)
    if cfg.method == "pcgrad":
        return PCGrad(tasks)
    if cfg.method == "mgda":
        return MGDA(tasks, cfg.mgda_on_features, cfg.mgda_normalization)
    if cfg.method == "cagrad":
        return CAGrad(tasks, cfg.cagrad_c)
    if cfg.method == "aligned_mtl":
        return AlignedMTL(tasks)
    if cfg.method == "famo":
        return FAMO(tasks, cfg.famo_lr, cfg.famo_weight_decay)
    if cfg.method == "nash_mtl":
        return NashMTL(tasks, cfg.nash_update_every)
    if cfg.method == "upgrad":
        return UPGrad(tasks)
    if cfg.method == "db_mtl":
        return DBMTL(tasks, cfg.db_mtl_beta)
    raise ValueError(f"weighting.method: unknown {cfg.method!r}; allowed: {', '.join(WEIGHTING_METHODS)}")


__all__ = ["TASK_SCHEDULES", "WEIGHTING_METHODS", "AlignedMTL", "CAGrad", "DBMTL", "DynamicWeightAverage", "FAMO",
           "FixedWeighting", "GradNorm", "GradientWeighting", "LossRatioScheduler", "MGDA", "NashMTL", "PCGrad",
           "RandomLossWeighting", "RandomScheduler", "RoundRobinScheduler", "TaskScheduleConfig", "TaskScheduler",
           "UPGrad", "UncertaintyWeighting", "Weighting", "WeightingConfig", "build_task_scheduler", "build_weighting"]
