#!/usr/bin/env python
"""Write the built-in synthetic driving scenes to disk in the Cityscapes layout, and optionally a drive video.

    python datasets/prepare_synthetic.py --out datasets/synthetic_cityscapes --train 200 --val 50 --size 256 512
    python datasets/prepare_synthetic.py --out datasets/synthetic_cityscapes --video datasets/synthetic_drive.mp4

The result is read by the real Cityscapes loader (``type: cityscapes``). The scenes are for tests and demos.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perception.data.synthetic import export_cityscapes, write_sequence_video  # noqa: E402
from perception.utils.cli import run_tool, tool_parser  # noqa: E402


def _main(argv=None) -> None:
    parser = tool_parser(__doc__)
    parser.add_argument("--out", default="datasets/synthetic_cityscapes", help="dataset root to write")
    parser.add_argument("--train", type=int, default=200, help="training scenes")
    parser.add_argument("--val", type=int, default=50, help="validation scenes")
    parser.add_argument("--size", nargs=2, type=int, default=[256, 512], metavar=("H", "W"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--video", default="", help="also write a drive through one street to this file")
    parser.add_argument("--frames", type=int, default=100, help="video frames")
    parser.add_argument("--fps", type=float, default=10.0)
    args = parser.parse_args(argv)
    if min(args.size) < 32:
        raise ValueError(f"--size: got {args.size[0]}x{args.size[1]}, expected at least 32x32 pixels (H W)")
    if args.train < 0 or args.val < 0 or args.frames < 1 or args.fps <= 0:
        raise ValueError(f"--train/--val/--frames/--fps: got {args.train}/{args.val}/{args.frames}/{args.fps}, "
                         "expected scene counts >= 0, at least 1 frame and a positive frame rate")
    for split, count in (("train", args.train), ("val", args.val)):
        if count > 0:
            export_cityscapes(args.out, split, num_images=count, size=args.size, seed=args.seed)
            print(f"wrote {count} {split} scenes to {args.out}")
    if args.video:
        fourcc = "MJPG" if args.video.endswith(".avi") else "mp4v"
        path = write_sequence_video(args.video, args.frames, args.fps, args.size, args.seed, fourcc=fourcc)
        print(f"wrote {path}")


def main(argv=None) -> int:
    """Convert; a bad input ends with one ``error:`` line and exit code 2 (``--debug``: with the traceback)."""
    return run_tool(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
