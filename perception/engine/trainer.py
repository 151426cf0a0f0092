"""The training loop: set-up from a :class:`perception.config.Config`, steps, logging, evaluation, checkpoints.

    run_dir = train(load_config("configs/synthetic_driving.yaml", ["train.max_steps=200"]))

The loop reads top to bottom: fetch the micro-batches -> one optimizer step (:class:`TrainStep`: forward, task
losses, weighting, backward, clip, step, EMA) -> at the log interval read the device-side statistics (the only
host synchronisation), check for runs of non-finite losses, log -> at the evaluation interval evaluate, write
``last.pt`` and ``best.pt``. Under torchrun every process runs this loop on its shard; only rank 0 writes.
"""
from __future__ import annotations

import json
import math
import os
import random
import re
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from perception.config import Config, config_to_dict, save_config
from perception.engine.checkpoint import (load_checkpoint, remove_temporary_files, rng_state, save_checkpoint,
                                         set_rng_state)
from perception.engine.evaluator import (add_delta_m, delta_m_metrics, evaluate_model, format_metrics,
                                         score_weights, warn, write_metrics)
from perception.engine.model_data import check_loaders
from perception.engine.monitor import Monitor, cut_log
from perception.engine.optim import build_lr_scheduler, build_optimizer, init_optimizer_state, param_groups
from perception.utils.distributed import (DistContext, all_reduce_sum, barrier, cleanup_distributed,
                                          init_distributed)
from perception.engine.step import TrainStep, make_grad_scaler, read_window
from perception.metrics import higher_is_better, weighted_score
from perception.models import build_model
from perception.mtl import build_task_scheduler, build_weighting
from perception.mtl.affinity import (AFFINITY_FILE, AFFINITY_PLOT, AffinityLog, lookahead_affinity, parameter_lrs,
                                     plot_affinity, shared_parameter_names)

LoaderFn = Callable[..., Any]  # (data_cfg, split, tasks, *, distributed, seed) -> DataLoader yielding Batch
BAD_SAMPLES = "bad_samples.txt"  # one "step N: <file>: <reason>" line per sample skipped under data.skip_bad
_BAD_SAMPLE_STEP = re.compile(r"^step (\d+): ")


class NonFiniteLossError(RuntimeError):
    """A task's loss stayed non-finite for ``train.max_nonfinite_steps`` consecutive steps."""


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def default_loader_fn() -> LoaderFn:
    """The data package's ``build_dataloader``."""
    from perception.data import build_dataloader

    return build_dataloader


def sampler_of(loader) -> Any:
    """The loader's sampler that has ``set_epoch``/``set_start`` (or None)."""
    for candidate in (getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler",
                                                                  None)):
        if candidate is not None and hasattr(candidate, "set_epoch"):
            return candidate
    return None


class Trainer:
    """Everything a run holds: model, weighting, optimiser, schedules, scaler, EMA, loaders and the position.

    Args:
        cfg: the run's config.
        loader_fn: builds the loaders (default: :func:`perception.data.build_dataloader`).
        ctx: the distributed context (default: from the torchrun environment, or a single process).
    """

    def __init__(self, cfg: Config, loader_fn: LoaderFn | None = None, ctx: DistContext | None = None) -> None:
        self.cfg = cfg
        tc = cfg.train
        self.ctx = ctx or init_distributed(tc.device)
        self.device = self.ctx.device
        self.run_dir = Path(cfg.output_dir)
        seed_everything(cfg.seed)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = tc.cudnn_benchmark
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if tc.best_metric == "delta_m" and not cfg.eval.baselines:
            raise ValueError("train.best_metric=delta_m needs single-task metrics files in eval.baselines")
        if tc.amp == "fp16" and self.device.type != "cuda":
            raise ValueError(f"train.amp=fp16 needs CUDA, and this run's device is {self.device} "
                             f"(train.device={tc.device}); on the CPU use train.amp=bf16 or none")

        # ------------------------------------------------------------------------------------ model and method
        model = build_model(cfg.model)
        if tc.sync_bn and self.ctx.distributed and self.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(self.device)
        if tc.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.tasks = list(self.model.tasks)
        specs = self.model.task_specs
        self.weighting = build_weighting(cfg.weighting, self.tasks,
                                         {name: task.LOSS_KIND for name, task in specs.items()}).to(self.device)
        self.task_scheduler = build_task_scheduler(cfg.weighting.task_schedule, self.tasks, cfg.seed)
        groups = param_groups(self.model, self.weighting, tc.weight_decay, tc.backbone_lr_mult)
        self.optimizer = build_optimizer(groups, tc)
        self.lr_scheduler = build_lr_scheduler(self.optimizer, tc)
        self.scaler = make_grad_scaler(tc.amp, self.device)
        self.ema = None
        if tc.ema:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=tc.ema_decay, use_warmup=tc.ema_warmup)

        # The forward goes through DDP and/or torch.compile; losses, parameters and EMA use the plain module.
        forward_model: nn.Module = self.model
        if self.ctx.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            forward_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=ids, find_unused_parameters=tc.find_unused_parameters)
        if tc.compile:
            forward_model = torch.compile(forward_model)
        self.step_fn = TrainStep(forward_model, self.model, self.weighting, self.optimizer, self.lr_scheduler,
                                 self.scaler, self.task_scheduler, self.device, tc.amp, tc.grad_clip,
                                 tc.channels_last, self.ctx.distributed, self.ema)

        # ---------------------------------------------------------------------------------------------- data
        loader_fn = loader_fn or default_loader_fn()
        labels = list(dict.fromkeys(task.label for task in specs.values()))  # what the datasets must provide
        self.train_loader = loader_fn(cfg.data, "train", labels, distributed=self.ctx.distributed, seed=cfg.seed)
        self.val_loader = loader_fn(cfg.data, "val", labels, distributed=self.ctx.distributed, seed=cfg.seed)
        # Before the first step: a head whose classes are not the data's would train (or die) on wrong ids.
        check_loaders(cfg.model, specs, {"data.train": self.train_loader, "data.val": self.val_loader},
                      "the config", "Set the classes of task {task} (num_classes, class_names) to the data's")
        self.sampler = sampler_of(self.train_loader)

        # ---------------------------------------------------------------------------------------- position
        self.step = 0
        self.epoch = 0
        self.epoch_samples = 0     # samples of the current epoch this process has consumed
        self.epoch_skipped = 0     # bad samples skipped this epoch (this process)
        self.bad_samples = 0       # bad samples skipped in the run (this process; listed in bad_samples.txt)
        self.best_value = -math.inf
        self.best_step = -1
        self.last_metrics: dict[str, float] = {}
        self.monitor: Monitor | None = None
        self.affinity: AffinityLog | None = None
        if tc.affinity_interval:
            if not shared_parameter_names(self.model):
                raise ValueError(f"train.affinity_interval: model.sharing={cfg.model.sharing} shares no parameters "
                                 "between the tasks, so there is no affinity to measure; set it to 0")
            self.affinity = AffinityLog(self.tasks)

    # ------------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs, as tensors and plain data."""
        state = {
            "config": config_to_dict(self.cfg),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "weighting": self.weighting.state_dict(),
            "task_scheduler": self.task_scheduler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "epoch_samples": self.epoch_samples,
            "best_value": self.best_value,
            "best_step": self.best_step,
            "metrics": dict(self.last_metrics),
            "rng": rng_state(),
        }
        if self.ema is not None:
            state["ema"] = self.ema.module.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any], source: str = "checkpoint") -> None:
        """Restore a :meth:`state_dict` (``--resume``)."""
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            init_optimizer_state(self.optimizer)  # parameters that had no gradient before the checkpoint
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            self.weighting.load_state_dict(state["weighting"])
            self.task_scheduler.load_state_dict(state.get("task_scheduler", {}))
        except KeyError as err:
            raise ValueError(f"{source}: cannot resume, it has no {err.args[0]!r} entry (a checkpoint written by "
                             "tools/train.py holds it)") from None
        except RuntimeError as err:
            raise ValueError(f"{source}: cannot resume, its state does not fit this run's model or optimiser "
                             f"(was it trained with another config?): {' '.join(str(err).split()[:40])}") from None
        if self.ema is not None:
            self.ema.module.load_state_dict(state.get("ema", state["model"]))
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.epoch_samples = int(state["epoch_samples"])
        self.best_value = float(state.get("best_value", -math.inf))
        self.best_step = int(state.get("best_step", -1))
        self.last_metrics = dict(state.get("metrics", {}))
        if "rng" in state:
            set_rng_state(state["rng"])

    def resume(self, path: str | Path) -> None:
        """Continue the run saved at ``path``: every state, the step, and the sampler's position."""
        self.load_state_dict(load_checkpoint(path, map_location=self.device), str(path))

    def save(self, name: str) -> Path | None:
        """Write ``run_dir/name`` atomically (main process only)."""
        path = None
        if self.ctx.is_main:
            path = save_checkpoint(self.state_dict(), self.run_dir / name)
        barrier()
        return path

    # ------------------------------------------------------------------------------------------------- data
    def _batches(self) -> Iterator:
        """Endless batches from the current position; a new epoch reshuffles (and reports skipped samples)."""
        while True:
            if self.sampler is not None:
                self.sampler.set_epoch(self.epoch)
                if self.epoch_samples:
                    self.sampler.set_start(self.epoch_samples)
            for batch in self.train_loader:
                self.epoch_samples += len(batch)
                skipped = getattr(batch, "skipped", ()) or ()
                if skipped:
                    self._report_bad_samples(skipped)
                yield batch
            self._end_epoch()

    def _report_bad_samples(self, reasons: list[str]) -> None:
        """Samples skipped under ``data.skip_bad`` (reported by the dataset with the batch, so also from a
        worker): a warning on stderr now, a line each in ``bad_samples.txt``, and the count of the log."""
        lines = [f"step {self.step + 1}: " + " ".join(str(r).split()) for r in reasons]
        self.epoch_skipped += len(lines)
        self.bad_samples += len(lines)
        for line in lines:
            warn(f"warning: skipped a bad sample (data.skip_bad): {line}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / BAD_SAMPLES, "a", encoding="utf-8") as f:  # every process appends its own
            f.write("".join(line + "\n" for line in lines))

    def _restore_bad_samples(self) -> None:
        """After a resume: keep the bad samples of the steps up to the checkpoint (the later ones are met again)."""
        path = self.run_dir / BAD_SAMPLES
        if self.ctx.is_main and path.is_file():
            kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                    if (m := _BAD_SAMPLE_STEP.match(line)) and int(m.group(1)) <= self.step]
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
            os.replace(tmp, path)
            self.bad_samples = len(kept)  # the run's total so far: the others count from 0
        barrier()

    def _end_epoch(self) -> None:
        skipped = all_reduce_sum(torch.tensor([self.epoch_skipped], dtype=torch.int64))
        if int(skipped) and self.monitor is not None:
            self.monitor.message(f"epoch {self.epoch}: {int(skipped)} bad samples were skipped (data.skip_bad)")
        self.epoch += 1
        self.epoch_samples = 0
        self.epoch_skipped = 0

    # ------------------------------------------------------------------------------------------- evaluation
    def evaluate(self) -> dict[str, float]:
        """Metrics of the evaluation weights (EMA when on) on the val split; logs them and writes metrics.json."""
        tc, ec = self.cfg.train, self.cfg.eval
        module = self.ema.module if self.ema is not None else self.model
        metrics, overlays = evaluate_model(module, self.val_loader, ec, self.device, tc.amp, tc.channels_last,
                                           tc.num_overlays if self.ctx.is_main else 0)
        metrics = add_delta_m(metrics, ec.baselines, delta_m_metrics(ec, self.model.task_specs))
        metrics["score"] = weighted_score(metrics, score_weights(ec, self.model.task_specs))
        metrics["step"] = self.step
        self.last_metrics = metrics
        if self.ctx.is_main:
            write_metrics(metrics, self.run_dir / "metrics.json")
            self.monitor.evaluation(self.step, metrics, overlays, self.model.task_specs)
            self.monitor.message(f"step {self.step} evaluation\n{format_metrics(metrics, self.model.task_specs)}")
        return metrics

    def best_metric_key(self) -> str:
        key = self.cfg.train.best_metric
        if key == "auto":
            return "delta_m" if self.cfg.eval.baselines else "score"
        return key

    def _is_better(self, metrics: dict[str, float]) -> bool:
        key = self.best_metric_key()
        if key not in metrics:
            raise ValueError(f"train.best_metric: {key!r} was not computed; available: {sorted(metrics)}")
        value = float(metrics[key]) * (1.0 if key in ("delta_m", "score") or higher_is_better(key) else -1.0)
        if value > self.best_value:
            self.best_value, self.best_step = value, self.step
            return True
        return False

    # ------------------------------------------------------------------------------------------------ affinity
    def _measure_affinity(self, batch) -> None:
        """Inter-task affinity on this batch, before the step takes it (main process; one host synchronisation):
        recorded in ``affinity.json``, drawn in ``affinity.png``, logged to TensorBoard as ``affinity/i->j``."""
        if not self.ctx.is_main:
            return
        labelled = batch.present()
        present = {t: labelled.get(spec.label, False) for t, spec in self.model.task_specs.items()}
        lrs = parameter_lrs(self.model, self.optimizer)
        matrix = lookahead_affinity(self.model, batch.images, batch, lrs, self.tasks, present).tolist()
        self.affinity.add(self.step, matrix, max(lrs.values()))
        self.affinity.save(self.run_dir / AFFINITY_FILE)
        mean, _ = self.affinity.mean()
        plot_affinity(self.tasks, mean, self.run_dir / AFFINITY_PLOT,
                      f"inter-task affinity: mean of {len(self.affinity.measurements)} up to step {self.step}")
        self.monitor.scalars(self.step, {f"affinity/{a}->{b}": matrix[i][j] for i, a in enumerate(self.tasks)
                                         for j, b in enumerate(self.tasks)})

    # ------------------------------------------------------------------------------------------------- loop
    def _log_window(self, steps_done: int, images: int, elapsed: float) -> dict[str, float]:
        """Read the window's statistics (one host synchronisation), check non-finite runs, log."""
        stats = self.step_fn.pop_stats()
        if self.ctx.distributed:  # the mean over ranks of every sum and count: ratios become global averages
            for value in [*(v for k, v in stats.items() if k != "components"), *stats["components"].values()]:
                all_reduce_sum(value).div_(self.ctx.world_size)
        values = read_window(stats, self.tasks)
        weights = self.step_fn.last_weights
        extra = {f"weight/{t}": w for t, w in weights.items()}
        sigmas = getattr(self.weighting, "sigmas", None)
        if callable(sigmas):
            extra.update({f"sigma/{t}": s for t, s in sigmas().items()})
        names = list(extra)
        # One transfer for the weights, the non-finite streaks and the skipped-step counter.
        packed = [torch.as_tensor(v).detach().float().reshape(1).to(self.device) for v in extra.values()]
        packed += [self.step_fn.nonfinite_streak.float(), self.step_fn.skipped_total.float().reshape(1)]
        flat = torch.cat(packed).tolist()
        values.update(dict(zip(names, flat)))
        streak = [int(v) for v in flat[len(names):len(names) + len(self.tasks)]]
        values["skipped_total"] = int(flat[-1])
        bad = torch.tensor([self.bad_samples], dtype=torch.int64)
        values["bad_samples"] = int(all_reduce_sum(bad)) if self.ctx.distributed else self.bad_samples
        values["lr"] = max(self.lr_scheduler.get_last_lr())
        values["images_per_s"] = images / max(elapsed, 1e-9)
        values["steps_per_s"] = steps_done / max(elapsed, 1e-9)
        self.monitor.train_window(self.step, steps_done, values)
        self.weighting.on_window_end()
        self.task_scheduler.observe({t: values[f"loss/{t}"] for t in self.tasks if f"loss/{t}" in values})
        limit = self.cfg.train.max_nonfinite_steps
        for task, count in zip(self.tasks, streak):
            if count >= limit:
                last = self.run_dir / "last.pt"
                raise NonFiniteLossError(
                    f"the {task} loss was non-finite (inf/NaN) for {count} consecutive steps, up to step {self.step} "
                    f"(train.max_nonfinite_steps={limit}); stopping. Those steps were skipped, so the weights are "
                    f"those of the last good step; the last checkpoint {str(last)!r} is intact. Lower train.lr, "
                    f"check that task's labels, or use train.amp=none.")
        return values

    def fit(self, resume: str | Path | None = None) -> Path:
        """Train to ``train.max_steps``; returns the run directory."""
        tc = self.cfg.train
        if resume:
            self.resume(resume)
            self._restore_bad_samples()
        notes = []
        if self.ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.run_dir / "config.yaml")
            # What a killed run left behind: half-written checkpoints, and log lines past the step resumed from.
            removed = remove_temporary_files(self.run_dir)
            if removed:
                notes.append(f"removed {len(removed)} temporary checkpoint file(s) left by an interrupted run: "
                             + ", ".join(p.name for p in removed))
            dropped = cut_log(self.run_dir / "train_log.jsonl", self.step)
            if dropped:
                notes.append(f"train_log.jsonl: dropped {dropped} line(s) after step {self.step}, where this run "
                             "starts")
        self.monitor = Monitor(self.run_dir, tc.max_steps, self.step, self.ctx.is_main, tc.progress, tc.tensorboard)
        if self.affinity is not None and self.step and (self.run_dir / AFFINITY_FILE).is_file():
            # A resumed run keeps the measurements up to its checkpoint and takes the later ones again.
            self.affinity = AffinityLog.from_dict(json.loads((self.run_dir / AFFINITY_FILE).read_text("utf-8")),
                                                  str(self.run_dir / AFFINITY_FILE))
            self.affinity.keep_before(self.step)
        for note in notes:
            self.monitor.message(note)
        pin = self.device.type == "cuda"
        batches = self._batches()
        try:
            window_start, window_steps, window_images = time.perf_counter(), 0, 0
            while self.step < tc.max_steps:
                # ---- data: the micro-batches of one optimizer step
                micro = [next(batches).to(self.device, non_blocking=pin) for _ in range(tc.accumulate)]
                # ---- which tasks help which, every train.affinity_interval steps (outside the step)
                if self.affinity is not None and self.step and self.step % tc.affinity_interval == 0:
                    began = time.perf_counter()
                    self._measure_affinity(micro[0])
                    window_start += time.perf_counter() - began  # the logged throughput stays the training's
                # ---- forward, backward, clip, step, EMA (no host synchronisation)
                self.step_fn(micro, self.step)
                self.step += 1
                window_steps += 1
                window_images += sum(len(b) for b in micro) * self.ctx.world_size
                # ---- log (reads the device-side statistics)
                final = self.step == tc.max_steps
                if self.step % tc.log_interval == 0 or final:
                    self._log_window(window_steps, window_images, time.perf_counter() - window_start)
                    window_steps, window_images = 0, 0
                # ---- evaluate and checkpoint
                evaluate = final or (tc.eval_interval and self.step % tc.eval_interval == 0)
                if evaluate:
                    metrics = self.evaluate()
                    better = self._is_better(metrics)
                    self.save("last.pt")
                    if better:
                        self.save("best.pt")
                elif tc.checkpoint_interval and self.step % tc.checkpoint_interval == 0:
                    self.save("last.pt")
                if evaluate or self.step % tc.log_interval == 0:
                    window_start = time.perf_counter()
        finally:
            self.monitor.close()
        return self.run_dir


def train(cfg: Config, resume: str | Path | None = None, loader_fn: LoaderFn | None = None) -> Path:
    """Train a run from ``cfg`` (optionally resuming ``resume``); returns the run directory.

    Writes ``config.yaml``, ``train_log.jsonl``, TensorBoard events under ``tb/``, ``metrics.json`` (the last
    evaluation), ``last.pt`` and ``best.pt`` (and with ``train.affinity_interval``, ``affinity.json`` and
    ``affinity.png``) into ``cfg.output_dir``.

    Args:
        cfg: the run's config.
        resume: a ``last.pt`` to continue from.
        loader_fn: builds the loaders (default: :func:`perception.data.build_dataloader`).
    """
    ctx = init_distributed(cfg.train.device)
    try:
        return Trainer(cfg, loader_fn, ctx).fit(resume)
    finally:
        if ctx.distributed:
            cleanup_distributed()
