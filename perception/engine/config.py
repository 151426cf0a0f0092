"""Configuration of training and evaluation."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class TrainConfig:
    """Optimisation and the training loop.

    Attributes:
        optimizer: ``adamw`` or ``sgd``.
        lr: peak learning rate.
        weight_decay: decoupled weight decay (none on norms, biases and the weighting's parameters).
        max_steps: optimizer steps.
        warmup_steps: linear warm-up steps.
        schedule: ``cosine``, ``poly`` or ``constant`` after warm-up.
        grad_clip: max global gradient norm (0 = off).
        amp: ``none``, ``bf16`` or ``fp16``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    """

    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    max_steps: int = 1000
    warmup_steps: int = 100
    schedule: Literal["cosine", "poly", "constant"] = "cosine"
    grad_clip: float = 10.0
    amp: Literal["none", "bf16", "fp16"] = "none"
    device: str = "auto"
