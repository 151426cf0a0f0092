"""Configuration of the multi-task method: loss weighting or gradient combination, and task scheduling."""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Literal

WEIGHTING_METHODS = ("equal", "fixed", "uncertainty", "dwa", "gradnorm", "rlw", "pcgrad", "mgda", "cagrad",
                     "aligned_mtl", "famo", "nash_mtl", "upgrad", "db_mtl")
TASK_SCHEDULES = ("all", "round_robin", "random", "loss_ratio")


def _unknown(kind: str, value: str, allowed: tuple[str, ...]) -> ValueError:
    close = difflib.get_close_matches(value, allowed, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ValueError(f"method: unknown {kind} {value!r}.{hint} Allowed: {', '.join(allowed)}")


@dataclass
class TaskScheduleConfig:
    """Which tasks each training step optimises (see :mod:`perception.mtl.scheduling`).

    Attributes:
        method: ``all`` (every task, every step), ``round_robin``, ``random`` (uniform) or ``loss_ratio``
            (tasks drawn with probability proportional to ``(L_recent / L_first) ** (1 / temperature)``).
        tasks_per_step: tasks per step for the schedules that pick (1 .. number of tasks).
        temperature: softness of ``loss_ratio`` (larger: closer to uniform).
    """

    method: str = "all"
    tasks_per_step: int = 1
    temperature: float = 1.0

    def validate(self) -> None:
        if self.method not in TASK_SCHEDULES:
            raise _unknown("task schedule", self.method, TASK_SCHEDULES)
        if self.tasks_per_step < 1:
            raise ValueError(f"tasks_per_step: got {self.tasks_per_step}, expected at least 1")
        if self.temperature <= 0:
            raise ValueError(f"temperature: got {self.temperature}, expected a value > 0")


@dataclass
class WeightingConfig:
    """How the task losses (or their gradients) are combined, and which tasks each step trains.

    Attributes:
        method: ``equal``, ``fixed``, ``uncertainty`` (Kendall et al. 2018), ``dwa`` (Liu et al. 2019),
            ``gradnorm`` (Chen et al. 2018), ``rlw`` (Lin et al. 2021), ``pcgrad`` (Yu et al. 2020), ``mgda``
            (MGDA-UB, Sener & Koltun 2018), ``cagrad`` (Liu et al. 2021) ``aligned_mtl`` (Senushkin et al. 2023)
            ``famo`` (Liu et al. 2023), ``nash_mtl`` (Navon et al. 2022), ``upgrad`` (Quinton & Rey 2024) or
            ``db_mtl`` (Lin et al. 2023).
        weights: task -> weight, for ``fixed`` (unlisted tasks get 1).
        task_types: task -> ``regression`` (c = 1/2) or ``classification`` (c = 1), for ``uncertainty``.
        init_log_var: initial log-variance s = log sigma^2 of every task, for ``uncertainty``.
        dwa_temperature: the softmax temperature T of ``dwa`` (paper: 2).
        gradnorm_alpha: the asymmetry alpha of ``gradnorm`` (paper: 1.5 on NYUv2).
        mgda_on_features: ``mgda`` on the gradients of the shared features (MGDA-UB, the paper's efficient
            variant) rather than of the shared parameters.
        mgda_normalization: gradient normalisation before the min-norm solve: ``loss+`` (gradient divided by
            loss times its norm: the setting of the paper's released experiments, and robust to tasks whose
            losses differ in scale), ``none`` (the bare algorithm: the smallest gradient dominates), ``l2`` or
            ``loss``.
        cagrad_c: the radius c of ``cagrad``, relative to the average gradient's norm (paper: 0.4).
        famo_lr: learning rate of ``famo``'s own Adam over its task logits (paper: 0.025).
        famo_weight_decay: weight decay of ``famo``'s task logits (paper: 0.01).
        nash_update_every: ``nash_mtl`` solves for its weights every this many steps and reuses them between.
        db_mtl_beta: decay of ``db_mtl``'s moving average of each task's gradient (LibMTL: 0.9).
        task_schedule: which tasks each step optimises.

    The default, ``aligned_mtl``, ranks first in the measured comparison (docs/mtl.md, 3 seeds); it costs
    one backward pass per task (about 1.8x the training step of a loss weighting with three tasks).
    """

    method: str = "aligned_mtl"
    weights: dict[str, float] = field(default_factory=dict)
    task_types: dict[str, str] = field(default_factory=dict)
    init_log_var: float = 0.0
    dwa_temperature: float = 2.0
    gradnorm_alpha: float = 1.5
    mgda_on_features: bool = True
    mgda_normalization: Literal["none", "l2", "loss", "loss+"] = "loss+"
    cagrad_c: float = 0.4
    famo_lr: float = 0.025
    famo_weight_decay: float = 0.01
    nash_update_every: int = 1
    db_mtl_beta: float = 0.9
    task_schedule: TaskScheduleConfig = field(default_factory=TaskScheduleConfig)

    def validate(self) -> None:
        if self.method not in WEIGHTING_METHODS:
            raise _unknown("weighting", self.method, WEIGHTING_METHODS)
        if self.dwa_temperature <= 0:
            raise ValueError(f"dwa_temperature: got {self.dwa_temperature}, expected a value > 0")
        if self.gradnorm_alpha < 0:
            raise ValueError(f"gradnorm_alpha: got {self.gradnorm_alpha}, expected a value >= 0")
        if self.cagrad_c < 0:
            raise ValueError(f"cagrad_c: got {self.cagrad_c}, expected a value >= 0")
        if self.famo_lr <= 0:
            raise ValueError(f"famo_lr: got {self.famo_lr}, expected a value > 0")
        if self.famo_weight_decay < 0:
            raise ValueError(f"famo_weight_decay: got {self.famo_weight_decay}, expected a value >= 0")
        if self.nash_update_every < 1:
            raise ValueError(f"nash_update_every: got {self.nash_update_every}, expected an integer >= 1")
        if not 0.0 <= self.db_mtl_beta < 1.0:
            raise ValueError(f"db_mtl_beta: got {self.db_mtl_beta}, expected a value in [0, 1)")
