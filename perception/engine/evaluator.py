"""Evaluation on a split: predictions of every task against the dataset's labels, metrics, delta_m.

Metrics are computed at the label resolution the dataset gives after its eval transform (each image resized to
fit ``data.image_size`` keeping its aspect ratio, then padded bottom/right to a multiple of 32 by collate). The
network's predictions are post-processed at the padded input size, so they align pixel for pixel with the
padded labels; the padding carries "no label" (255 / depth 0) and counts nowhere. Detection boxes are compared
in the same frame. Under DDP every process evaluates its shard; the sums (and the boxes) are gathered.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from perception.engine.config import EvalConfig
from perception.utils.distributed import broadcast_object, is_distributed
from perception.engine.step import AMP_DTYPES
from perception.metrics import delta_m, merge_baselines
from perception.tasks import Task

def build_metrics(tasks: Mapping[str, Task], eval_cfg: EvalConfig, device: torch.device) -> dict[str, object]:
    """One metric accumulator per task."""
    return {name: task.build_metric(eval_cfg, device) for name, task in tasks.items()}


def warn(text: str) -> None:
    """A line on stderr that does not break a progress bar."""
    from tqdm.auto import tqdm

    tqdm.write(text, file=sys.stderr)


def _to_float(x):
    """Head outputs back to float32 after autocast (post-processing wants full precision)."""
    if isinstance(x, Tensor):
        return x.float() if x.is_floating_point() else x
    if isinstance(x, dict):
        return {k: _to_float(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to_float(v) for v in x)
    return x


@torch.inference_mode()
def evaluate_model(model: nn.Module, loader: Iterable, eval_cfg: EvalConfig, device: torch.device,
                   amp: str = "none", channels_last: bool = False, num_overlays: int = 0
                   ) -> tuple[dict[str, float], list[tuple[Tensor, dict]]]:
    """Metrics of ``model`` over ``loader`` (reduced over all processes).

    Args:
        model: the plain network (not a DDP wrapper), e.g. the EMA copy.
        loader: yields :class:`perception.data.Batch`.
        eval_cfg: metric options.
        device: where to compute.
        amp: autocast dtype name for the forward.
        channels_last: NHWC images.
        num_overlays: how many (image, prediction) pairs to return for visualisation (this process's first).

    Returns:
        the flat metrics dict (same on every process) and the overlay samples.
    """
    was_training = model.training
    model.eval()
    tasks = dict(model.task_specs)
    metrics = build_metrics(tasks, eval_cfg, device)
    options = {name: task.eval_options(eval_cfg) for name, task in tasks.items()}
    amp_dtype = AMP_DTYPES[amp]
    overlays: list[tuple[Tensor, dict]] = []
    try:
        for index, batch in enumerate(loader):
            if eval_cfg.max_batches and index >= eval_cfg.max_batches:
                break
            for reason in getattr(batch, "skipped", ()) or ():
                warn(f"warning: skipped a bad evaluation sample (data.skip_bad): {reason}")
            batch = batch.to(device, non_blocking=True)
            images = batch.images.contiguous(memory_format=torch.channels_last) if channels_last else batch.images
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                outputs = model(images)
            preds = model.postprocess(_to_float(outputs), tuple(images.shape[-2:]), options)
            update_metrics(tasks, metrics, preds, batch)
            for i in range(min(num_overlays - len(overlays), len(batch))):
                overlays.append((batch.images[i].cpu(), {name: tasks[name].select(p, i) for name, p in preds.items()}))
    finally:
        model.train(was_training)
    return reduce_and_compute(metrics), overlays


def update_metrics(tasks: Mapping[str, Task], metrics: dict[str, object], preds: dict, batch) -> None:
    """Feed one batch's predictions (at the padded input size) and labels to the accumulators."""
    for name, task in tasks.items():
        if task.label in batch.targets:
            task.update_metric(metrics[name], preds[name], batch.targets[task.label], batch.has[task.label],
                               batch.meta)


def reduce_and_compute(metrics: dict[str, object]) -> dict[str, float]:
    """Reduce over processes, compute on the main one and share the result with all."""
    for metric in metrics.values():
        metric.reduce()
    out: dict[str, float] = {}
    if not is_distributed() or torch.distributed.get_rank() == 0:
        for name, metric in metrics.items():
            out.update(metric.compute(prefix=f"{name}/"))
    return broadcast_object(out)


def delta_m_metrics(eval_cfg: EvalConfig, tasks: Mapping[str, Task]) -> dict[str, int]:
    """``eval.delta_m_metrics``, or (when it is empty) every task's own metrics and directions."""
    if eval_cfg.delta_m_metrics:
        return dict(eval_cfg.delta_m_metrics)
    return {key: sign for task in tasks.values() for key, sign in task.signs().items()}


def score_weights(eval_cfg: EvalConfig, tasks: Mapping[str, Task]) -> dict[str, float]:
    """``eval.score_weights``, or (when it is empty) each task's headline metric with weight 1."""
    if eval_cfg.score_weights:
        return dict(eval_cfg.score_weights)
    return {f"{name}/{task.SCORE}": 1.0 for name, task in tasks.items() if task.SCORE}


def add_delta_m(metrics: dict[str, float], baselines: Sequence[str | os.PathLike],
                metric_signs: dict[str, int]) -> dict[str, float]:
    """``metrics`` plus ``delta_m`` (and ``delta_m/<task>``) against the single-task metrics files."""
    if not baselines:
        return metrics
    return {**metrics, **delta_m(metrics, merge_baselines(baselines), metric_signs)}


def format_metrics(metrics: dict[str, float], tasks: Mapping[str, Task] | None = None) -> str:
    """A readable table: headline metrics per task, delta_m, then per-class values.

    Args:
        metrics: flat ``<task>/<metric>`` values.
        tasks: the tasks (for their headline keys and per-class prefixes); default: every task prefix found,
            with all of its scalar metrics.
    """
    names = list(tasks) if tasks is not None else list(dict.fromkeys(
        k.split("/", 1)[0] for k in metrics if "/" in k and not k.startswith("delta_m")))
    lines = []
    for name in names:
        task = tasks[name] if tasks is not None else None
        keys = task.HEADLINE if task is not None else [k.split("/", 1)[1] for k in metrics
                                                      if k.startswith(f"{name}/") and k.count("/") == 1]
        row = [(k, metrics[f"{name}/{k}"]) for k in keys if f"{name}/{k}" in metrics]
        if row:
            lines.append(f"{name}")
            lines.extend(f"  {k:<12} {_fmt(v)}" for k, v in row)
    deltas = {k: v for k, v in metrics.items() if k.startswith("delta_m")}
    if deltas:
        lines.append("multi-task gain (%, positive = better than single-task)")
        lines.extend(f"  {k:<24} {v:+.2f}" for k, v in deltas.items())
    for name in names:
        sub = tasks[name].PER_CLASS if tasks is not None else ""
        if not sub:
            continue
        per_class = {k.split("/", 2)[2]: v for k, v in metrics.items() if k.startswith(f"{name}/{sub}/")}
        if per_class:
            lines.append(f"{name} per-class {sub}")
            width = max(len(n) for n in per_class)
            lines.extend(f"  {n:<{width}}  {_fmt(v)}" for n, v in per_class.items())
    return "\n".join(lines)


def _fmt(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"


def write_metrics(metrics: dict[str, float], path: str | os.PathLike) -> Path:
    """metrics.json, written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(metrics, indent=2, sort_keys=False), encoding="utf-8")
    os.replace(tmp, path)
    return path


def evaluate(cfg, checkpoint: str | os.PathLike, baselines: Sequence[str | os.PathLike] = (),
             output: str | os.PathLike | None = None, loader_fn=None, prefer_ema: bool = True, amp: str = "none",
             channels_last: bool = False) -> dict[str, float]:
    """Evaluate a checkpoint on the val split of ``cfg.data``; print nothing, write metrics.json.

    The network is rebuilt from the config stored in the checkpoint (so that the weights fit it); data, metric
    options and the device come from ``cfg``. The EMA weights are used when the checkpoint has them. The forward
    runs in fp32 unless ``amp`` says otherwise (the training config's ``train.amp`` is not used).

    Args:
        cfg: :class:`perception.config.Config` (``data``, ``eval``, ``train.device``).
        checkpoint: a ``last.pt``/``best.pt``.
        baselines: single-task metrics.json files (added to ``cfg.eval.baselines``); with them ``delta_m``.
        output: where to write metrics.json (default: next to the checkpoint); under torchrun rank 0 writes.
        loader_fn: builds the loader (default: :func:`perception.data.build_dataloader`).
        prefer_ema: use the EMA weights when present.
        amp: ``none`` (fp32), ``bf16`` or ``fp16`` (CUDA only) autocast of the forward.
        channels_last: NHWC model and images.

    Returns:
        the metrics (the stable keys of the design, per-class values and ``delta_m`` when baselines are given).

    Raises:
        FileNotFoundError, CheckpointError: the checkpoint is missing, unreadable or does not fit its own config.
        ConfigError: the checkpoint's classes (count or names) are not those of the val data; nothing is evaluated.
        ValueError: ``amp`` is unknown, or ``fp16`` without CUDA.
    """
    from perception.engine.model_data import check_loaders
    from perception.inference.loading import load_model
    from perception.utils.distributed import init_distributed

    if amp not in AMP_DTYPES:
        raise ValueError(f"amp: got {amp!r}, expected one of {', '.join(AMP_DTYPES)}")
    ctx = init_distributed(cfg.train.device)
    if amp == "fp16" and ctx.device.type != "cuda":
        raise ValueError(f"amp=fp16 needs CUDA, and the device is {ctx.device}; use bf16 or none (fp32)")
    loaded = load_model(checkpoint, prefer_ema=prefer_ema)  # the toolkit's one checkpoint -> network loader
    model = loaded.model
    if loader_fn is None:
        from perception.data import build_dataloader as loader_fn
    labels = list(dict.fromkeys(task.label for task in model.task_specs.values()))
    loader = loader_fn(cfg.data, "val", labels, distributed=ctx.distributed, seed=cfg.seed)
    check_loaders(loaded.model_config, model.task_specs, {"data.val": loader}, f"checkpoint {str(checkpoint)!r}",
                  "Evaluate it on data with its classes, or evaluate a checkpoint trained on these")
    model = model.to(ctx.device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    metrics, _ = evaluate_model(model, loader, cfg.eval, ctx.device, amp, channels_last)
    metrics = add_delta_m(metrics, [*cfg.eval.baselines, *baselines],
                          delta_m_metrics(cfg.eval, model.task_specs))
    metrics["step"] = int(loaded.step or 0)
    if ctx.is_main:
        write_metrics(metrics, output or Path(checkpoint).with_name("metrics.json"))
    return metrics
