#!/usr/bin/env python
"""Export a trained network to ONNX (or TorchScript) and check it against PyTorch on a real image.

    python tools/export.py --checkpoint runs/demo/best.pt --out runs/demo/model.onnx
    python tools/export.py --checkpoint runs/demo/best.pt --out runs/demo/model.onnx --tasks segmentation depth
    python tools/export.py --checkpoint runs/demo/best.pt --out runs/demo/model.ts --format torchscript

The ONNX graph takes ``images`` float32 [B, 3, H, W] RGB 0..255 (H, W multiples of 32; batch, height and width
dynamic) and returns every exported task's outputs as ``<task>__<output>`` (e.g. ``objects__boxes``,
``objects__scores``, ``semantic__logits``, ``depth__depth``; see perception/inference/export.py), plus metadata
(task names, types, class names, settings) to decode them; thresholding and NMS are the caller's step, with a
numpy reference per task type run by perception/inference/postprocess_numpy.py. ``--tasks`` selects tasks by name.
The check runs the file with onnxruntime and the network with PyTorch on the same image (``--check-image``, or a
built-in synthetic street scene), prints the max abs difference of every output, and fails (exit 1) above the
tolerance.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from perception.utils.cli import run_tool, tool_parser  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = tool_parser(__doc__)
    parser.add_argument("--checkpoint", required=True, help="a checkpoint written by tools/train.py")
    parser.add_argument("--out", required=True, help="the .onnx (or TorchScript .ts/.pt) file to write")
    parser.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    parser.add_argument("--tasks", nargs="+", default=None, help="names of the tasks to export (default: all)")
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="example and check size (default: the run's data.image_size)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 17)")
    parser.add_argument("--exporter", choices=("auto", "dynamo", "torchscript"), default="auto",
                        help="ONNX exporter: torch.export based (dynamo), the TorchScript one, or dynamo first")
    parser.add_argument("--static", action="store_true", help="fixed batch and input size")
    parser.add_argument("--check-image", default=None, help="image to check with (default: a synthetic scene)")
    parser.add_argument("--atol", type=float, default=1e-3,
                        help="allowed max abs difference, relative to each output's largest magnitude (>= 1)")
    parser.add_argument("--no-ema", action="store_true", help="export the raw weights even if EMA weights exist")
    return parser.parse_args(argv)


def check_image(path: str | None, size: tuple[int, int]) -> np.ndarray:
    """ndarray[1, 3, H, W] float32: the image letterboxed into ``size`` (or a synthetic street scene)."""
    from perception.ops.geometry import letterbox_image
    from perception.inference.images import read_image

    if path is not None:
        image = read_image(path)
    else:
        from perception.data.synthetic import generate_scene

        image = generate_scene(index=0, split="val", height=size[0], width=size[1])["image"]
    padded, _ = letterbox_image(image, size)
    return padded.transpose(2, 0, 1)[None].astype(np.float32)


def _main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from perception.inference.export import ExportModule, compare_with_torch, export_onnx, export_torchscript
    from perception.inference.loading import load_model

    loaded = load_model(args.checkpoint, args.tasks, prefer_ema=not args.no_ema)
    size = tuple(args.image_size or loaded.image_size)
    size = (-(-size[0] // 32) * 32, -(-size[1] // 32) * 32)
    images = check_image(args.check_image, size)
    reference = ExportModule(loaded.model, loaded.tasks)
    with torch.no_grad():
        expected = dict(zip(reference.output_names, reference(torch.from_numpy(images))))

    if args.format == "torchscript":
        path = export_torchscript(loaded.model, args.out, size, loaded.tasks)
        with torch.no_grad():
            got = dict(zip(reference.output_names, torch.jit.load(str(path))(torch.from_numpy(images))))
        diffs = {k: float((got[k] - v).abs().max()) for k, v in expected.items()}
        print(f"TorchScript -> {path}")
    else:
        result = export_onnx(loaded.model, args.out, size, loaded.tasks, args.opset, not args.static, args.exporter)
        diffs = compare_with_torch(result.path, loaded.model, images, loaded.tasks)
        print(f"ONNX (opset {args.opset}, {result.exporter} exporter, "
              f"{'static' if args.static else 'dynamic batch/height/width'}) -> {result.path}")
        print("  tasks: " + ", ".join(f"{name} ({spec['type']})" for name, spec in result.metadata["tasks"].items()))
    failed = False
    for name, diff in diffs.items():
        magnitude = max(1.0, float(expected[name].abs().max()))
        ok = diff <= args.atol * magnitude
        failed |= not ok
        print(f"  {name:24s} {tuple(expected[name].shape)}  max abs diff {diff:.3g}  {'ok' if ok else 'FAIL'}")
    if failed:
        print(f"error: outputs differ from PyTorch by more than {args.atol} x magnitude", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    """Export; a user error ends with one ``error:`` line and exit code 2 (``--debug``: with the traceback)."""
    return run_tool(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
