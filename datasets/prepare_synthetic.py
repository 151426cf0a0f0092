#!/usr/bin/env python
"""Write the built-in synthetic driving scenes to disk in the Cityscapes layout, and optionally a drive video.

    python datasets/prepare_synthetic.py --out datasets/synthetic_cityscapes --train 200 --val 50 --size 256 512
    python datasets/prepare_synthetic.py --out datasets/synthetic_cityscapes --video datasets/synthetic_drive.mp4

The result is read by the real Cityscapes loader (``type: cityscapes``). The scenes are for tests and demos.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perception.data.synthetic import export_cityscapes, write_sequence_video  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="datasets/synthetic_cityscapes", help="dataset root to write")
    parser.add_argument("--train", type=int, default=200, help="training scenes")
    parser.add_argument("--val", type=int, default=50, help="validation scenes")
    parser.add_argument("--size", nargs=2, type=int, default=[256, 512], metavar=("H", "W"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--video", default="", help="also write a drive through one street to this file")
    parser.add_argument("--frames", type=int, default=100, help="video frames")
    parser.add_argument("--fps", type=float, default=10.0)
    args = parser.parse_args(argv)
    for split, count in (("train", args.train), ("val", args.val)):
        if count > 0:
            export_cityscapes(args.out, split, num_images=count, size=args.size, seed=args.seed)
            print(f"wrote {count} {split} scenes to {args.out}")
    if args.video:
        fourcc = "MJPG" if args.video.endswith(".avi") else "mp4v"
        path = write_sequence_video(args.video, args.frames, args.fps, args.size, args.seed, fourcc=fourcc)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
