"""Cost of the multi-task methods at one backbone and input: the sharing modes' parameter counts and latency, and
the time of one training step under each weighting / gradient method, as ratios to hard sharing and equal weights.

    python tools/benchmark.py methods --backbone resnet18 --size 192 384 --batch 2 --threads 2
    python tools/benchmark.py methods --config configs/synthetic_driving.yaml --size 128 256   # a config's model

A training step here is forward + losses + ``weighting.backward`` (the part a method changes), on a batch of
synthetic driving scenes; the optimizer step is the same for every method and left out.
"""
from __future__ import annotations

import argparse

import torch

from perception.benchmark.common import machine_info, print_table, resolve_device, time_fn, write_json
from perception.data.batch import Batch, collate
from perception.models.config import ModelConfig
from perception.models.sharing import PENALTY_KEY
from perception.mtl import WEIGHTING_METHODS, WeightingConfig, build_weighting
from perception.utils.configurable import from_dict

SHARING_MODES = ("hard", "soft", "cross_stitch", "mtan", "adapters")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="", help="take the model section (tasks, backbone, neck, heads) from "
                        "this config file; default: the default model")
    parser.add_argument("--backbone", default="", help="timm model name, the same for every mode (default: the "
                        "config's, or resnet18)")
    parser.add_argument("--size", nargs=2, type=int, default=[192, 384], metavar=("H", "W"), help="input size")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--sharing", nargs="*", default=list(SHARING_MODES), choices=SHARING_MODES,
                        help="sharing modes to measure (none: skip the table)")
    parser.add_argument("--methods", nargs="*", default=[m for m in WEIGHTING_METHODS if m != "fixed"],
                        choices=WEIGHTING_METHODS)
    parser.add_argument("--forward-only", action="store_true",
                        help="sharing table: measure the inference forward only (no training step)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    parser.add_argument("--json", default="", help="write the results here")


def model_config(config: str, backbone: str) -> ModelConfig:
    """The model section of ``config`` (default: the default model), with ``backbone`` (if given), untrained."""
    if config:
        from perception.config import load_config

        cfg = load_config(config, ["model.backbone.pretrained=false"]).model
    else:
        cfg = from_dict(ModelConfig, {"backbone": {"name": "resnet18"}})
    if backbone:
        cfg.backbone.name = backbone
    return cfg


def synthetic_batch(batch: int, size: tuple[int, int], device: torch.device,
                    cfg: ModelConfig | None = None) -> Batch:
    """``batch`` synthetic driving scenes of ``size`` with the labels of ``cfg``'s tasks (default: the default
    model's)."""
    from perception.data.synthetic import generate_scene

    samples = [generate_scene(i, "val", 0, size[0], size[1]) for i in range(batch)]
    labels = list(dict.fromkeys(task.label for task in (cfg or ModelConfig()).build_tasks().values()))
    return collate(samples, labels=labels).to(device)


def build(cfg: ModelConfig | str, sharing: str, device: torch.device) -> torch.nn.Module:
    """The model of ``cfg`` (or the default model with this backbone name) in a sharing mode."""
    import copy

    from perception.models import build_model

    cfg = model_config("", cfg) if isinstance(cfg, str) else copy.deepcopy(cfg)
    cfg.sharing = sharing
    cfg.validate()
    return build_model(cfg).to(device)


def forward_gflops(model: torch.nn.Module, images: torch.Tensor) -> float:
    """GFLOPs of one inference forward (torch's FLOP counter: convolutions and matrix products), independent of
    the machine's load."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(images)
    return counter.get_total_flops() / 1e9


def _count(params) -> float:
    return sum(p.numel() for p in params) / 1e6


def training_step_fn(model, weighting, batch: Batch):
    """forward + losses + the method's backward (what differs between methods); gradients are cleared each time."""
    shared = weighting.shared_parameters_fn(model)
    labelled = batch.present()
    present = {name: labelled.get(task.label, False) for name, task in model.task_specs.items()}

    def run():
        model.zero_grad(set_to_none=True)
        weighting.zero_grad(set_to_none=True)
        if weighting.needs_features:
            outputs, features = model(batch.images, return_features=True)
        else:
            outputs, features = model(batch.images), None
        task_losses, components = model.compute_losses(outputs, batch)
        weighting.backward(task_losses, shared, present=present, shared_features=features,
                           extra=components.get(PENALTY_KEY))
    return run


def measure_sharing(args, batch: Batch, device: torch.device) -> list[dict]:
    rows = []
    for mode in args.sharing:
        torch.manual_seed(0)
        model = build(args._model, mode, device)
        weighting = build_weighting(WeightingConfig(method="equal"), model.tasks).to(device)

        def forward():
            with torch.inference_mode():
                model(batch.images)

        gflops = forward_gflops(model, batch.images)
        forward_times = time_fn(forward, device, args.warmup, args.repeats)
        model.train()
        step_times = ({"median_ms": float("nan"), "min_ms": float("nan")} if args.forward_only else
                      time_fn(training_step_fn(model, weighting, batch), device, args.warmup, args.repeats))
        # The minimum too: on a machine shared with other work it is the steadier of the two.
        rows.append({"sharing": mode, "params_M": _count(model.parameters()),
                     "shared_params_M": _count(model.shared_parameters()), "forward_gflops": gflops,
                     "forward_ms": forward_times["median_ms"],
                     "forward_min_ms": forward_times["min_ms"], "train_step_ms": step_times["median_ms"],
                     "train_step_min_ms": step_times["min_ms"]})
        del model
    base = next((r for r in rows if r["sharing"] == "hard"), rows[0])
    for r in rows:
        r["forward_ratio"] = r["forward_ms"] / base["forward_ms"]
        r["gflops_ratio"] = r["forward_gflops"] / base["forward_gflops"]
        r["step_ratio"] = r["train_step_ms"] / base["train_step_ms"]
    return rows


def measure_methods(args, batch: Batch, device: torch.device) -> list[dict]:
    torch.manual_seed(0)
    model = build(args._model, "hard", device).train()
    rows = []
    for method in args.methods:
        weighting = build_weighting(WeightingConfig(method=method), model.tasks).to(device)
        step_ms = time_fn(training_step_fn(model, weighting, batch), device, args.warmup, args.repeats)["median_ms"]
        rows.append({"method": method, "train_step_ms": step_ms,
                     "per_task_backward": "shared features" if weighting.needs_features else
                     ("shared params" if weighting.manual_grad_sync else "-")})
    base = next((r for r in rows if r["method"] == "equal"), rows[0])
    for r in rows:
        r["ratio"] = r["train_step_ms"] / base["train_step_ms"]
    return rows


def run(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    args._model = model_config(args.config, args.backbone)
    batch = synthetic_batch(args.batch, tuple(args.size), device, args._model)
    header = (f"{args.config or 'default model'}, {args._model.backbone.name}, batch {args.batch}, "
              f"{args.size[0]}x{args.size[1]}, {device}, median of {args.repeats}")
    sharing = measure_sharing(args, batch, device) if args.sharing else []
    if sharing:
        print(f"sharing modes: parameters, inference forward and training step (forward + backward); {header}")
        print_table(sharing, ["sharing", "params_M", "shared_params_M", "forward_gflops", "gflops_ratio",
                              "forward_ms", "forward_min_ms", "forward_ratio", "train_step_ms", "train_step_min_ms",
                              "step_ratio"])
    methods = measure_methods(args, batch, device) if args.methods else []
    if methods:
        print(f"\nweighting methods: training step (forward + losses + method backward), hard sharing; {header}")
        print_table(methods, ["method", "train_step_ms", "ratio", "per_task_backward"])
    result = {"benchmark": "methods", "machine": machine_info(device),
              "settings": {k: v for k, v in vars(args).items() if not k.startswith("_")},
              "sharing": sharing, "methods": methods}
    write_json(result, args.json)
    return result
