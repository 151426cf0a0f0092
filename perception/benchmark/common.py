"""Timing helpers shared by the benchmarks."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from perception.utils.device import resolve_device  # noqa: F401  (the benchmarks' import)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], Any], device: torch.device, warmup: int = 2, repeats: int = 7) -> dict[str, float]:
    """Median and spread (ms) of ``repeats`` timed calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1000.0)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times)}


def time_round_robin(fns: Sequence[Callable[[], Any]], device: torch.device, warmup: int = 2,
                     repeats: int = 7) -> list[list[float]]:
    """Milliseconds of each of ``fns`` in ``repeats`` rounds, every round calling each function once in turn
    (after ``warmup`` such rounds untimed): a change of the machine's load during the run then hits every
    function alike, which timing them one block after the other does not. Returns one list per function."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    synchronize(device)
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times):
            start = time.perf_counter()
            fn()
            synchronize(device)
            out.append((time.perf_counter() - start) * 1000.0)
    return times


def paired_ratio(numerator: Sequence[float], denominators: Sequence[Sequence[float]]) -> float:
    """The median over rounds of ``numerator[r] / sum(d[r] for d in denominators)``: the ratio of times taken in
    the same round (see :func:`time_round_robin`), robust to load that drifts between rounds."""
    return statistics.median(n / sum(d[r] for d in denominators) for r, n in enumerate(numerator))


def machine_info(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on."""
    info = {"python": platform.python_version(), "torch": torch.__version__, "device": str(device),
            "cpu": _cpu_name(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """A plain aligned text table of ``rows`` restricted to ``columns``."""
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def write_json(result: dict[str, Any], path: str | os.PathLike | None) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=2), encoding="utf-8")
        print(f"wrote {path}")


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A GitHub markdown table of ``rows``: ``columns`` are (key, header) pairs; missing values print as ``-``."""
    lines = ["| " + " | ".join(header for _, header in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_md(row.get(key)) for key, _ in columns) + " |")
    return "\n".join(lines) + "\n"


def _md(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def write_text(text: str, path: str | os.PathLike | None) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text, encoding="utf-8")
        print(f"wrote {path}")
