"""Training and evaluation: ``train(cfg) -> run_dir`` and ``evaluate(cfg, checkpoint) -> metrics``.

The names are resolved on first use: ``perception.config`` imports ``perception.engine.config``, and the trainer
imports ``perception.config``, so importing the trainer here eagerly would be circular.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "NonFiniteLossError": "perception.engine.trainer",
    "Trainer": "perception.engine.trainer",
    "train": "perception.engine.trainer",
    "evaluate": "perception.engine.evaluator",
    "evaluate_model": "perception.engine.evaluator",
    "format_metrics": "perception.engine.evaluator",
    "write_metrics": "perception.engine.evaluator",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'perception.engine' has no attribute {name!r}")
