"""The Ultralytics side of ``tools/benchmark.py peers``, run as a script by the Python of the peers environment
(``bash tools/peers_venv.sh``): it needs only the standard library and Ultralytics, never this package.

    .venv-peers/bin/python perception/benchmark/peers_worker.py --info
    .venv-peers/bin/python perception/benchmark/peers_worker.py --models yolo26n.yaml yolo26n-sem.yaml \
        --image bus.jpg --imgsz 640 --threads 2 --warmup 2 --repeats 7

Each model is built from its yaml with random weights (no download; ``YOLO_OFFLINE=1`` keeps Ultralytics off the
network) and timed on ``model.predict(image, verbose=False)`` (its own pre- and post-processing included) on the
BGR array of the photo, the form Ultralytics takes arrays in. The answer is one JSON line on stdout:
``{"ultralytics", "torch", "threads", "image", "assets", "rows": [{"model", "task", "params", "gflops_640",
"median_ms", "min_ms", "max_ms", "input"}], "missing": [{"model", "error"}]}``; a model whose yaml this version
does not have is listed under ``missing`` with Ultralytics' words.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

EXIT_NO_ULTRALYTICS = 3


def _answer(payload: dict) -> None:
    print(json.dumps(payload))


def _timed(fn, warmup: int, repeats: int) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times)}


def _gflops(network, imgsz: int) -> float:
    """FLOPs (2 x multiply-adds of convolutions and matrix products) of one square ``imgsz`` input, in G."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        network(torch.zeros(1, 3, imgsz, imgsz))
    return counter.get_total_flops() / 1e9


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--info", action="store_true", help="print the versions and the assets folder only")
    parser.add_argument("--models", nargs="*", default=[])
    parser.add_argument("--image", default="")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    try:
        import torch
        import ultralytics
        from ultralytics import YOLO
    except ImportError as err:
        _answer({"error": f"{sys.executable}: cannot import ultralytics ({err})"})
        return EXIT_NO_ULTRALYTICS
    if args.threads:
        torch.set_num_threads(args.threads)
    assets = Path(ultralytics.__file__).parent / "assets"
    result = {"ultralytics": ultralytics.__version__, "torch": torch.__version__, "python": sys.executable,
              "threads": torch.get_num_threads(), "assets": str(assets), "rows": [], "missing": []}
    if args.info:
        _answer(result)
        return 0
    import cv2

    image_path = args.image or str(assets / "bus.jpg")
    image = cv2.imread(image_path)
    if image is None:
        _answer({**result, "error": f"{image_path}: not an image OpenCV can read"})
        return 2
    result["image"] = image_path
    result["input"] = f"{image.shape[0]}x{image.shape[1]}"
    for name in args.models:
        try:
            model = YOLO(name)
        except Exception as err:  # Ultralytics raises FileNotFoundError or its own types for an unknown yaml
            result["missing"].append({"model": name, "error": (str(err).splitlines() or [type(err).__name__])[0]})
            continue
        network = model.model.eval()
        row = {"model": name, "task": model.task, "params": sum(p.numel() for p in network.parameters())}
        row["gflops_640"] = _gflops(network, 640)
        row.update(_timed(lambda: model.predict(image, imgsz=args.imgsz, device="cpu", verbose=False),
                          args.warmup, args.repeats))
        result["rows"].append(row)
    _answer(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
