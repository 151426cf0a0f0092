#!/usr/bin/env python
"""Compare the multi-task methods: train every weighting method and sharing mode for the same budget, evaluate,
and print delta_m against single-task baselines trained the same way, with the time per training step.

    python tools/compare_methods.py --config configs/synthetic_driving.yaml --steps 200 --out runs/compare \\
        model.backbone.name=resnet18 data.batch_size=4 "data.image_size=[96,192]"

Runs, in order: one single-task baseline per task (equal weighting), every method in --methods with hard sharing,
then every mode in --sharing (other than hard) with --sharing-method. Each run goes to <out>/<name>/ (config,
metrics.json, train_log.jsonl, checkpoints); a finished run is reused, so an interrupted comparison continues
where it stopped. The table is printed and written to <out>/comparison.md and <out>/comparison.json.

delta_m (Maninis et al. 2019) is the mean over tasks of the mean relative change of each task's metrics against its
single-task baseline, in percent, signs such that higher is better. A metric whose baseline is 0 (e.g. a detection
mAP that has not left 0 in a short run) has no relative change and is left out, and the table says so.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Mapping

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perception.utils.cli import run_tool, tool_parser  # noqa: E402

METHODS = ["equal", "uncertainty", "dwa", "gradnorm", "rlw", "pcgrad", "mgda", "cagrad", "aligned_mtl"]
SHARING = ["soft", "cross_stitch"]
# The metric shown per task in the table: its type's first headline metric, except where a short run says more
# with another (COCO mAP stays near 0 for long; mAP50 moves first).
TABLE_METRIC = {"detection": "mAP50"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = tool_parser(__doc__)
    parser.add_argument("--config", default="configs/synthetic_driving.yaml", help="the multi-task config")
    parser.add_argument("--steps", type=int, default=200, help="training steps of every run")
    parser.add_argument("--out", default="runs/compare", help="directory of the runs and the table")
    parser.add_argument("--methods", nargs="+", default=METHODS, help="weighting.method values to compare")
    parser.add_argument("--sharing", nargs="*", default=SHARING, help="model.sharing modes besides hard")
    parser.add_argument("--sharing-method", default="equal", help="weighting of the sharing-mode runs")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="one run per seed; the table averages")
    parser.add_argument("--table-only", action="store_true",
                        help="train nothing: tabulate the runs under --out that have finished")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides applied to every run")
    argv = list(sys.argv[1:] if argv is None else argv)
    # key=value words are overrides wherever they stand (so that they may follow --methods / --sharing lists).
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    args = parser.parse_args([a for a in argv if a not in overrides])
    args.overrides = list(args.overrides) + overrides
    return args


def run_plan(args: argparse.Namespace, tasks: Mapping[str, dict]) -> list[dict]:
    """Every run: name, kind and its own overrides (a baseline also its one task, in the mapping form).

    Args:
        tasks: the config's tasks as ``model.tasks`` in the mapping form (name -> {type, **settings}).
    """
    plan = [{"name": f"single_{t}", "kind": "baseline", "task": t, "tasks": {t: dict(spec)},
             "overrides": ["weighting.method=equal"]} for t, spec in tasks.items()]
    plan += [{"name": f"method_{m}", "kind": "method", "method": m, "sharing": "hard",
              "overrides": [f"weighting.method={m}"]} for m in args.methods]
    plan += [{"name": f"sharing_{s}", "kind": "sharing", "method": args.sharing_method, "sharing": s,
              "overrides": [f"weighting.method={args.sharing_method}", f"model.sharing={s}"]}
             for s in args.sharing if s != "hard"]
    return plan


def train_run(args: argparse.Namespace, entry: dict, seed: int) -> Path | None:
    """Train one run (or reuse a finished one); returns its directory (None: not finished, with --table-only)."""
    from perception.config import load_config
    from perception.engine.trainer import train

    run_dir = Path(args.out) / f"seed{seed}" / entry["name"]
    if (run_dir / "metrics.json").exists() and (run_dir / "done").exists():
        return run_dir
    if args.table_only:
        return None
    overrides = list(args.overrides) + entry["overrides"] + [
        f"train.max_steps={args.steps}", f"train.eval_interval={args.steps}", f"output_dir={run_dir}",
        f"seed={seed}"]
    cfg = load_config(args.config, overrides)
    described = list(entry["overrides"])
    if "tasks" in entry:  # one task of the config (an override could only add to a mapping of tasks)
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, tasks=entry["tasks"]))
        cfg.model.validate()
        described.append(f"model.tasks=[{', '.join(entry['tasks'])}]")
    print(f"--- {entry['name']} (seed {seed}): {' '.join(described)}", flush=True)
    start = time.perf_counter()
    train(cfg)
    (run_dir / "done").write_text(f"{time.perf_counter() - start:.1f}\n", encoding="utf-8")
    return run_dir


def seconds_per_step(run_dir: Path) -> float:
    """Median training time per step over the log windows (the first, which includes warm-up, left out)."""
    rates = []
    for line in (run_dir / "train_log.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if "steps_per_s" in record:
            rates.append(record["steps_per_s"])
    rates = sorted(rates[1:] or rates)
    return 1.0 / rates[len(rates) // 2] if rates else float("nan")


def gain(metrics: dict, baseline: dict, signs: dict[str, int]) -> tuple[dict, list[str]]:
    """delta_m of ``metrics`` against ``baseline``, leaving out metrics whose baseline is 0 (named in the list)."""
    from perception.metrics.multitask import delta_m

    usable = {k: s for k, s in signs.items() if k in metrics and k in baseline and float(baseline[k]) != 0.0}
    dropped = [k for k in signs if k in metrics and k not in usable]
    return (delta_m(metrics, baseline, usable) if usable else {"delta_m": float("nan")}), dropped


def _main(argv=None) -> int:
    args = parse_args(argv)
    from perception.config import load_config
    from perception.engine.evaluator import delta_m_metrics
    from perception.tasks import tasks_to_spec

    base_cfg = load_config(args.config, list(args.overrides))
    specs = base_cfg.model.build_tasks()
    tasks = list(specs)
    signs = delta_m_metrics(base_cfg.eval, specs)
    headline = table_metrics(specs)
    plan = run_plan(args, tasks_to_spec(specs))
    results: dict[str, list[dict]] = {}
    for seed in args.seeds:
        baseline: dict[str, float] = {}
        for entry in plan:
            run_dir = train_run(args, entry, seed)
            if run_dir is None:
                continue
            metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
            record = {"metrics": metrics, "s_per_step": seconds_per_step(run_dir)}
            if entry["kind"] == "baseline":
                baseline.update({k: v for k, v in metrics.items() if k.startswith(entry["task"] + "/")})
            elif len(baseline) and all(any(k.startswith(t + "/") for k in baseline) for t in tasks):
                record["gain"], record["dropped"] = gain(metrics, baseline, signs)
            else:
                record["gain"], record["dropped"] = {"delta_m": float("nan")}, ["(a single-task baseline is missing)"]
            results.setdefault(entry["name"], []).append(record)
    rows = table_rows(plan, results, headline)
    # The budget as trained (with --table-only, --steps may not be what the runs used).
    steps = sorted({int(r["metrics"]["step"]) for records in results.values() for r in records
                    if "step" in r["metrics"]}) or [args.steps]
    text = format_table(rows, headline, args, base_cfg, steps)
    print(text)
    out = Path(args.out)
    (out / "comparison.md").write_text(text + "\n", encoding="utf-8")
    (out / "comparison.json").write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2),
                                         encoding="utf-8")
    print(f"wrote {out / 'comparison.md'}")
    return 0


def _mean(values) -> float:
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else float("nan")


def table_metrics(tasks: Mapping[str, Any]) -> dict[str, str]:
    """Task name -> the metric key shown for it (``<name>/<metric>``)."""
    return {name: f"{name}/{TABLE_METRIC.get(task.TYPE, task.HEADLINE[0] if task.HEADLINE else '')}"
            for name, task in tasks.items()}


def table_rows(plan: list[dict], results: dict[str, list[dict]], headline: Mapping[str, str]) -> list[dict]:
    """One row per finished run: the seeds' means of its headline metrics and gains.

    Args:
        headline: task name -> the metric key shown for it.
    """
    tasks = list(headline)
    rows = []
    for entry in plan:
        records = results.get(entry["name"])
        if not records:
            continue
        row = {"run": entry["name"], "method": entry.get("method", "equal"), "sharing": entry.get("sharing", "-"),
               "s_per_step": _mean(r["s_per_step"] for r in records)}
        for task in tasks:
            key = headline[task]
            values = [r["metrics"][key] for r in records if key in r["metrics"]]
            row[key] = _mean(values) if values else None
        if entry["kind"] != "baseline":
            row["delta_m"] = _mean(r["gain"]["delta_m"] for r in records)
            for task in tasks:
                row[f"delta_m/{task}"] = _mean(r["gain"].get(f"delta_m/{task}", float("nan")) for r in records)
            row["dropped"] = sorted({k for r in records for k in r["dropped"]})
        rows.append(row)
    return rows


def format_table(rows: list[dict], headline: Mapping[str, str], args: argparse.Namespace, cfg,
                 steps: list[int] | None = None) -> str:
    import platform

    import torch

    tasks = list(headline)
    heads = [headline[t] for t in tasks]
    columns = ["run", "method", "sharing", "delta_m %"] + [f"delta_m/{t} %" for t in tasks] + heads + ["s/step"]
    budget = "/".join(str(s) for s in (steps or [args.steps]))
    lines = [f"Budget: {budget} steps per run, seeds {args.seeds}, config {args.config} "
             f"{' '.join(args.overrides)}; backbone {cfg.model.backbone.name}, batch {cfg.data.batch_size}, "
             f"image {cfg.data.image_size[0]}x{cfg.data.image_size[1]}; machine {platform.machine()}, "
             f"{torch.get_num_threads()} torch threads, {'CUDA' if torch.cuda.is_available() else 'CPU'}.", "",
             "| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]

    def fmt(v, digits=2):
        if v is None:
            return "-"
        return f"{v:+.{digits}f}" if digits == 2 else f"{v:.{digits}f}"

    dropped = set()
    for r in rows:
        cells = [r["run"], r["method"], r["sharing"], fmt(r.get("delta_m"))]
        cells += [fmt(r.get(f"delta_m/{t}")) for t in tasks]
        cells += [fmt(r.get(k), 4) for k in heads] + [fmt(r["s_per_step"], 3)]
        lines.append("| " + " | ".join(cells) + " |")
        dropped.update(r.get("dropped", []))
    if dropped:
        lines.append("")
        lines.append(f"Left out of delta_m (single-task baseline 0): {', '.join(sorted(dropped))}.")
    return "\n".join(lines)


def main(argv=None) -> int:
    """Compare; a user error ends with one ``error:`` line and exit code 2 (``--debug``: with the traceback)."""
    return run_tool(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
