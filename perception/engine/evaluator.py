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
from typing import Iterable, Sequence

import torch
from torch import Tensor, nn

from perception.engine.config import EvalConfig
from perception.engine.distributed import broadcast_object, is_distributed
from perception.engine.step import AMP_DTYPES
from perception.metrics import DepthMetric, DetectionMetric, SegmentationMetric, delta_m, merge_baselines
from perception.models.config import ModelConfig

# Keys printed first, per task, in this order.
HEADLINE = {
    "detection": ("mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large"),
    "segmentation": ("mIoU", "pixel_acc", "mAcc"),
    "depth": ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog", "delta1", "delta2", "delta3", "abs_err",
              "rel_err"),
}


def build_metrics(tasks: Iterable[str], model_cfg: ModelConfig, eval_cfg: EvalConfig, device: torch.device
                  ) -> dict[str, object]:
    """One metric accumulator per task."""
    metrics: dict[str, object] = {}
    for task in tasks:
        if task == "detection":
            d = model_cfg.detection
            metrics[task] = DetectionMetric(d.num_classes, d.class_names)
        elif task == "segmentation":
            s = model_cfg.segmentation
            metrics[task] = SegmentationMetric(s.num_classes, s.class_names, s.ignore_index, device)
        elif task == "depth":
            metrics[task] = DepthMetric(eval_cfg.min_depth, eval_cfg.depth_cap, eval_cfg.eigen_crop,
                                        eval_cfg.depth_average, device)
    return metrics


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


def _image_sizes(batch) -> list[tuple[int, int]] | None:
    """Each image's (h, w) before padding, when the dataset recorded it in ``meta``."""
    sizes = []
    for meta in batch.meta:
        size = meta.get("image_size") or meta.get("size")
        if size is None:
            return None
        sizes.append((int(size[0]), int(size[1])))
    return sizes


@torch.inference_mode()
def evaluate_model(model: nn.Module, loader: Iterable, model_cfg: ModelConfig, eval_cfg: EvalConfig,
                   device: torch.device, amp: str = "none", channels_last: bool = False, num_overlays: int = 0
                   ) -> tuple[dict[str, float], list[tuple[Tensor, dict]]]:
    """Metrics of ``model`` over ``loader`` (reduced over all processes).

    Args:
        model: the plain network (not a DDP wrapper), e.g. the EMA copy.
        loader: yields :class:`perception.data.Batch`.
        model_cfg: for class counts and names.
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
    tasks = list(model.tasks)
    metrics = build_metrics(tasks, model_cfg, eval_cfg, device)
    amp_dtype = AMP_DTYPES[amp]
    det_head = model.heads["detection"] if "detection" in tasks else None
    saved_thresh = getattr(det_head, "score_thresh", None)
    if det_head is not None and eval_cfg.detection_score_thresh is not None:
        det_head.score_thresh = eval_cfg.detection_score_thresh
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
            preds = model.postprocess(_to_float(outputs), tuple(images.shape[-2:]))
            update_metrics(metrics, preds, batch)
            for i in range(min(num_overlays - len(overlays), len(batch))):
                overlays.append((batch.images[i].cpu(), _prediction_of(preds, i)))
    finally:
        if det_head is not None:
            det_head.score_thresh = saved_thresh
        model.train(was_training)
    return reduce_and_compute(metrics), overlays


def update_metrics(metrics: dict[str, object], preds: dict, batch) -> None:
    """Feed one batch's predictions (at the padded input size) and labels to the accumulators."""
    if "detection" in metrics:
        metrics["detection"].update(preds["detection"], batch.boxes, batch.labels, batch.has["detection"],
                                    batch.crowd_boxes, batch.crowd_labels)
    if "segmentation" in metrics:
        metrics["segmentation"].update(preds["segmentation"], batch.semantic)
    if "depth" in metrics:
        metrics["depth"].update(preds["depth"], batch.depth, _image_sizes(batch))


def reduce_and_compute(metrics: dict[str, object]) -> dict[str, float]:
    """Reduce over processes, compute on the main one and share the result with all."""
    for metric in metrics.values():
        metric.reduce()
    out: dict[str, float] = {}
    if not is_distributed() or torch.distributed.get_rank() == 0:
        for metric in metrics.values():
            out.update(metric.compute())
    return broadcast_object(out)


def _prediction_of(preds: dict, i: int) -> dict:
    out = {}
    for task, value in preds.items():
        out[task] = ({k: v.cpu() for k, v in value[i].items()} if task == "detection" else value[i].cpu())
    return out


def add_delta_m(metrics: dict[str, float], baselines: Sequence[str | os.PathLike],
                metric_signs: dict[str, int]) -> dict[str, float]:
    """``metrics`` plus ``delta_m`` (and ``delta_m/<task>``) against the single-task metrics files."""
    if not baselines:
        return metrics
    return {**metrics, **delta_m(metrics, merge_baselines(baselines), metric_signs)}


def format_metrics(metrics: dict[str, float]) -> str:
    """A readable table: headline metrics per task, delta_m, then per-class values."""
    lines = []
    for task, keys in HEADLINE.items():
        row = [(k, metrics[f"{task}/{k}"]) for k in keys if f"{task}/{k}" in metrics]
        if row:
            lines.append(f"{task}")
            lines.extend(f"  {k:<12} {_fmt(v)}" for k, v in row)
    deltas = {k: v for k, v in metrics.items() if k.startswith("delta_m")}
    if deltas:
        lines.append("multi-task gain (%, positive = better than single-task)")
        lines.extend(f"  {k:<24} {v:+.2f}" for k, v in deltas.items())
    for task, sub in (("detection", "AP"), ("segmentation", "iou")):
        per_class = {k.split("/", 2)[2]: v for k, v in metrics.items() if k.startswith(f"{task}/{sub}/")}
        if per_class:
            lines.append(f"{task} per-class {sub}")
            width = max(len(n) for n in per_class)
            lines.extend(f"  {name:<{width}}  {_fmt(v)}" for name, v in per_class.items())
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
    from perception.config import config_from_dict
    from perception.engine.checkpoint import CheckpointError, load_checkpoint
    from perception.engine.distributed import init_distributed
    from perception.engine.model_data import check_loaders
    from perception.inference.loading import load_weights, select_weights
    from perception.models import build_model

    if amp not in AMP_DTYPES:
        raise ValueError(f"amp: got {amp!r}, expected one of {', '.join(AMP_DTYPES)}")
    ctx = init_distributed(cfg.train.device)
    if amp == "fp16" and ctx.device.type != "cuda":
        raise ValueError(f"amp=fp16 needs CUDA, and the device is {ctx.device}; use bf16 or none (fp32)")
    state = load_checkpoint(checkpoint, map_location=ctx.device)
    try:
        model_cfg = config_from_dict(state["config"]).model
    except ValueError as err:  # ConfigError: a config this version cannot read
        raise CheckpointError(f"checkpoint {str(checkpoint)!r}: its config is not valid for this version of "
                              f"perception ({err})") from None
    model_cfg.backbone.pretrained = False  # every weight comes from the checkpoint: no download, no file
    if loader_fn is None:
        from perception.data import build_dataloader as loader_fn
    loader = loader_fn(cfg.data, "val", list(model_cfg.tasks), distributed=ctx.distributed, seed=cfg.seed)
    check_loaders(model_cfg, model_cfg.tasks, {"data.val": loader}, f"checkpoint {str(checkpoint)!r}",
                  "Evaluate it on data with its classes, or evaluate a checkpoint trained on these")
    model = build_model(model_cfg)
    weights, which = select_weights(state, prefer_ema)
    load_weights(model, weights, f"checkpoint {str(checkpoint)!r} ({which} weights)", partial=False)
    model = model.to(ctx.device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    metrics, _ = evaluate_model(model, loader, model_cfg, cfg.eval, ctx.device, amp, channels_last)
    metrics = add_delta_m(metrics, [*cfg.eval.baselines, *baselines], cfg.eval.delta_m_metrics)
    metrics["step"] = int(state.get("step", 0))
    if ctx.is_main:
        write_metrics(metrics, output or Path(checkpoint).with_name("metrics.json"))
    return metrics
