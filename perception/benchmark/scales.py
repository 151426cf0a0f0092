"""A model table in the style of Ultralytics' and timm's: one row per model variant, all measured in one run.

    python tools/benchmark.py scales                                   # the model.scale presets n, s, m, l
    python tools/benchmark.py scales --variants "demo:" \\
        "light64:model.backbone.name=mobilenetv3_large_100,model.neck.channels=64,model.detection.num_convs=2"

A variant is ``NAME:KEY=VALUE,KEY=VALUE`` (the ``key=value`` overrides of ``tools/train.py``, applied to
``--config``; commas inside brackets stay, e.g. ``model.tasks=[detection,depth]``); ``NAME`` alone is the config
as it is. Per variant, with random weights (the forward's cost does not depend on them; post-processing
costs somewhat more than with trained ones: more boxes reach the NMS, more pixels lie on class boundaries):

- ``params_M``: parameters of the multi-task network, ``sum(p.numel())``, in millions;
- ``gflops_640``: FLOPs of one 640x640 forward, counted by ``torch.utils.flop_counter.FlopCounterMode``: 2 per
  multiply-add of the convolutions and matrix products (the convention of Ultralytics' GFLOPs, which counts
  2 x thop's multiply-adds); element-wise ops, norms and resizes are not counted;
- ``eager_ms`` / ``onnx_ms``: CPU milliseconds per image end to end through the :class:`Predictor` (fit and pad,
  forward, every task's post-processing to the photo's own size) in PyTorch eager and on onnxruntime
  (``Predictor.from_onnx`` of a file exported with ``perception.inference.export`` into a temporary folder),
  median of ``--repeats`` after ``--warmup``, on one photo (``--image``, or a generated street scene of
  ``--photo`` size) fitted into ``--image-size``; onnxruntime gets as many threads as torch;
- ``multi_vs_single``: the multi-task forward's time over the sum of its own single-task models' forwards
  (``perception.benchmark.model``: timed in turn in every round, the median of ``--ratio-rounds`` rounds'
  ratios), at the padded size the photo is fitted into, in the channels-last layout the Predictor feeds the network.

The table is printed and written as markdown (``--markdown``, ready for the README) and JSON (``--json``).
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from perception.benchmark.common import (machine_info, markdown_table, print_table, time_fn, write_json,
                                         write_text)
from perception.benchmark.predictor import parse_size

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = ROOT / "configs" / "synthetic_driving_scales.yaml"  # the architecture left to model.scale
SCALES = ("n", "s", "m", "l")
BACKENDS = ("eager", "onnx")

COLUMNS = [("variant", "model"), ("backbone", "backbone"), ("params_M", "params (M)"),
           ("gflops_640", "GFLOPs 640"), ("eager_ms", "CPU eager (ms)"), ("onnx_ms", "CPU ONNX (ms)"),
           ("multi_vs_single", "multi / 3 single")]


def default_variants() -> list[str]:
    """The rows by default: the scales n, s, m, l."""
    return [f"{s}:model.scale={s}" for s in SCALES]


def add_variant_arguments(parser: argparse.ArgumentParser) -> None:
    """The options ``scales`` and ``peers`` share: which networks, which photo, how timed."""
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="the base config of every variant")
    parser.add_argument("--variants", nargs="+", default=None, metavar="NAME:KEY=VALUE,...",
                        help="the rows (default: the model.scale presets n s m l; e.g. "
                             "'demo:' for the config as it is, 'wide:model.neck.channels=128,...')")
    parser.add_argument("--image-size", type=int, nargs=2, default=[640, 640], metavar=("H", "W"),
                        help="network size the photo is fitted into")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--ratio-rounds", type=int, default=15,
                        help="timed rounds of the forward ratio (its median over rounds; at 7 it moved by about "
                             "+-0.02 between runs on a 2-core VM)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads of torch and onnxruntime (0: torch's)")
    parser.add_argument("--weights", nargs="+", default=[], metavar="NAME=CHECKPOINT",
                        help="trained weights for a variant (its checkpoint must hold the variant's network): "
                             "post-processing then costs what it costs in use; random weights otherwise")
    parser.add_argument("--json", default="", help="write the results here")
    parser.add_argument("--markdown", default="", help="write the markdown table here")


def parse_weights(items: Sequence[str], variants: Sequence["Variant"]) -> dict[str, str]:
    """``["n=runs/n/best.pt", ...]`` -> ``{"n": "runs/n/best.pt"}``, each naming a variant."""
    names = [v.name for v in variants]
    weights = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or name not in names or not path:
            raise ValueError(f"--weights {item!r}: expected NAME=CHECKPOINT with NAME one of {', '.join(names)}")
        weights[name] = path
    return weights


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_variant_arguments(parser)
    parser.add_argument("--image", default="", help="the photo (default: a generated street scene of --photo)")
    parser.add_argument("--photo", default="1080x810", help="size HxW of the generated photo")
    parser.add_argument("--no-ratio", action="store_true", help="skip the multi- vs single-task forward column")


# ------------------------------------------------------------------------------------------------- variants
@dataclasses.dataclass
class Variant:
    """One row: a name and the overrides applied to the base config."""

    name: str
    overrides: list[str]


def split_overrides(text: str) -> list[str]:
    """``a=1,b=[x,y]`` -> ``["a=1", "b=[x,y]"]``: commas split, except inside brackets or braces."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char in "[{"
        depth -= char in "]}"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def parse_variant(text: str) -> Variant:
    """``NAME:KEY=VALUE,...`` (or ``NAME`` alone) -> :class:`Variant`."""
    name, _, overrides = text.partition(":")
    if not name.strip():
        raise ValueError(f"variant {text!r}: expected NAME:KEY=VALUE,KEY=VALUE (e.g. n:model.scale=n)")
    items = split_overrides(overrides)
    for item in items:
        if "=" not in item:
            raise ValueError(f"variant {text!r}: override {item!r} is not KEY=VALUE")
    return Variant(name.strip(), items)


def variant_config(config: str, variant: Variant):
    """The full :class:`~perception.config.Config` of a variant."""
    from perception.config import load_config

    return load_config(config, variant.overrides)


# ----------------------------------------------------------------------------------------------- measuring
def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def gflops(model: torch.nn.Module, size: Sequence[int] = (640, 640)) -> float:
    """FLOPs of one forward of a ``size`` input, in G: 2 per multiply-add of convolutions and matrix products."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(torch.zeros(1, 3, *size))
    return counter.get_total_flops() / 1e9


def read_photo(image: str, photo: str) -> np.ndarray:
    """The photo the rows are timed on: ``image`` read from disk, or a generated street scene of size ``photo``."""
    if image:
        from perception.inference.images import read_image

        return read_image(image)
    from perception.data.synthetic import generate_scene

    height, width = parse_size(photo)
    return generate_scene(index=0, split="val", height=height, width=width)["image"]


def time_predictors(model: torch.nn.Module, image: np.ndarray, image_size: Sequence[int], backends: Sequence[str],
                    warmup: int, repeats: int, threads: int, workdir: Path, name: str = "model") -> dict[str, Any]:
    """``{backend}_ms`` (median per image, end to end) and the eager run's pre/forward/post split."""
    from perception.inference.export import export_onnx
    from perception.inference.predictor import Predictor

    cpu = torch.device("cpu")
    row: dict[str, Any] = {}
    predictors = {}
    if "eager" in backends:
        predictors["eager"] = Predictor(model, image_size, device=cpu)
    if "onnx" in backends:
        path = workdir / f"{name}.onnx"
        export_onnx(model, path, image_size=image_size)
        predictors["onnx"] = Predictor.from_onnx(path, image_size=image_size, threads=threads)
    for backend, predictor in predictors.items():
        row[f"{backend}_ms"] = time_fn(lambda: predictor(image), cpu, warmup, repeats)["median_ms"]
        parts = predictor(image).timings
        row.update({f"{backend}_{k}_ms": parts[k] for k in ("pre", "forward", "post")})
    return row


def measure_variant(config: str, variant: Variant, image: np.ndarray, args: argparse.Namespace, workdir: Path,
                    ratio: bool = True) -> dict[str, Any]:
    """One table row (see the module's docstring)."""
    from perception.benchmark.model import build_from_config, measure_config
    from perception.ops.geometry import fit_letterbox

    cfg = variant_config(config, variant)
    torch.manual_seed(0)
    model = build_from_config(cfg.model, torch.device("cpu"))
    weights = getattr(args, "weights_of", {}).get(variant.name)
    if weights:
        from perception.inference.loading import load_model

        trained = load_model(weights).model
        if count_params(trained) != count_params(model):
            raise ValueError(f"--weights {variant.name}={weights}: the checkpoint's network has "
                             f"{count_params(trained)} parameters, variant {variant.name!r} {count_params(model)}")
        model = trained
    row: dict[str, Any] = {"variant": variant.name, "overrides": ",".join(variant.overrides),
                           "backbone": cfg.model.backbone.name, "params": count_params(model),
                           "weights": weights or "random"}
    row["params_M"] = row["params"] / 1e6
    row["gflops_640"] = gflops(model, (640, 640))
    row.update(time_predictors(model, image, args.image_size, args.backends, args.warmup, args.repeats,
                               args.threads or torch.get_num_threads(), workdir, variant.name))
    del model
    if ratio:
        padded = fit_letterbox(image.shape[0], image.shape[1], tuple(args.image_size)).padded_size
        # NHWC, as the Predictor feeds the network (its uint8 buffer is a channels-last view): on the CPU the
        # NCHW forward is slower (about 1.3x at scale m) and would not be the network the other columns time.
        forward = measure_config(cfg.model, padded, 1, torch.device("cpu"), channels_last=True,
                                 warmup=args.warmup, repeats=args.ratio_rounds)
        row.update({"multi_ms": forward["multi_ms"], "single_total_ms": forward["single_total_ms"],
                    "multi_vs_single": forward["ratio"], "forward_size": f"{padded[0]}x{padded[1]}"})
    return row


def conditions(image: np.ndarray, image_size: Sequence[int], args: argparse.Namespace, source: str) -> str:
    """One line: what the milliseconds were measured on."""
    info = machine_info(torch.device("cpu"))
    threads = torch.get_num_threads()
    return (f"{info['cpu']} ({info['cpu_count']} cores), {threads} thread{'s' * (threads != 1)}, "
            f"torch {info['torch']}; "
            f"{source} {image.shape[0]}x{image.shape[1]} fitted into {image_size[0]}x{image_size[1]}; median of "
            f"{args.repeats} after {args.warmup} warm-up"
            + ("" if getattr(args, "no_ratio", True) else f" (forward ratio: median of {args.ratio_rounds} rounds)")
            + ", "
            + (f"trained weights for {', '.join(sorted(args.weights_of))}" if getattr(args, "weights_of", None)
               else "random weights"))


def run(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = [parse_variant(v) for v in (args.variants or default_variants())]
    args.weights_of = parse_weights(args.weights, variants)
    image = read_photo(args.image, args.photo)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure_variant(args.config, v, image, args, Path(tmp), not args.no_ratio) for v in variants]
    source = Path(args.image).name if args.image else "generated photo"
    line = conditions(image, args.image_size, args, source)
    columns = [c for c in COLUMNS if any(c[0] in r for r in rows)]
    print(f"model variants of {Path(args.config).name}: {line}")
    print("GFLOPs: 2 x multiply-adds (convolutions, matrix products) of one 640x640 forward; ms per image end to "
          "end (pre + forward + post); multi / 3 single: forward time over its own single-task models'")
    print_table(rows, [key for key, _ in columns] + [k for k in ("eager_post_ms", "onnx_post_ms")
                                                     if any(k in r for r in rows)])
    table = markdown_table(rows, columns)
    print()
    print(table)
    write_text(f"{table}\n{line}.\n", args.markdown)
    result = {"benchmark": "scales", "machine": machine_info(torch.device("cpu")), "conditions": line,
              "settings": {k: v for k, v in vars(args).items() if not k.startswith("_")}, "rows": rows}
    write_json(result, args.json)
    return result
