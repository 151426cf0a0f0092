"""The interface every multi-task loss-weighting and gradient method implements."""
from __future__ import annotations

from typing import Callable, Iterable, Mapping, Sequence

from torch import Tensor, nn


class Weighting(nn.Module):
    """Combines the per-task losses into the one scalar to backpropagate: the one place tasks meet.

    Loss-weighting methods implement ``forward``. Methods that need per-task gradients (PCGrad, MGDA, ...) override
    ``backward`` instead and set ``manual_grad_sync`` so that a distributed trainer runs the step under
    ``no_sync()`` and averages the combined gradient once. Learnable parameters (such as log-variances) live in the
    module: they are optimised with the model, get no weight decay and are saved in checkpoints.

    Which tasks take part in a step: those in ``task_losses`` whose ``present`` flag is true. A task that is
    missing from ``task_losses`` (scheduled out) or absent from the batch's labels must leave the weighting's
    parameters of that task without a gradient, so that the optimizer does not move them.

    The trainer's side of the contract, per step::

        loss, weights = weighting.backward(task_losses, shared, present, scale, shared_features, extra=penalty)

``extra`` is a loss of no task (the ``soft`` sharing penalty): every method adds it unweighted, so that its
gradient reaches the parameters exactly once (gradient methods add its gradient to the combined one, once).

    with ``shared = weighting.shared_parameters_fn(model)`` taken once at set-up, and
    ``weighting.on_window_end()`` called at every log interval (where the trainer reads its losses anyway).

    Args:
        tasks: the task names, in a fixed order.
    """

    manual_grad_sync: bool = False  # per-task gradients: the trainer syncs the combined gradient itself
    needs_features: bool = False    # backward wants the shared features (model(..., return_features=True))
    needs_post_step: bool = False   # post_step wants the losses of the last micro-batch after the optimizer step

    def __init__(self, tasks: Iterable[str]) -> None:
        super().__init__()
        self.tasks = list(tasks)

    def forward(self, task_losses: Mapping[str, Tensor], present: Mapping[str, bool] | None = None
                ) -> tuple[Tensor, dict[str, Tensor]]:
        """Combine the task losses.

        Args:
            task_losses: task -> scalar loss (a subset of ``tasks``).
            present: task -> whether the batch carried any of its labels (``None``: all did).

        Returns:
            the scalar loss, and task -> effective weight (detached tensors, for logging).
        """
        raise NotImplementedError

    def backward(self, task_losses: Mapping[str, Tensor], shared_parameters: Callable[[], Iterable[nn.Parameter]],
                 present: Mapping[str, bool] | None = None,
                 scale: Callable[[Tensor], Tensor] = lambda loss: loss,
                 shared_features: Sequence[Tensor] | None = None,
                 extra: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Backpropagate the combined loss; gradient-based methods override this.

        Args:
            task_losses: task -> scalar loss.
            shared_parameters: returns the parameters shared by all tasks (used by gradient methods).
            present: as in ``forward``.
            scale: the AMP loss scaler's ``scale`` (identity without AMP).
            shared_features: the shared representation, when ``needs_features`` is set.
            extra: a scalar loss of no task (e.g. the soft-sharing penalty), added unweighted.

        Returns:
            the combined loss (detached; ``extra`` included) and the weights to log.
        """
        loss, weights = self(task_losses, present)
        loss = with_extra(loss, extra)
        scale(loss).backward()
        return loss.detach(), weights

    def shared_parameters_fn(self, model: nn.Module) -> Callable[[], Iterable[nn.Parameter]]:
        """What the trainer passes as ``shared_parameters`` for ``model`` (the unwrapped model, not a DDP wrapper).

        The parameters every task depends on by default; GradNorm wants only the last shared layer.
        """
        return model.shared_parameters

    def on_window_end(self) -> None:
        """Close a window of the loss history. The trainer calls it at every log interval; a no-op by default.

        Methods driven by averaged losses (DWA) keep device-side running sums during the steps and read them
        here, so that no step waits for the device.
        """

    def post_step(self, losses_before: Mapping[str, Tensor], losses_after: Mapping[str, Tensor]) -> None:
        """Called after the optimizer step when ``needs_post_step`` is set (FAMO), under ``torch.no_grad()``.

        Args:
            losses_before: task -> the detached loss of the step's last micro-batch.
            losses_after: task -> the loss of the same micro-batch with the updated parameters.

        Must stay on the device; a skipped step restores whatever it changes (its parameters and buffers).
        """

    def active_tasks(self, task_losses: Mapping[str, Tensor], present: Mapping[str, bool] | None) -> list[str]:
        """The tasks that take part in this step, in ``self.tasks`` order."""
        return [t for t in self.tasks if t in task_losses and (present is None or present.get(t, True))]


def with_extra(loss: Tensor | float, extra: Tensor | None) -> Tensor | float:
    """``loss + extra``, or ``loss`` when there is no extra term."""
    return loss if extra is None else loss + extra


def zero_with_graph(task_losses: Mapping[str, Tensor], active: Iterable[str]) -> Tensor | float:
    """0 times the inactive tasks' losses: keeps every head in the graph (as distributed training needs)
    while giving them exactly zero gradient."""
    active = set(active)
    return sum((loss * 0.0 for t, loss in task_losses.items() if t not in active), 0.0)
