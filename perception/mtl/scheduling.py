"""Task scheduling: which tasks a training step optimises.

The trainer asks ``scheduler.select(step)`` for the step's tasks, runs only those heads and passes only their
losses to the weighting; a scheduled-out task's head and weighting parameters get no gradient that step (the
optimizer leaves them exactly as they were). Loss-driven schedules learn from ``observe(losses)``, which the
trainer calls at every log interval with the window's average loss per task (host-side floats, read where it
logs them anyway, so no step waits for the device).

Every choice is a pure function of ``(seed, step)`` and the observed losses: a resumed run picks the same tasks,
and every rank of a distributed run picks the same tasks (``observe`` averages the losses over the ranks).
"""
from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np
import torch
import torch.distributed as dist

from perception.mtl.config import TaskScheduleConfig


class TaskScheduler:
    """Every task at every step (the default).

    Args:
        tasks: the model's tasks.
    """

    def __init__(self, tasks: Iterable[str]) -> None:
        self.tasks = list(tasks)

    def select(self, step: int) -> list[str]:
        """The tasks to optimise at ``step``, in the model's task order."""
        return list(self.tasks)

    def observe(self, task_losses: Mapping[str, float]) -> None:
        """Receive recent (detached, host-side) task losses; schedulers driven by losses use them."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class _PickingScheduler(TaskScheduler):
    def __init__(self, tasks: Iterable[str], tasks_per_step: int = 1, seed: int = 0) -> None:
        super().__init__(tasks)
        if not 1 <= tasks_per_step <= len(self.tasks):
            raise ValueError(f"weighting.task_schedule.tasks_per_step: got {tasks_per_step}, expected 1 to "
                             f"{len(self.tasks)} (the model's tasks: {', '.join(self.tasks)})")
        self.tasks_per_step = tasks_per_step
        self.seed = seed

    def _ordered(self, indices: Iterable[int]) -> list[str]:
        return [self.tasks[i] for i in sorted(set(int(i) for i in indices))]

    def _rng(self, step: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, step])


class RoundRobinScheduler(_PickingScheduler):
    """``tasks_per_step`` tasks per step, cycling through the tasks in order.

    Args:
        tasks: the model's tasks.
        tasks_per_step: how many tasks each step trains.
    """

    def select(self, step: int) -> list[str]:
        start = step * self.tasks_per_step
        return self._ordered((start + i) % len(self.tasks) for i in range(self.tasks_per_step))


class RandomScheduler(_PickingScheduler):
    """``tasks_per_step`` tasks per step drawn uniformly without replacement (deterministic in seed and step).

    Args:
        tasks: the model's tasks.
        tasks_per_step: how many tasks each step trains.
        seed: the run's seed.
    """

    def select(self, step: int) -> list[str]:
        return self._ordered(self._rng(step).choice(len(self.tasks), self.tasks_per_step, replace=False))


class LossRatioScheduler(_PickingScheduler):
    """Tasks drawn with probability proportional to ``(L_recent / L_first) ** (1 / temperature)``: a task whose
    loss has fallen least relative to its start is trained most (the inverse training rate of GradNorm).

    Until a task's loss has been observed twice its ratio counts as 1.

    Args:
        tasks: the model's tasks.
        tasks_per_step: how many tasks each step trains.
        temperature: larger is closer to uniform.
        seed: the run's seed.
    """

    def __init__(self, tasks: Iterable[str], tasks_per_step: int = 1, temperature: float = 1.0,
                 seed: int = 0) -> None:
        super().__init__(tasks, tasks_per_step, seed)
        if temperature <= 0:
            raise ValueError(f"weighting.task_schedule.temperature: got {temperature}, expected a value > 0")
        self.temperature = temperature
        self.first: dict[str, float] = {}
        self.recent: dict[str, float] = {}

    def probabilities(self) -> np.ndarray:
        """The current sampling probability of each task, in task order."""
        ratios = np.array([self.recent[t] / self.first[t] if self.first.get(t, 0.0) > 0 and t in self.recent
                           else 1.0 for t in self.tasks])
        weights = np.maximum(ratios, 1e-12) ** (1.0 / self.temperature)
        return weights / weights.sum()

    def select(self, step: int) -> list[str]:
        chosen = self._rng(step).choice(len(self.tasks), self.tasks_per_step, replace=False, p=self.probabilities())
        return self._ordered(chosen)

    def observe(self, task_losses: Mapping[str, float]) -> None:
        known = {t: float(v) for t, v in task_losses.items() if t in self.tasks and np.isfinite(float(v))}
        known = _average_over_ranks(known, self.tasks)
        for t, value in known.items():
            self.first.setdefault(t, value)
            self.recent[t] = value

    def state_dict(self) -> dict:
        return {"first": dict(self.first), "recent": dict(self.recent)}

    def load_state_dict(self, state: dict) -> None:
        self.first = {t: float(v) for t, v in state.get("first", {}).items()}
        self.recent = {t: float(v) for t, v in state.get("recent", {}).items()}


def _average_over_ranks(values: dict[str, float], tasks: list[str]) -> dict[str, float]:
    """Average the observed losses over the ranks of a distributed run (unchanged otherwise)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    packed = torch.tensor([[values.get(t, 0.0), float(t in values)] for t in tasks], dtype=torch.float64,
                          device=device)
    dist.all_reduce(packed)
    return {t: float(s / n) for t, (s, n) in zip(tasks, packed.tolist()) if n > 0}


def build_task_scheduler(cfg: TaskScheduleConfig, tasks: Iterable[str], seed: int = 0) -> TaskScheduler:
    """The scheduler named by ``cfg.method`` for ``tasks`` (``seed``: the run's seed)."""
    tasks = list(tasks)
    if cfg.method == "all":
        return TaskScheduler(tasks)
    if cfg.method == "round_robin":
        return RoundRobinScheduler(tasks, cfg.tasks_per_step, seed)
    if cfg.method == "random":
        return RandomScheduler(tasks, cfg.tasks_per_step, seed)
    if cfg.method == "loss_ratio":
        return LossRatioScheduler(tasks, cfg.tasks_per_step, cfg.temperature, seed)
    raise ValueError(f"weighting.task_schedule.method: unknown {cfg.method!r}")
