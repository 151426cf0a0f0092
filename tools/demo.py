#!/usr/bin/env python
"""The demo: train on built-in synthetic driving scenes, evaluate, then run inference on new scenes and a video.

    python tools/demo.py --out runs/demo                       # what `make demo` runs (about 10 min on 2 CPU cores)
    python tools/demo.py --out runs/quick train.max_steps=100  # shorter; dotted overrides go to the config

Nothing is downloaded: the scenes are generated. The run directory receives:
    <out>/train/       config.yaml, last.pt, best.pt, metrics.json, train_log.jsonl, TensorBoard events (tb/)
    <out>/inputs/      a few unseen generated street images and a generated drive (drive.mp4)
    <out>/predictions/ images/ (vis/*.jpg pictures, predictions.jsonl) and video/ (drive_pred.mp4, predictions.jsonl)

The equivalent commands for your own data are printed at the end.
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perception.config import load_config  # noqa: E402
from perception.utils.cli import run_tool, tool_parser  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def write_inputs(folder: Path, num_images: int, size: tuple[int, int], video_frames: int, fps: float,
                 seed: int) -> tuple[Path, Path]:
    """Unseen scenes (the generator's test split) as PNGs, and a drive through one street as a video."""
    import cv2

    from perception.data.synthetic import generate_scene, write_sequence_video

    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    for i in range(num_images):
        sample = generate_scene(i, split="test", seed=seed, height=size[0], width=size[1])
        path = images / f"street_{i:02d}.png"
        if not cv2.imwrite(str(path), cv2.cvtColor(sample["image"], cv2.COLOR_RGB2BGR)):
            raise OSError(f"{path}: OpenCV could not write the image")
    video = write_sequence_video(folder / "drive.mp4", num_frames=video_frames, fps=fps, size=size, seed=seed + 7)
    return images, video


def _main(argv=None) -> int:
    parser = tool_parser(__doc__)
    parser.add_argument("--out", default="runs/demo", help="demo folder")
    parser.add_argument("--config", default=str(ROOT / "configs" / "synthetic_driving.yaml"))
    parser.add_argument("--images", type=int, default=6, help="unseen images to run inference on")
    parser.add_argument("--video-frames", type=int, default=60, help="frames of the generated drive")
    parser.add_argument("overrides", nargs="*", help="dotted key=value config overrides, e.g. train.max_steps=100")
    args = parser.parse_args(argv)

    out = Path(args.out)
    train_dir = out / "train"
    cfg = load_config(args.config, [f"output_dir={train_dir}", *args.overrides])

    from perception.engine.evaluator import evaluate, format_metrics
    from perception.engine.trainer import train
    from perception.inference.predictor import Predictor
    from perception.inference.runner import run_inference
    from perception.inference.sources import open_source

    start = time.perf_counter()
    print(f"[1/3] training on synthetic driving scenes for {cfg.train.max_steps} steps -> {train_dir}")
    run_dir = Path(train(cfg))
    checkpoint = run_dir / "best.pt" if (run_dir / "best.pt").exists() else run_dir / "last.pt"
    train_s = time.perf_counter() - start

    print(f"[2/3] evaluating {checkpoint} on the validation scenes")
    metrics = evaluate(cfg, checkpoint)
    print(format_metrics(metrics))

    print("[3/3] inference on unseen scenes and a generated drive")
    # Twice the network's size: the predictor letterboxes each image and maps its outputs back to it.
    size = (2 * cfg.data.image_size[0], 2 * cfg.data.image_size[1])
    images, video = write_inputs(out / "inputs", args.images, size, args.video_frames, fps=10.0, seed=cfg.seed)
    predictor = Predictor.from_checkpoint(checkpoint)
    pred_dir = out / "predictions"
    summaries = [run_inference(predictor, open_source(str(source)), pred_dir / name, layout="tile",
                               progress=False)
                 for name, source in (("images", images), ("video", video))]
    frames = sum(s.processed for s in summaries)
    timing = ", ".join(f"{k} {v:.1f} ms" for k, v in summaries[-1].timings_ms.items())

    print(f"\ndone in {time.perf_counter() - start:.0f} s (training {train_s:.0f} s); "
          f"{frames} images and frames predicted ({timing} per frame)")
    print(f"  checkpoint:  {checkpoint}")
    print(f"  metrics:     {run_dir / 'metrics.json'}")
    print(f"  pictures:    {pred_dir / 'images' / 'vis'}")
    if summaries[-1].video:
        print(f"  video:       {summaries[-1].video}")
    print(f"  predictions: {pred_dir / 'images' / 'predictions.jsonl'}, {pred_dir / 'video' / 'predictions.jsonl'}")
    print("\nthe same with the tools:")
    print(f"  python tools/train.py --config {args.config} output_dir={train_dir}")
    print(f"  python tools/eval.py --config {args.config} --checkpoint {checkpoint}")
    print(f"  python tools/infer.py --checkpoint {checkpoint} --source {video} --out {pred_dir / 'video'}")
    print(f"  tensorboard --logdir {run_dir / 'tb'}")
    return 0


def main(argv=None) -> int:
    """The demo; a user error ends with one ``error:`` line and exit code 2 (``--debug``: with the traceback)."""
    return run_tool(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
