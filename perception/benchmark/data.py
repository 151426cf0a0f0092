"""Data loading throughput: samples per second per worker, Cityscapes-sized images with training augmentation.

A DataLoader worker does exactly what is timed here, one ``dataset[(index, seed)]`` after another, so the
samples/s of one process is the samples/s per worker. Rows, each relative to the decode-only baseline of the
same process: reading the Cityscapes files (images, labelIds, instanceIds, disparity, camera), reading plus checks
and training augmentation, and the synthetic generator with and without augmentation. With ``--workers N`` a real
DataLoader is timed too (samples/s over all workers, and divided by N).

    python tools/benchmark.py data                       # writes 8 scenes at 1024x2048 to /tmp first
    python tools/benchmark.py data --workers 2 --json runs/bench/data.json
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from perception.benchmark.common import machine_info, print_table, write_json
from perception.data.config import DataConfig, DatasetConfig
from perception.models.config import ModelConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", default="/tmp/perception_bench_cityscapes",
                        help="Cityscapes-layout folder (scenes are exported there when it has too few)")
    parser.add_argument("--images", type=int, default=8, help="images to export and cycle through")
    parser.add_argument("--size", nargs=2, type=int, default=[1024, 2048], metavar=("H", "W"),
                        help="size of the exported images")
    parser.add_argument("--crop", nargs=2, type=int, default=[512, 1024], metavar=("H", "W"),
                        help="data.image_size: the training crop")
    parser.add_argument("--synthetic-size", nargs=2, type=int, default=[256, 512], metavar=("H", "W"),
                        help="size of the synthetic scenes rendered on the fly")
    parser.add_argument("--samples", type=int, default=16, help="samples timed per row")
    parser.add_argument("--workers", type=int, default=0, help="also time a DataLoader with this many workers")
    parser.add_argument("--threads", type=int, default=1, help="OpenCV and torch threads of this process")
    parser.add_argument("--json", default="", help="write the results here")


def _ensure_export(root: Path, count: int, size) -> None:
    from perception.data.synthetic import export_cityscapes

    existing = list((root / "leftImg8bit" / "train").glob("*/*_leftImg8bit.png"))
    if len(existing) >= count:
        return
    print(f"exporting {count} synthetic scenes at {size[0]}x{size[1]} to {root} ...")
    export_cityscapes(root, "train", num_images=count, size=size)


def _rate(fn, count: int) -> dict:
    fn(0)  # warm up (lazy imports, caches)
    start = time.perf_counter()
    for i in range(count):
        fn(i)
    seconds = time.perf_counter() - start
    return {"samples_per_s": count / seconds, "ms_per_sample": 1000.0 * seconds / count}


def run(args: argparse.Namespace) -> dict:
    import cv2

    from perception.data import build_dataloader, build_dataset
    from perception.data.io import read_image

    cv2.setNumThreads(args.threads)
    torch.set_num_threads(args.threads)
    root = Path(args.root)
    _ensure_export(root, args.images, args.size)
    # The labels of the default model's tasks (detection, segmentation, depth), what a training run loads.
    tasks = list(dict.fromkeys(task.label for task in ModelConfig().build_tasks().values()))
    city = DataConfig(train=[DatasetConfig(type="cityscapes", root=str(root))], image_size=tuple(args.crop),
                      batch_size=2, num_workers=args.workers)
    dataset = build_dataset(city, "train", tasks)
    raw = dataset.datasets[0]
    n = len(raw)
    synthetic = DataConfig(train=[DatasetConfig(options={"num_samples": 10_000, "height": args.synthetic_size[0],
                                                          "width": args.synthetic_size[1]})],
                           image_size=tuple(args.synthetic_size))
    syn = build_dataset(synthetic, "train", tasks)
    rng = np.random.default_rng(0)
    seeds = rng.integers(0, 2**31 - 1, args.samples + 1)
    rows = [
        {"row": "decode RGB only (baseline)", **_rate(lambda i: read_image(raw.images[i % n]), args.samples)},
        {"row": "cityscapes read (all files)", **_rate(lambda i: raw.load(i % n), args.samples)},
        {"row": "cityscapes read + check + train aug", **_rate(lambda i: dataset[(i % n, int(seeds[i]))],
                                                              args.samples)},
        {"row": "synthetic render", **_rate(lambda i: syn.datasets[0].load(i), args.samples)},
        {"row": "synthetic render + train aug", **_rate(lambda i: syn[(i, int(seeds[i]))], args.samples)},
    ]
    base = rows[0]["ms_per_sample"]
    for row in rows:
        row["x_decode"] = row["ms_per_sample"] / base
    if args.workers > 0:
        loader = build_dataloader(city, "train", tasks, seed=0)
        iterator = iter(loader)
        next(iterator)  # workers started and warm
        count, start = 0, time.perf_counter()
        for batch in iterator:
            count += len(batch)
        seconds = time.perf_counter() - start
        if count:
            rows.append({"row": f"DataLoader, {args.workers} workers (total)", "samples_per_s": count / seconds,
                         "ms_per_sample": 1000 * seconds / count, "x_decode": 1000 * seconds / count / base})
            rows.append({"row": "DataLoader, per worker", "samples_per_s": count / seconds / args.workers})
    info = machine_info(torch.device("cpu"))
    print(f"data loading, images {args.size[0]}x{args.size[1]} -> crop {args.crop[0]}x{args.crop[1]}, synthetic "
          f"{args.synthetic_size[0]}x{args.synthetic_size[1]}, {args.threads} thread(s) per process, "
          f"{info['cpu_count']} CPUs")
    print_table(rows, ["row", "samples_per_s", "ms_per_sample", "x_decode"])
    result = {"benchmark": "data", "machine": info,
              "settings": {k: v for k, v in vars(args).items() if not k.startswith("_")}, "rows": rows}
    write_json(result, args.json)
    return result
