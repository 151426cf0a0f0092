"""Configuration of the loss weighting."""
from __future__ import annotations

from dataclasses import dataclass, field

WEIGHTING_METHODS = ("equal", "fixed", "uncertainty")


@dataclass
class WeightingConfig:
    """How the task losses are combined.

    Attributes:
        method: ``equal``, ``fixed`` or ``uncertainty``.
        weights: task -> weight, for ``fixed`` (unlisted tasks get 1).
        task_types: task -> ``regression`` (c = 1/2) or ``classification`` (c = 1), for ``uncertainty``.
        init_log_var: initial log-variance s = log sigma^2 of every task, for ``uncertainty``.
    """

    method: str = "uncertainty"
    weights: dict[str, float] = field(default_factory=dict)
    task_types: dict[str, str] = field(default_factory=dict)
    init_log_var: float = 0.0

    def validate(self) -> None:
        if self.method not in WEIGHTING_METHODS:
            import difflib

            close = difflib.get_close_matches(self.method, WEIGHTING_METHODS, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"method: unknown weighting {self.method!r}.{hint} "
                             f"Allowed: {', '.join(WEIGHTING_METHODS)}")
