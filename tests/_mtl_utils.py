"""Helpers of the multi-task-method tests: a tiny shared-trunk regression network and a tiny perception model."""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from perception.models import build_model
from perception.models.config import ModelConfig
from perception.utils.configurable import from_dict

TINY_MODEL = {"backbone": {"name": "test_resnet"}, "neck": {"channels": 32},
              "detection": {"num_classes": 2, "num_convs": 1},
              "segmentation": {"num_classes": 4, "channels": 32}, "depth": {"channels": 32}}


def tiny_model(**overrides) -> nn.Module:
    """The perception network with timm's ``test_resnet`` and 32-channel neck and heads."""
    return build_model(from_dict(ModelConfig, {**TINY_MODEL, **overrides}))


class TinyMultiTask(nn.Module):
    """``x -> tanh(W2 tanh(W1 x)) -> one linear head per task``: a shared trunk with the model's hooks.

    Args:
        tasks: task names.
        in_dim, hidden: sizes.
    """

    def __init__(self, tasks: Sequence[str], in_dim: int = 4, hidden: int = 8) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh())
        self.heads = nn.ModuleDict({t: nn.Linear(hidden, 1) for t in tasks})

    def forward(self, x: Tensor, tasks: Sequence[str] | None = None, return_features: bool = False):
        features = self.trunk(x)
        tasks = list(self.heads) if tasks is None else tasks
        outputs = {t: self.heads[t](features).squeeze(1) for t in tasks}
        return (outputs, [features]) if return_features else outputs

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        return self.trunk.parameters()

    def last_shared_parameters(self) -> Iterator[nn.Parameter]:
        return self.trunk[2].parameters()


def regression_data(tasks: Sequence[str], n: int = 64, in_dim: int = 4, seed: int = 0
                    ) -> tuple[Tensor, dict[str, Tensor]]:
    """Inputs and a different smooth target per task."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, in_dim, generator=gen)
    targets = {t: torch.sin(x @ torch.randn(in_dim, generator=gen)) for t in tasks}
    return x, targets


def mse_losses(outputs: dict[str, Tensor], targets: dict[str, Tensor],
               scales: dict[str, float] | None = None) -> dict[str, Tensor]:
    """Task -> scale * mean squared error."""
    scales = scales or {}
    return {t: scales.get(t, 1.0) * torch.mean((out - targets[t]) ** 2) for t, out in outputs.items()}


def per_task_grads(model: TinyMultiTask, losses: dict[str, Tensor], params: Sequence[Tensor]) -> Tensor:
    """Reference per-task gradients of ``params``, Tensor[K, P], by one autograd call per task."""
    rows = []
    for loss in losses.values():
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                               for g, p in zip(grads, params)]))
    return torch.stack(rows)


def flat_grad(params: Sequence[Tensor]) -> Tensor:
    return torch.cat([p.grad.reshape(-1) for p in params])


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)
