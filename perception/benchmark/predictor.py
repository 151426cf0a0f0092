"""The predictor end to end (pre + forward + post, numpy in and out): the multi-task predictor against the
single-task predictors a user would otherwise run (one per task), same backbone, input size and batch.

    python tools/benchmark.py predictor --backbones resnet18 --sizes 512x1024 256x512 --batches 1 4

Each image is a synthetic street scene of the network size (``--image-size`` for camera frames of another size,
which adds the resize); weights are random (``--checkpoint`` for a trained network, whose single-task
baselines are its own heads run alone; otherwise the default ``model.tasks``). A random detection head scores
every location below the default threshold, which would make its post-processing free: ``--score-thresh``
(default 0.05, given to every task that has a score threshold) lets candidates through so that top-k and NMS are
part of the cost.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from perception.benchmark.common import machine_info, print_table, resolve_device, time_fn, write_json
from perception.benchmark.model import default_tasks
from perception.models.config import ModelConfig
from perception.utils.configurable import from_dict


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbones", nargs="+", default=["resnet18"], help="timm model names")
    parser.add_argument("--sizes", nargs="+", default=["512x1024", "256x512"], help="network sizes HxW")
    parser.add_argument("--batches", nargs="+", type=int, default=[1], help="images per network call")
    parser.add_argument("--image-size", default="", help="input image size HxW (default: the network size)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", action="store_true", help="autocast (float16 on CUDA, bfloat16 on the CPU)")
    parser.add_argument("--score-thresh", type=float, default=0.05)
    parser.add_argument("--checkpoint", default="", help="a trained checkpoint instead of random weights")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    parser.add_argument("--json", default="", help="write the results here")


def parse_size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size {text!r}: expected HxW, e.g. 512x1024") from None
    return height, width


def _predictor(backbone: str, tasks, size, device, amp: bool, score_thresh: float, checkpoint: str):
    from perception.inference.predictor import Predictor
    from perception.models import build_model

    if checkpoint:
        return Predictor.from_checkpoint(checkpoint, device=device, tasks=tasks, half=amp, image_size=size,
                                         score_thresh=score_thresh)
    cfg = from_dict(ModelConfig, {"tasks": {t: default_tasks()[t] for t in tasks}, "backbone": {"name": backbone}})
    torch.manual_seed(0)
    return Predictor(build_model(cfg), size, device=device, half=amp, score_thresh=score_thresh)


def _scene(size: tuple[int, int]) -> np.ndarray:
    try:
        from perception.data.synthetic import generate_scene

        return generate_scene(index=0, split="val", height=size[0], width=size[1])["image"]
    except ImportError:  # the generator is optional here: a smooth random picture is as costly to process
        rng = np.random.default_rng(0)
        return np.clip(rng.normal(128, 40, (*size, 3)), 0, 255).astype(np.uint8)


def measure(backbone: str, size, batch: int, image: np.ndarray, device: torch.device, args) -> dict:
    """Per-image latency of the multi-task predictor and of one single-task predictor per task, with their
    ratio."""
    images = [image] * batch
    row = {"backbone": backbone, "size": f"{size[0]}x{size[1]}", "batch": batch}

    def timed(predictor) -> tuple[float, dict]:
        stats = time_fn(lambda: predictor.predict_batch(images), device, args.warmup, args.repeats)
        parts = predictor.predict_batch(images)[0].timings
        return stats["median_ms"] / batch, parts

    tasks = list(default_tasks())
    multi = _predictor(backbone, tasks, size, device, args.amp, args.score_thresh, args.checkpoint)
    if args.checkpoint:  # the checkpoint's network, whatever --backbones says
        row["backbone"] = getattr(getattr(multi.model, "backbone", None), "name", backbone)
    row["multi_ms"], parts = timed(multi)
    row.update({f"multi_{k}_ms": parts[k] for k in ("pre", "forward", "post")})
    row["multi_img_per_s"] = 1000.0 / row["multi_ms"]
    del multi
    total = 0.0
    for task in tasks:
        single = _predictor(backbone, [task], size, device, args.amp, args.score_thresh, args.checkpoint)
        row[f"{task}_ms"], _ = timed(single)
        total += row[f"{task}_ms"]
        del single
    row["single_total_ms"] = total
    row["ratio"] = row["multi_ms"] / total
    return row


def run(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    rows = []
    for backbone in args.backbones:
        for text in args.sizes:
            size = parse_size(text)
            image = _scene(parse_size(args.image_size) if args.image_size else size)
            for batch in args.batches:
                rows.append(measure(backbone, size, batch, image, device, args))
    print(f"predictor end to end (pre + forward + post), ms per image, {device}, amp={args.amp}, "
          f"median of {args.repeats}; ratio = multi-task / sum of the three single-task predictors")
    print_table(rows, ["backbone", "size", "batch", "multi_ms", "multi_pre_ms", "multi_forward_ms", "multi_post_ms",
                       *(f"{task}_ms" for task in default_tasks()), "single_total_ms", "ratio",
                       "multi_img_per_s"])
    result = {"benchmark": "predictor", "machine": machine_info(device),
              "settings": {k: v for k, v in vars(args).items() if not k.startswith("_")}, "rows": rows}
    write_json(result, args.json)
    return result
