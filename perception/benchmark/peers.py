"""Our Predictor against Ultralytics YOLO26n on the same photo, in one run.

    bash tools/peers_venv.sh              # once: Ultralytics in its own environment, .venv-peers
    python tools/benchmark.py peers       # bus.jpg of that Ultralytics, 640, both sides in one run

Ultralytics is not a dependency of this toolkit: its side runs in a subprocess with the Python of its own
environment (``--peers-python``, default ``.venv-peers/bin/python``), the script
``perception/benchmark/peers_worker.py``. It builds random-weight models from ``yolo26n.yaml``,
``yolo26n-sem.yaml`` and ``yolo26n-depth.yaml`` (``--peers-models``; no download, ``YOLO_OFFLINE=1``) and times
``model.predict(image, verbose=False)``, its own pre- and post-processing included, on the BGR array of the
photo (default: ``bus.jpg`` of the installed package's ``ultralytics/assets``, 1080x810) at ``imgsz`` 640 with the
same number of threads. A yaml that the installed version lacks is reported as missing, never replaced.

Our side: each variant (``--variants``, as in ``tools/benchmark.py scales``) with random weights through the
:class:`Predictor` (all of its tasks' answers at the photo's own size), PyTorch eager and onnxruntime, on the RGB
array of the same photo fitted into 640x640. Ours is measured first, then Ultralytics'. The ratios are those of
issue 14's targets: every variant and backend against YOLO26n's detector alone and against the sum of the
YOLO26n models found (one per answer).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from perception.benchmark.common import machine_info, markdown_table, print_table, write_json, write_text
from perception.benchmark.scales import (ROOT, add_variant_arguments, conditions, default_variants,
                                         measure_variant, parse_variant, parse_weights, read_photo)

WORKER = Path(__file__).with_name("peers_worker.py")
DEFAULT_PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"
PEER_MODELS = ("yolo26n.yaml", "yolo26n-sem.yaml", "yolo26n-depth.yaml")
MAKE_VENV = "bash tools/peers_venv.sh"
BACKEND_NAMES = {"eager": "PyTorch eager", "onnx": "onnxruntime"}
# Issue 14's targets: (variant, backend, against, at most).
TARGETS = (("n", "eager", "detect", 1.0), ("n", "onnx", "detect", 0.6), ("s", "eager", "all", 0.5))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_variant_arguments(parser)
    parser.add_argument("--peers-python", default=str(DEFAULT_PEERS_PYTHON),
                        help=f"Python of the environment with Ultralytics (made by `{MAKE_VENV}`)")
    parser.add_argument("--peers-models", nargs="+", default=list(PEER_MODELS), help="Ultralytics model yamls")
    parser.add_argument("--image", default="", help="the photo (default: bus.jpg of the installed Ultralytics)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds the Ultralytics side may take")


# ------------------------------------------------------------------------------------------ the peers' side
def check_peers_python(path: str | os.PathLike) -> Path:
    """The peers environment's Python, or a one-line error saying how to make it."""
    python = Path(path)
    if not python.is_file():
        raise FileNotFoundError(2, f"no Python of the peers environment; make it with `{MAKE_VENV}` (or give "
                                   "--peers-python)", str(python))
    return python


def parse_peers_output(stdout: str, python: str | os.PathLike = "the peers' Python") -> dict[str, Any]:
    """The worker's answer: its last stdout line that is a JSON object (Ultralytics may print before it).

    Raises:
        ValueError: no such line, or the worker reported an error (missing Ultralytics: with the command that
            installs it).
    """
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                answer = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(answer, dict):
                continue
            if "error" in answer:
                hint = f"; make the environment with `{MAKE_VENV}`" if "ultralytics" in answer["error"] else ""
                raise ValueError(f"peers: {answer['error']}{hint}")
            for key in ("ultralytics", "rows", "missing"):
                if key not in answer:
                    raise ValueError(f"peers: the answer of {python} has no {key!r}: {line[:200]}")
            return answer
    raise ValueError(f"peers: no JSON answer from {python} (last output: {stdout.strip()[-200:]!r})")


def run_worker(python: Path, worker_args: Sequence[str], timeout: float) -> dict[str, Any]:
    """Run the Ultralytics side and return its parsed answer."""
    env = {**os.environ, "YOLO_OFFLINE": "1", "PYTHONPATH": ""}
    done = subprocess.run([str(python), str(WORKER), *worker_args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=tempfile.gettempdir())
    if done.returncode != 0 and not done.stdout.strip():
        last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise ValueError(f"peers: {python} {WORKER.name} failed: {last}")
    return parse_peers_output(done.stdout, python)


# ------------------------------------------------------------------------------------------------- ratios
def peer_totals(peer_rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """``detect``: the detector's ms (the first ``task == "detect"`` row); ``all``: the sum of every peer row."""
    detect = next((r["median_ms"] for r in peer_rows if r.get("task") == "detect"), None)
    totals = {"all": sum(r["median_ms"] for r in peer_rows)} if peer_rows else {}
    if detect is not None:
        totals["detect"] = detect
    return totals


def ratio_rows(our_rows: Sequence[Mapping[str, Any]], peer_rows: Sequence[Mapping[str, Any]],
               backends: Sequence[str]) -> list[dict[str, Any]]:
    """One row per peer model, then one per (our variant, backend) with ``vs_detect`` and ``vs_all``."""
    totals = peer_totals(peer_rows)
    rows: list[dict[str, Any]] = []
    for peer in peer_rows:
        rows.append({"model": f"Ultralytics {Path(peer['model']).stem} ({peer['task']})", "backend": "PyTorch eager",
                     "params_M": peer["params"] / 1e6, "gflops_640": peer.get("gflops_640"),
                     "ms": peer["median_ms"]})
    if len(peer_rows) > 1:
        rows.append({"model": f"Ultralytics, the {len(peer_rows)} above", "backend": "PyTorch eager",
                     "params_M": sum(p["params"] for p in peer_rows) / 1e6,
                     "gflops_640": sum(p.get("gflops_640") or 0.0 for p in peer_rows), "ms": totals["all"]})
    for ours in our_rows:
        for backend in backends:
            ms = ours.get(f"{backend}_ms")
            if ms is None:
                continue
            row = {"model": f"ours {ours['variant']} (all answers)", "variant": ours["variant"], "backend_key": backend,
                   "backend": BACKEND_NAMES[backend], "params_M": ours["params_M"], "gflops_640": ours["gflops_640"],
                   "ms": ms}
            if "detect" in totals:
                row["vs_detect"] = ms / totals["detect"]
            if "all" in totals:
                row["vs_all"] = ms / totals["all"]
            rows.append(row)
    return rows


def target_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Issue 14's targets that these rows answer, each with its ratio and whether it is met."""
    lines = []
    for variant, backend, against, limit in TARGETS:
        row = next((r for r in rows if r.get("variant") == variant and r.get("backend_key") == backend), None)
        value = None if row is None else row.get(f"vs_{against}")
        if value is None:
            continue
        what = "YOLO26n detect alone" if against == "detect" else "the YOLO26n models together"
        lines.append(f"ours {variant}, {BACKEND_NAMES[backend]}: {value:.2f}x {what} (target: at most {limit:.1f}x)"
                     f" {'met' if value <= limit else 'NOT met'}")
    return lines


COLUMNS = [("model", "model"), ("backend", "backend"), ("params_M", "params (M)"), ("gflops_640", "GFLOPs 640"),
           ("ms", "CPU ms / image"), ("vs_detect", "x YOLO26n detect"), ("vs_all", "x YOLO26n, all")]


def run(args: argparse.Namespace) -> dict:
    python = check_peers_python(args.peers_python)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = run_worker(python, ["--info"], args.timeout)
    image_path = args.image or str(Path(info["assets"]) / "bus.jpg")
    variants = [parse_variant(v) for v in (args.variants or default_variants())]
    args.weights_of = parse_weights(args.weights, variants)
    image = read_photo(image_path, "")
    with tempfile.TemporaryDirectory() as tmp:
        ours = [measure_variant(args.config, v, image, args, Path(tmp), ratio=False) for v in variants]
    peers = run_worker(python, ["--models", *args.peers_models, "--image", image_path,
                                "--imgsz", str(max(args.image_size)), "--threads", str(torch.get_num_threads()),
                                "--warmup", str(args.warmup), "--repeats", str(args.repeats)], args.timeout)
    rows = ratio_rows(ours, peers["rows"], args.backends)
    line = conditions(image, args.image_size, args, Path(image_path).name)
    line += f"; Ultralytics {peers['ultralytics']} (torch {peers['torch']}, {peers['threads']} thread" \
            f"{'s' * (peers['threads'] != 1)})"
    print(f"ours against Ultralytics YOLO26n: {line}")
    for missing in peers["missing"]:
        print(f"missing: {missing['model']} is not in Ultralytics {peers['ultralytics']} ({missing['error']})")
    print_table(rows, [key for key, _ in COLUMNS])
    targets = target_lines(rows)
    for target in targets:
        print(target)
    table = markdown_table(rows, COLUMNS)
    print()
    print(table)
    notes = "".join(f"Missing: `{m['model']}` is not in Ultralytics {peers['ultralytics']}.\n"
                    for m in peers["missing"])
    write_text(f"{table}\n{line}.\n{notes}", args.markdown)
    result = {"benchmark": "peers", "machine": machine_info(torch.device("cpu")), "conditions": line,
              "settings": {k: v for k, v in vars(args).items() if not k.startswith("_")}, "ours": ours,
              "peers": peers, "rows": rows, "targets": targets}
    write_json(result, args.json)
    return result
