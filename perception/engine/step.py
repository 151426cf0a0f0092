"""One optimizer step of multi-task training, with no host synchronisation.

    active = task_scheduler.select(step)                         # which tasks this step trains
    outputs = model(images, tasks=active)                        # (+ the shared features for MGDA-UB-like methods)
    task_losses, parts = model.compute_losses(outputs, batch)    # {task: scalar}
    loss, weights = weighting.backward(task_losses, shared, present, scale, features,
                                       extra=parts.get(PENALTY_KEY))  # losses meet here only
    (repeat over the accumulated micro-batches) -> sync gradients -> unscale -> clip -> step -> EMA
    -> for weightings with ``needs_post_step`` (FAMO): the last micro-batch's losses again, under no_grad and with
       the BatchNorm statistics left alone, handed to ``weighting.post_step(before, after)``
    -> every tensor put back where the gradient norm is not finite (all on the device)

Non-finite steps are skipped on the device, with no host synchronisation: before the first micro-batch's forward
every tensor the step may change is copied into preallocated buffers (:class:`StateSnapshot`: the parameters,
the model's buffers, which the forward updates (BatchNorm statistics), the weighting's parameters and buffers,
the optimizer state, the EMA). The step then runs to the end whatever happens; when the global gradient norm is
not finite (a non-finite task loss poisons one gradient, so it counts too), every tensor is put back with
``torch.where(skip, saved, new)``. A skipped step thus changes nothing but the counters and the LR schedule, and
does not depend on what an optimizer kernel does with a step it is told to skip. Under fp16 the GradScaler still
unscales, and its ``update`` backs the scale off from the same inf/NaN. Counters (steps skipped, consecutive
non-finite losses per task) are device tensors that the trainer reads at its log interval.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from perception.data.batch import Batch
from perception.models.sharing import PENALTY_KEY
from perception.utils.distributed import average_gradients

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def make_grad_scaler(amp: str, device: torch.device) -> torch.amp.GradScaler:
    """Dynamic loss scaling for fp16; otherwise a scaler with scale fixed at 1 that only detects inf/NaN."""
    if amp == "fp16":
        return torch.amp.GradScaler(device.type)
    return torch.amp.GradScaler(device.type, init_scale=1.0, growth_interval=2 ** 30)


class StateSnapshot:
    """Preallocated copies of a list of tensors: :meth:`take` copies them, :meth:`restore` puts them back where a
    0-d bool flag says so, both on the device. The buffers are reallocated only when the list's tensors change
    (another object after ``optimizer.load_state_dict``, say)."""

    def __init__(self) -> None:
        self.live: list[Tensor] = []
        self.saved: list[Tensor] = []

    @torch.no_grad()
    def take(self, tensors: Sequence[Tensor]) -> None:
        """Copy ``tensors`` (the same objects every step, in the same order, or new buffers are made)."""
        tensors = list(tensors)
        if len(tensors) != len(self.live) or any(a is not b for a, b in zip(tensors, self.live)):
            self.live = tensors
            self.saved = [torch.empty_like(t, memory_format=torch.preserve_format) for t in tensors]
        if self.live:
            torch._foreach_copy_(self.saved, self.live)

    @torch.no_grad()
    def restore(self, skip: Tensor) -> None:
        """Where ``skip`` (Tensor[] bool) holds, put every tensor back to what :meth:`take` copied."""
        on = {}
        for live, saved in zip(self.live, self.saved):
            flag = on.get(live.device)
            if flag is None:
                flag = on[live.device] = skip.to(live.device)
            torch.where(flag, saved, live, out=live)


def step_state_tensors(module: nn.Module, weighting: nn.Module, optimizer: torch.optim.Optimizer,
                       ema: nn.Module | None = None) -> list[Tensor]:
    """Every tensor that one training step may change: the network's and the weighting's parameters and buffers,
    the optimizer's per-parameter state and the EMA's parameters and buffers (each tensor once)."""
    tensors: list[Tensor] = []
    seen: set[int] = set()

    def add(values) -> None:
        for t in values:
            if isinstance(t, Tensor) and id(t) not in seen:
                seen.add(id(t))
                tensors.append(t)

    for m in (module, weighting):
        add(m.parameters())
        add(m.buffers())
    for group in optimizer.param_groups:
        for p in group["params"]:
            add(optimizer.state.get(p, {}).values())
    if ema is not None:
        add(ema.module.parameters())
        add(ema.module.buffers())
    return tensors


class TrainStep:
    """Runs optimizer steps and keeps device-side statistics of them.

    Args:
        model: what is called for the forward: the network, or its DDP and/or ``torch.compile`` wrapper.
        module: the plain network (``compute_losses``, parameters, EMA source).
        weighting: the multi-task weighting (:class:`perception.mtl.Weighting`).
        optimizer: over the network's and the weighting's parameters.
        lr_scheduler: stepped once per optimizer step.
        scaler: from :func:`make_grad_scaler`.
        task_scheduler: ``select(step)`` -> the tasks to train at ``step``.
        device: where the step computes.
        amp: ``none``, ``bf16`` or ``fp16``.
        grad_clip: max global gradient norm (0: no clipping, the norm is still measured).
        channels_last: feed the images in NHWC memory format.
        distributed: running under DDP (``model`` is the DDP wrapper).
        ema: a timm ``ModelEmaV3`` of ``module``, or None.
    """

    def __init__(self, model: nn.Module, module: nn.Module, weighting: nn.Module, optimizer: torch.optim.Optimizer,
                 lr_scheduler, scaler: torch.amp.GradScaler, task_scheduler, device: torch.device,
                 amp: str = "none", grad_clip: float = 0.0, channels_last: bool = False, distributed: bool = False,
                 ema: nn.Module | None = None) -> None:
        self.model = model
        self.module = module
        self.weighting = weighting
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.scaler = scaler
        self.task_scheduler = task_scheduler
        self.device = device
        self.amp_dtype = AMP_DTYPES[amp]
        self.grad_clip = grad_clip
        self.channels_last = channels_last
        self.distributed = distributed
        self.ema = ema
        self.tasks = list(module.tasks)
        shared_fn = getattr(weighting, "shared_parameters_fn", None)
        self.shared_parameters: Callable = shared_fn(module) if shared_fn else module.shared_parameters
        self.parameters = [p for p in list(module.parameters()) + list(weighting.parameters()) if p.requires_grad]
        self.stats = self._zero_stats()
        self.skipped_total = torch.zeros((), dtype=torch.int64, device=device)
        self.nonfinite_streak = torch.zeros(len(self.tasks), dtype=torch.int64, device=device)
        self.last_weights: dict[str, Tensor] = {}
        self._masks: dict[tuple, Tensor] = {}
        self.snapshot = StateSnapshot()

    # ----------------------------------------------------------------------------------------------- statistics
    def _zero_stats(self) -> dict[str, Tensor]:
        t = len(self.tasks)
        z = lambda *shape: torch.zeros(*shape, dtype=torch.float32, device=self.device)  # noqa: E731
        return {"loss_sum": z(t), "loss_count": z(t), "total_sum": z(()), "total_count": z(()), "steps": z(()),
                "skipped": z(()), "grad_norm_sum": z(()), "components": {}}

    def pop_stats(self) -> dict[str, Tensor]:
        """The window's device-side sums since the last call, and a fresh window."""
        stats, self.stats = self.stats, self._zero_stats()
        return stats

    # ----------------------------------------------------------------------------------------- forward/backward
    def forward_backward(self, batch: Batch, active: Sequence[str], loss_scale: float = 1.0
                         ) -> tuple[dict[str, Tensor], Tensor]:
        """Forward one micro-batch and backpropagate its combined loss; the gradients accumulate.

        Args:
            batch: the micro-batch (already on the device).
            active: the tasks to train.
            loss_scale: multiplies the loss (1 / micro-batches per step).

        Returns:
            the detached task losses and the combined loss (the soft-sharing penalty included).
        """
        images = batch.images
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            if getattr(self.weighting, "needs_features", False):
                outputs, features = self.model(images, tasks=active, return_features=True)
            else:
                outputs, features = self.model(images, tasks=active), None
            task_losses, components = self.module.compute_losses(outputs, batch)
        scale = lambda loss: self.scaler.scale(loss * loss_scale)  # noqa: E731
        labelled = batch.present()
        present = {name: labelled.get(self.module.task_specs[name].label, False) for name in task_losses}
        # The soft-sharing penalty belongs to no task: the weighting adds it unweighted, in the one backward.
        loss, weights = self.weighting.backward(task_losses, self.shared_parameters, present=present,
                                                scale=scale, shared_features=features,
                                                extra=components.get(PENALTY_KEY))
        self.last_weights = weights
        comp = self.stats["components"]
        for key, value in components.items():
            comp[key] = comp.get(key, 0.0) + value.detach().float() * loss_scale
        return {t: v.detach() for t, v in task_losses.items()}, loss.detach()

    @torch.no_grad()
    def losses_after_step(self, batch: Batch, active: Sequence[str]) -> dict[str, Tensor]:
        """The task losses of ``batch`` with the parameters as they are now (after the optimizer step).

        The network stays in training mode, so that the losses are comparable with the ones the step was taken
        on (BatchNorm on batch statistics, as there), but no running statistic moves: this forward is a
        measurement, not training. The plain network is called (no DDP: there is no gradient to synchronise).
        """
        images = batch.images
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        norms = [m for m in self.module.modules()
                 if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        for m in norms:
            m.track_running_stats = False
        try:
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                outputs = self.module(images, tasks=active)
                task_losses, _ = self.module.compute_losses(outputs, batch)
        finally:
            for m in norms:
                m.track_running_stats = True
        return {t: v.float() for t, v in task_losses.items()}

    def _sync_context(self, micro: int, num_micro: int):
        """DDP all-reduces on the last micro-batch only, or never when the weighting syncs by hand."""
        if not self.distributed:
            return contextlib.nullcontext()
        manual = getattr(self.weighting, "manual_grad_sync", False)
        if manual or micro < num_micro - 1:
            return self.model.no_sync()
        return contextlib.nullcontext()

    def sync_gradients(self) -> None:
        """Average what DDP does not: the weighting's gradients, and everything under ``manual_grad_sync``."""
        if not self.distributed:
            return
        if getattr(self.weighting, "manual_grad_sync", False):
            average_gradients(self.module.parameters())
        average_gradients(self.weighting.parameters())

    # --------------------------------------------------------------------------------------------------- step
    def _active_mask(self, active: Sequence[str]) -> Tensor:
        # Cached per task subset: building it from a host list every step would be a blocking copy on CUDA.
        key = tuple(t in active for t in self.tasks)
        if key not in self._masks:
            self._masks[key] = torch.tensor(key, device=self.device)
        return self._masks[key]

    def __call__(self, batches: Sequence[Batch], step: int) -> None:
        """One optimizer step over ``batches`` (the micro-batches of gradient accumulation).

        Args:
            batches: micro-batches on the device.
            step: the index of this optimizer step (for the task scheduler and the EMA warm-up).
        """
        active = self.task_scheduler.select(step)
        active_mask = self._active_mask(active)
        # Before the first forward: BatchNorm statistics and some weightings' state change already there.
        self.snapshot.take(step_state_tensors(self.module, self.weighting, self.optimizer, self.ema))
        losses = torch.zeros(len(self.tasks), device=self.device)
        total = torch.zeros((), device=self.device)
        for micro, batch in enumerate(batches):
            with self._sync_context(micro, len(batches)):
                task_losses, loss = self.forward_backward(batch, active, 1.0 / len(batches))
            last_losses = task_losses
            zero = torch.zeros((), device=self.device)
            losses = losses + torch.stack([task_losses.get(t, zero).float() for t in self.tasks]) / len(batches)
            total = total + loss.float() / len(batches)
        self.sync_gradients()

        # A non-finite loss must skip the step even if its gradient came out finite: poison one gradient (on
        # every rank: the others must skip this step too).
        loss_bad = ~torch.isfinite(losses) & active_mask                                   # [T]
        any_bad = loss_bad.any()
        if self.distributed:
            any_bad = any_bad.to(torch.int32)
            dist.all_reduce(any_bad, op=dist.ReduceOp.MAX)
            any_bad = any_bad.bool()
        grads = [p.grad for p in self.parameters if p.grad is not None]
        if grads:
            grads[0].add_(torch.where(any_bad, torch.nan, 0.0).to(grads[0].dtype))

        # Unscale (fp16), clip, step; then put everything back if the gradient was not finite.
        fp16 = self.amp_dtype is torch.float16
        if fp16:
            self.scaler.unscale_(self.optimizer)
        if self.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.grad_clip, foreach=True)
        else:
            grad_norm = (torch.nn.utils.get_total_norm(grads, foreach=True) if grads
                         else torch.zeros((), device=self.device))
        skipped = ~torch.isfinite(grad_norm) | any_bad
        self.optimizer.step()
        if fp16:
            self.scaler.update()  # from unscale_'s inf/NaN flags: the scale backs off after an overflow
        self.optimizer.zero_grad(set_to_none=True)
        self.lr_scheduler.step()
        if self.ema is not None:
            self.ema.update(self.module, step=step + 1)
        if getattr(self.weighting, "needs_post_step", False) and batches:
            # Before the restore: a skipped step puts back what post_step wrote too.
            self.weighting.post_step(last_losses, self.losses_after_step(batches[-1], active))
        self.snapshot.restore(skipped)

        # Statistics, all on the device.
        self.skipped_total += skipped
        self.nonfinite_streak.copy_(torch.where(active_mask, (self.nonfinite_streak + 1) * loss_bad,
                                                self.nonfinite_streak))
        finite = torch.isfinite(losses) & active_mask
        s = self.stats
        s["loss_sum"] += torch.where(finite, losses, 0.0)
        s["loss_count"] += finite
        s["total_sum"] += torch.where(torch.isfinite(total), total, 0.0)
        s["total_count"] += torch.isfinite(total)
        s["steps"] += 1
        s["skipped"] += skipped
        s["grad_norm_sum"] += torch.where(skipped, 0.0, grad_norm.float())


def read_window(stats: dict[str, Tensor], tasks: Sequence[str]) -> dict[str, float]:
    """Host-side averages of a statistics window (one synchronisation): ``loss/<task>``, ``loss/total``,
    ``grad_norm``, ``skipped_steps`` and the loss components."""
    flat = torch.cat([stats["loss_sum"], stats["loss_count"], stats["total_sum"][None], stats["steps"][None],
                      stats["skipped"][None], stats["grad_norm_sum"][None], stats["total_count"][None]]
                     + [v.reshape(1) for v in stats["components"].values()]).tolist()
    t = len(tasks)
    sums, counts = flat[:t], flat[t:2 * t]
    total, steps, skipped, grad_norm, total_count = flat[2 * t:2 * t + 5]
    out = {f"loss/{task}": sums[i] / counts[i] for i, task in enumerate(tasks) if counts[i] > 0}
    good = max(steps - skipped, 1.0)
    out["loss/total"] = total / total_count if total_count > 0 else math.nan  # over the steps with a finite loss
    out["grad_norm"] = grad_norm / good if steps > skipped else math.nan
    out["skipped_steps"] = skipped
    for key, value in zip(stats["components"], flat[2 * t + 5:]):
        out[f"loss/{key}"] = value / max(steps, 1.0)
    return out
