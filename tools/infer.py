#!/usr/bin/env python
"""Run a trained network on images, a folder, a glob, a video or a camera and write what it sees.

    python tools/infer.py --checkpoint runs/demo/best.pt --source street.png --out runs/infer
    python tools/infer.py --checkpoint runs/demo/best.pt --source "images/*.jpg" --out runs/infer --raw
    python tools/infer.py --checkpoint runs/demo/best.pt --source drive.mp4 --out runs/infer --layout tile
    python tools/infer.py --checkpoint runs/demo/best.pt --source 0 --out runs/cam --max-frames 300
    python tools/infer.py --checkpoint runs/drive/best.pt --source drive.mp4 --out runs/infer --tasks objects drivable
    python tools/infer.py --checkpoint model.onnx --source street.png --out runs/infer   # onnxruntime (CPU)

Writes predictions.jsonl (one line per image or frame), the pictures (vis/*.jpg, one panel per task) or the
annotated video (<name>_pred.mp4, same frame rate), raw maps with --raw (raw/<task>/<name>.png: class ids, depth
in 16-bit mm) and summary.json. See docs/inference.md.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perception.inference.sources import open_source  # noqa: E402
from perception.inference.visualize import LAYOUTS  # noqa: E402
from perception.utils.cli import EXIT_USER_ERROR, run_tool, tool_parser  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = tool_parser(__doc__)
    parser.add_argument("--checkpoint", required=True,
                        help="a checkpoint written by tools/train.py, or an .onnx file written by tools/export.py "
                             "(run with onnxruntime on the CPU)")
    parser.add_argument("--source", required=True,
                        help="an image, a folder, a glob (quote it), a video file or a camera index")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--tasks", nargs="+", default=None,
                        help="names of the tasks to run (default: all in the checkpoint)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--half", action="store_true", help="autocast: float16 on CUDA, bfloat16 on the CPU")
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="network input size (default: the run's data.image_size)")
    parser.add_argument("--batch-size", type=int, default=1, help="frames per network call")
    parser.add_argument("--score-thresh", type=float, default=None,
                        help="score threshold of every task that has one (detection)")
    parser.add_argument("--upsample", choices=("nearest", "bilinear"), default=None,
                        help="how class ids reach the image's pixels (segmentation): nearest from the head's grid "
                             "(the default, fastest) or the arg-max of bilinearly resized logits (smoother)")
    parser.add_argument("--layout", choices=LAYOUTS, default="side", help="how the panels are arranged")
    parser.add_argument("--raw", action="store_true",
                        help="also write each task's raw map as PNG (class ids, 16-bit depth in mm)")
    parser.add_argument("--no-vis", action="store_true", help="write no pictures or video, only predictions")
    parser.add_argument("--value-range", "--depth-range", dest="value_range", type=float, nargs=2,
                        metavar=("NEAR", "FAR"), default=None,
                        help="fixed colour range of value maps, e.g. depth in metres (default: per image; a "
                             "video's first frame)")
    parser.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    parser.add_argument("--no-ema", action="store_true", help="load the raw weights even if EMA weights exist")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def _main(argv=None) -> int:
    args = parse_args(argv)
    from perception.inference.predictor import Predictor
    from perception.inference.runner import run_inference

    source = open_source(args.source)
    if str(args.checkpoint).lower().endswith(".onnx"):
        # --device, --half and --no-ema concern the PyTorch backend; the file is what it was exported as.
        predictor = Predictor.from_onnx(args.checkpoint, image_size=args.image_size, tasks=args.tasks,
                                        score_thresh=args.score_thresh)
    else:
        predictor = Predictor.from_checkpoint(args.checkpoint, device=args.device, tasks=args.tasks,
                                              half=args.half, image_size=args.image_size,
                                              prefer_ema=not args.no_ema, score_thresh=args.score_thresh)
    if args.upsample is not None:
        predictor.set_option("upsample", args.upsample)
    summary = run_inference(predictor, source, args.out, layout=args.layout, raw=args.raw,
                            batch_size=args.batch_size, visualize=not args.no_vis,
                            value_range=tuple(args.value_range) if args.value_range else None,
                            progress=not args.quiet, max_frames=args.max_frames)
    timing = ", ".join(f"{k} {v:.1f} ms" for k, v in summary.timings_ms.items())
    print(f"{summary.processed} frames -> {args.out}" + (f" ({timing} per frame)" if timing else ""))
    if summary.video:
        print(f"video: {summary.video}")
    if summary.skipped:
        print(f"skipped {len(summary.skipped)} unreadable images:", file=sys.stderr)
        for line in summary.skipped:
            print(f"  {line}", file=sys.stderr)
    if summary.interrupted:
        print("interrupted: the outputs written so far are complete and the video is playable", file=sys.stderr)
        return 130
    if summary.processed == 0 and summary.skipped:
        print(f"error: none of the {len(summary.skipped)} images of {args.source!r} could be read (each is listed "
              "above); expected image files OpenCV decodes", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


def main(argv=None) -> int:
    """Run inference; a user error ends with one ``error:`` line and exit code 2 (``--debug``: the traceback)."""
    return run_tool(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
