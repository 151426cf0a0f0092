"""Training throughput (images/s) of a config's full step, in variants: fp32, AMP, AMP + channels_last, + compile.

Each variant builds the model, weighting, optimiser and :class:`perception.engine.step.TrainStep` from the config
and times whole optimizer steps (forward, task losses, weighting, backward, clip, fused step) on one fixed batch of
synthetic driving scenes, so data loading is left out. The scenes carry every task's labels that they render; a
task with fewer classes than the scenes (NYUv2's 13 against Cityscapes' 19) is timed with the scenes' class count,
which changes only its last layer. Ratios are against the first variant, measured in the same process.

``model_tflops`` is the model-FLOP rate of a variant: 3 x the forward's FLOPs on the batch (the forward once, the
backward twice: the usual convention of model-FLOP utilisation, whatever extra passes a gradient method makes;
FLOPs counted by ``torch.utils.flop_counter`` as in the other benchmarks) per second of step. With
``--peak-tflops`` (the device's dense peak for the variant's precision, from its datasheet) the ``mfu`` column is
that rate over the peak.

    python tools/benchmark.py train --config configs/synthetic_driving.yaml                       # CPU
    python tools/benchmark.py train --config configs/cityscapes.yaml --device cuda \\
        --variants fp32 amp amp_cl amp_cl_compile
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Mapping, Sequence

import torch

from perception.benchmark.common import machine_info, print_table, resolve_device, time_fn, write_json
from perception.models.config import ModelConfig
from perception.tasks import Task, replace_settings, tasks_to_spec

# variant -> (amp, channels_last, compile); "amp" is bf16 on CPU and fp16 (with the GradScaler) on CUDA.
VARIANTS = {
    "fp32": ("none", False, False),
    "amp": ("auto", False, False),
    "amp_cl": ("auto", True, False),
    "amp_cl_compile": ("auto", True, True),
    "bf16": ("bf16", False, False),
    "fp16": ("fp16", False, False),
    "channels_last": ("none", True, False),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="configs/synthetic_driving.yaml")
    parser.add_argument("--variants", nargs="+", default=["fp32", "amp", "amp_cl"], choices=sorted(VARIANTS))
    parser.add_argument("--batch", type=int, default=0, help="images per step (0: the config's data.batch_size)")
    parser.add_argument("--size", nargs=2, type=int, default=None, metavar=("H", "W"),
                        help="input size (default: the config's data.image_size)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    parser.add_argument("--peak-tflops", type=float, default=0.0,
                        help="the device's peak dense TFLOP/s for the mfu column (0: no mfu)")
    parser.add_argument("--json", default="", help="write the results here")
    parser.add_argument("overrides", nargs="*", help="dotted key=value config overrides")


def synthetic_batch(batch: int, size: tuple[int, int], tasks: Mapping[str, Task], seed: int = 0):
    """A Batch of ``batch`` synthetic driving scenes of ``size`` with the labels of ``tasks`` that they carry."""
    from perception.data.batch import collate, sample_labels
    from perception.data.synthetic import generate_scene

    samples = [generate_scene(i, "train", seed, size[0], size[1]) for i in range(batch)]
    carried = set(sample_labels(samples[0]))
    labels = [label for label in dict.fromkeys(t.label for t in tasks.values()) if label in carried]
    return collate(samples, labels=labels)


def fit_classes(model_cfg: ModelConfig, classes: Mapping[str, Sequence[str]]) -> tuple[ModelConfig, list[str]]:
    """``model_cfg`` with each classifying task's ``num_classes`` raised to the scenes' classes of its label
    (``classes``: label -> names), so that every scene label is a valid target; and the tasks changed."""
    tasks = model_cfg.build_tasks()
    changed = []
    for name, task in tasks.items():
        need = len(classes.get(task.label, ()))
        if task.num_classes is not None and task.num_classes < need:
            names = {"class_names": []} if hasattr(task.cfg, "class_names") else {}
            tasks[name] = replace_settings(task, num_classes=need, **names)
            changed.append(f"{name}: {task.num_classes} -> {need} classes")
    return (dataclasses.replace(model_cfg, tasks=tasks_to_spec(tasks)) if changed else model_cfg), changed


def measure_variant(cfg, variant: str, batch, device: torch.device, warmup: int, repeats: int) -> dict:
    """Images/s of full training steps under one variant."""
    from perception.engine.optim import build_lr_scheduler, build_optimizer, param_groups
    from perception.engine.step import TrainStep, make_grad_scaler
    from perception.models import build_model
    from perception.mtl import build_task_scheduler, build_weighting

    amp, channels_last, compile_ = VARIANTS[variant]
    if amp == "auto":
        amp = "fp16" if device.type == "cuda" else "bf16"
    torch.manual_seed(0)
    model = build_model(cfg.model).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    weighting = build_weighting(cfg.weighting, model.tasks).to(device)
    optimizer = build_optimizer(param_groups(model, weighting, cfg.train.weight_decay), cfg.train)
    forward = torch.compile(model) if compile_ else model
    step = TrainStep(forward, model, weighting, optimizer, build_lr_scheduler(optimizer, cfg.train),
                     make_grad_scaler(amp, device), build_task_scheduler(cfg.weighting.task_schedule, model.tasks),
                     device, amp, cfg.train.grad_clip, channels_last)
    counter = iter(range(10 ** 9))
    timing = time_fn(lambda: step([batch], next(counter)), device, warmup, repeats)
    return {"variant": variant, "amp": amp, "channels_last": channels_last, "compile": compile_,
            "step_ms": timing["median_ms"], "images_per_s": len(batch) / timing["median_ms"] * 1000.0}


def run(args: argparse.Namespace) -> dict:
    from perception.config import load_config
    from perception.data.datasets.synthetic import SyntheticDrivingDataset

    if args.peak_tflops < 0:
        raise ValueError(f"--peak-tflops: got {args.peak_tflops}, expected a positive number (or 0: no mfu)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cfg = load_config(args.config, ["model.backbone.pretrained=false", *args.overrides])
    size = tuple(args.size or cfg.data.image_size)
    model_cfg, changed = fit_classes(cfg.model, SyntheticDrivingDataset(split="val", num_samples=1).classes)
    if changed:
        print(f"timed with the synthetic scenes' classes: {'; '.join(changed)}")
    cfg = dataclasses.replace(cfg, model=model_cfg)
    batch = synthetic_batch(args.batch or cfg.data.batch_size, size, model_cfg.build_tasks()).to(device)
    from perception.benchmark.methods import forward_gflops
    from perception.models import build_model

    step_gflops = 3.0 * forward_gflops(build_model(model_cfg).to(device), batch.images)
    rows = []
    for variant in args.variants:
        if VARIANTS[variant][0] == "fp16" and device.type != "cuda":
            print(f"skipping {variant}: fp16 training needs CUDA")
            continue
        rows.append(measure_variant(cfg, variant, batch, device, args.warmup, args.repeats))
    for row in rows:
        row["ratio"] = row["images_per_s"] / rows[0]["images_per_s"]
        row["model_tflops"] = step_gflops / row["step_ms"]  # GFLOP per ms = TFLOP per s
        if args.peak_tflops:
            row["mfu"] = row["model_tflops"] / args.peak_tflops
    print(f"training step, {args.config}, batch {len(batch)}, {size[0]}x{size[1]}, {device}, median of "
          f"{args.repeats}")
    print_table(rows, ["variant", "amp", "channels_last", "compile", "step_ms", "images_per_s", "ratio",
                       "model_tflops", *(["mfu"] if args.peak_tflops else [])])
    result = {"benchmark": "train", "machine": machine_info(device), "step_gflops": step_gflops,
              "settings": {k: v for k, v in vars(args).items() if not k.startswith("_")}, "rows": rows}
    write_json(result, args.json)
    return result
