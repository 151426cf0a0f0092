"""Task scheduling: which tasks a training step optimises.

The trainer asks ``scheduler.select(step)`` for the step's tasks, runs only those heads and passes only their
losses to the weighting; a scheduled-out task's head and weighting parameters get no gradient that step.
"""
from __future__ import annotations

from typing import Iterable, Mapping


class TaskScheduler:
    """Every task at every step (the default).

    Args:
        tasks: the model's tasks.
    """

    def __init__(self, tasks: Iterable[str]) -> None:
        self.tasks = list(tasks)

    def select(self, step: int) -> list[str]:
        """The tasks to optimise at ``step``."""
        return list(self.tasks)

    def observe(self, task_losses: Mapping[str, float]) -> None:
        """Receive recent (detached, host-side) task losses; schedulers driven by losses use them."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
