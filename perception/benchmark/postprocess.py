"""Dense post-processing at a photo's size: segmentation ids and depth, today's path against the full-size
reference it replaces, in one run (PyTorch and the numpy path of ONNX callers).

    python tools/benchmark.py postprocess --photo 480x640 --network 480x640 --classes 19

- segmentation, reference: the K logits resized to the photo (``dense_to_original``), arg-max there;
  ours: ``argmax_to_original`` (arg-max on the head's grid, K logits blended only at class boundaries);
- depth, reference: the raw map resized, then log-depth, exp and clamp at full size; ours: clamped on the grid in
  log space, resized once, exponentiated in place.

The logits are those of a generated street scene (soft one-hot of its classes per stride-4 cell, plus noise), so
the share of boundary pixels is a real picture's; ``agreement`` is the share of pixels where ours equals the
reference.
"""
from __future__ import annotations

import argparse
import math

import numpy as np
import torch
import torch.nn.functional as F

from perception.benchmark.common import machine_info, print_table, time_fn, write_json
from perception.benchmark.predictor import parse_size
from perception.ops.geometry import (argmax_to_original, argmax_to_original_numpy, dense_to_original,
                                     dense_to_original_numpy, fit_letterbox)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--photo", default="480x640", help="photo size HxW")
    parser.add_argument("--network", default="480x640", help="network size HxW")
    parser.add_argument("--classes", type=int, default=19)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    parser.add_argument("--json", default="", help="write the results here")


def scene_logits(photo: tuple[int, int], box, classes: int) -> torch.Tensor:
    """Tensor[K, h, w] stride-4 logits of a generated street scene fitted into ``box``."""
    from perception.data.synthetic import generate_scene

    semantic = generate_scene(index=0, split="val", height=photo[0], width=photo[1])["semantic"]
    ids = torch.from_numpy(semantic.astype(np.int64)).clamp(max=classes - 1)
    one_hot = F.one_hot(ids, classes).permute(2, 0, 1)[None].float()
    padded = torch.zeros(1, classes, *box.padded_size)
    padded[..., :box.resized_height, :box.resized_width] = F.interpolate(one_hot, size=box.resized_size,
                                                                         mode="nearest")
    logits = F.avg_pool2d(padded, 4) * 4
    return (logits + 0.3 * torch.randn(logits.shape, generator=torch.Generator().manual_seed(0)))[0]


def run(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    photo, network = parse_size(args.photo), parse_size(args.network)
    box = fit_letterbox(*photo, network)
    logits = scene_logits(photo, box, args.classes)
    logits_np = logits.numpy()
    raw = torch.randn(1, 1, *logits.shape[-2:], generator=torch.Generator().manual_seed(1)) + 2.0
    raw_np = np.exp(raw[0].numpy())
    log_min, log_max = math.log(1e-3), math.log(250.0)

    def depth_reference() -> torch.Tensor:
        return torch.exp(dense_to_original(raw, box)).clamp(1e-3, 250.0)

    def depth_ours() -> torch.Tensor:
        return dense_to_original(raw.clamp(log_min, log_max), box)[0, 0].exp_()

    def depth_numpy_reference() -> np.ndarray:
        return np.exp(dense_to_original_numpy(np.log(np.maximum(raw_np, 1e-6)), box)[0]).astype(np.float32)

    def depth_numpy_ours() -> np.ndarray:
        depth = dense_to_original_numpy(np.log(np.maximum(raw_np, 1e-6, dtype=np.float32)), box)[0]
        return np.exp(depth, out=depth)

    cases = [
        ("class ids", "torch", lambda: dense_to_original(logits[None], box)[0].argmax(0),
         lambda: argmax_to_original(logits, box)),
        ("class ids", "numpy", lambda: dense_to_original_numpy(logits_np, box).argmax(0),
         lambda: argmax_to_original_numpy(logits_np, box)),
        ("metres", "torch", depth_reference, depth_ours),
        ("metres", "numpy", depth_numpy_reference, depth_numpy_ours),
    ]
    rows = []
    for ids, (output, backend, reference, ours) in zip((True, True, False, False), cases):
        # Interleaved, so that a change of load on a shared machine hits both alike.
        ref_ms, our_ms = [], []
        for _ in range(3):
            ref_ms.append(time_fn(reference, device, 1, args.repeats)["median_ms"])
            our_ms.append(time_fn(ours, device, 1, args.repeats)["median_ms"])
        a, b = np.asarray(reference()), np.asarray(ours())
        agreement = float((a == b).mean()) if ids else float(np.isclose(a, b, rtol=1e-4).mean())
        rows.append({"output": output, "backend": backend, "reference_ms": float(np.median(ref_ms)),
                     "ours_ms": float(np.median(our_ms)), "ratio": float(np.median(our_ms) / np.median(ref_ms)),
                     "agreement": agreement})
    print(f"dense post-processing, photo {args.photo}, network {args.network}, {args.classes} classes, ms "
          f"(median of 3 x {args.repeats}); ratio = ours / full-size reference")
    print_table(rows, ["output", "backend", "reference_ms", "ours_ms", "ratio", "agreement"])
    result = {"benchmark": "postprocess", "machine": machine_info(device),
              "settings": {k: v for k, v in vars(args).items() if not k.startswith("_")}, "rows": rows}
    write_json(result, args.json)
    return result
