"""One multi-task forward against the single-task models' forwards, same backbone and input.

The model is the default one (``model.tasks`` of :class:`~perception.models.config.ModelConfig`: detection,
segmentation and depth). The single-task models are the same network with one head each (the baselines of the
multi-task gain); running all of them is what a user without a shared model would do to get the same answers.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics

import torch

from perception.benchmark.common import (machine_info, paired_ratio, print_table, resolve_device,
                                         time_round_robin, write_json)
from perception.models.config import ModelConfig
from perception.tasks import tasks_to_spec
from perception.utils.configurable import from_dict


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbones", nargs="+", default=["resnet18"], help="timm model names")
    parser.add_argument("--size", nargs=2, type=int, default=[512, 1024], metavar=("H", "W"), help="input size")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    parser.add_argument("--json", default="", help="write the results here")


def default_tasks() -> dict[str, dict]:
    """The default model's tasks in the mapping form of ``model.tasks`` (name -> {type, **settings})."""
    return tasks_to_spec(ModelConfig().build_tasks())


def _build(backbone: str, tasks: dict[str, dict], device, channels_last: bool):
    return build_from_config(from_dict(ModelConfig, {"tasks": tasks, "backbone": {"name": backbone}}), device,
                             channels_last)


def build_from_config(cfg: ModelConfig, device, channels_last: bool = False):
    """The network of ``cfg`` in eval mode on ``device``."""
    from perception.models import build_model

    model = build_model(cfg).to(device).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def single_task_configs(cfg: ModelConfig) -> dict[str, ModelConfig]:
    """One config per task of ``cfg``: the same network with that task's head alone (named and set as in
    ``cfg``)."""
    spec = tasks_to_spec(cfg.build_tasks())
    return {name: dataclasses.replace(cfg, tasks={name: settings}) for name, settings in spec.items()}


def measure_config(cfg: ModelConfig, size, batch: int, device: torch.device, amp: str = "none",
                   channels_last: bool = False, warmup: int = 2, repeats: int = 7) -> dict:
    """Latency of the multi-task forward of ``cfg`` and of its single-task forwards (one per task), timed in
    turn in every round (:func:`time_round_robin`): ``multi_ms`` and ``<task>_ms`` are medians over the rounds,
    ``ratio`` the median of the per-round ratios multi / sum of the singles (:func:`paired_ratio`)."""
    images = torch.randint(0, 256, (batch, 3, *size), dtype=torch.uint8, device=device).float()
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)

    def forward_fn(model):
        def run():
            with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                model(images)
        return run

    models = {"multi": build_from_config(cfg, device, channels_last)}
    models.update({task: build_from_config(single_cfg, device, channels_last)
                   for task, single_cfg in single_task_configs(cfg).items()})
    times = dict(zip(models, time_round_robin([forward_fn(m) for m in models.values()], device, warmup, repeats)))
    params = {name: sum(p.numel() for p in model.parameters()) / 1e6 for name, model in models.items()}
    del models
    singles = [name for name in times if name != "multi"]
    row = {"params_multi_M": params["multi"], "multi_ms": statistics.median(times["multi"])}
    row.update({f"{task}_ms": statistics.median(times[task]) for task in singles})
    row["single_total_ms"] = sum(row[f"{task}_ms"] for task in singles)
    row["params_single_total_M"] = sum(params[task] for task in singles)
    row["ratio"] = paired_ratio(times["multi"], [times[task] for task in singles])
    return row


def measure_backbone(backbone: str, size, batch: int, device: torch.device, amp: str, channels_last: bool,
                     warmup: int, repeats: int) -> dict:
    """Latency of the default tasks' multi-task forward and single-task forwards on ``backbone``."""
    cfg = from_dict(ModelConfig, {"tasks": default_tasks(), "backbone": {"name": backbone}})
    return {"backbone": backbone, **measure_config(cfg, size, batch, device, amp, channels_last, warmup, repeats)}


def run(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    rows = [measure_backbone(b, tuple(args.size), args.batch, device, args.amp, args.channels_last, args.warmup,
                             args.repeats) for b in args.backbones]
    info = machine_info(device)
    print(f"forward latency, batch {args.batch}, {args.size[0]}x{args.size[1]}, {device}, amp={args.amp}, "
          f"median of {args.repeats} rounds, the models in turn in each; ratio: the median of the rounds' ratios")
    print_table(rows, ["backbone", "multi_ms", *(f"{task}_ms" for task in default_tasks()), "single_total_ms",
                       "ratio", "params_multi_M", "params_single_total_M"])
    result = {"benchmark": "model", "machine": info, "settings": {k: v for k, v in vars(args).items()
                                                                 if not k.startswith("_")}, "rows": rows}
    write_json(result, args.json)
    return result
