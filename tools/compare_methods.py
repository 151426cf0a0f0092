#!/usr/bin/env python
"""Compare the multi-task methods: train every weighting method and sharing mode for the same budget over several
seeds, evaluate, and tabulate delta_m against single-task baselines trained the same way, ranked, with its spread
and the time per training step.

    python tools/compare_methods.py --config configs/compare_budget.yaml --out runs/compare --jobs 2

Runs, for every seed: one single-task baseline per task (equal weighting), every method in --methods with hard
sharing, then every mode in --sharing (other than hard) with --sharing-method. --methods and --sharing default to
every name the toolkit registers (``perception.mtl.WEIGHTING_METHODS`` but ``fixed``; the ``model.sharing``
values), so a method or mode added there joins the table. Each run goes to <out>/seed<S>/<name>/ (config.yaml,
metrics.json, train_log.jsonl, ``done``; checkpoints with --keep-checkpoints); a finished run is reused, so the
table can be built incrementally and an interrupted comparison continues where it stopped. ``--jobs 2`` trains
two runs at a time, as separate processes (each with ``--threads`` torch threads, default: the CPU count divided
by the jobs).

``--groups a+b ...`` adds a row per group of tasks (one network trained on those tasks alone, with
--sharing-method, its delta_m over its own tasks) and a table of the task groupings they make possible: every split of
the tasks into networks whose every group has a row (a task alone: its single-task baseline; all the tasks:
method_<--sharing-method>), scored per seed as the mean over the tasks of each one's change in the network that
serves it. It checks a grouping chosen from the task affinity (tools/task_groups.py) by training it.

Writes <out>/comparison.md (the table), comparison.json (every seed's values), comparison_delta_m.png (delta_m
per row with its spread) and comparison_weights.png (the logged loss weights per task over the steps of every
weighting method, first seed). ``--table-only`` trains nothing: it tabulates the finished runs and names the
missing ones.

delta_m (Maninis et al. 2019) is the mean over tasks of the mean relative change of each task's metrics against its
single-task baseline, in percent, signs such that higher is better. Each seed's run is compared with the single-task
result averaged over the seeds (one fixed reference, as LibMTL's ``base_result`` and the Nash-MTL and FAMO papers
use); a row shows the mean and standard deviation of those per-seed values. A metric whose baseline is 0 (e.g. a
detection mAP that has not left 0 in a short run) has no relative change and is left out, and the table says so.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perception.utils.cli import run_tool, tool_parser  # noqa: E402

# Weighting methods that need settings of their own to mean anything (``fixed``: the weights) are not run by default.
NOT_BY_DEFAULT = ("fixed",)
SHARING_METHOD = "equal"
# The metric shown per task in the table: its type's first headline metric, except where a short run says more
# with another (COCO mAP stays near 0 for long; mAP50 moves first).
TABLE_METRIC = {"detection": "mAP50"}
# What the header reports of the runs' saved configs: label -> path in config.yaml.
BUDGET_KEYS = {"backbone": ("model", "backbone", "name"), "pretrained": ("model", "backbone", "pretrained"),
               "image size": ("data", "image_size"), "steps": ("train", "max_steps"),
               "batch size": ("data", "batch_size"), "lr": ("train", "lr"), "optimizer": ("train", "optimizer"),
               "schedule": ("train", "schedule")}


def known_methods() -> tuple[str, ...]:
    """The ``weighting.method`` names the toolkit registers."""
    from perception.mtl import WEIGHTING_METHODS

    return tuple(WEIGHTING_METHODS)


def known_sharing() -> tuple[str, ...]:
    """The ``model.sharing`` values the model config accepts (its ``Literal``)."""
    import typing

    from perception.models.config import ModelConfig

    return tuple(typing.get_args(typing.get_type_hints(ModelConfig)["sharing"]))


def parse_args(argv=None) -> argparse.Namespace:
    parser = tool_parser(__doc__)
    parser.add_argument("--config", default="configs/compare_budget.yaml", help="the multi-task config")
    parser.add_argument("--steps", type=int, default=0,
                        help="training steps of every run (0: the config's train.max_steps)")
    parser.add_argument("--out", default="runs/compare", help="directory of the runs and the table")
    parser.add_argument("--methods", nargs="+", default=None,
                        help="weighting.method values to compare (default: every registered one but fixed)")
    parser.add_argument("--sharing", nargs="*", default=None,
                        help="model.sharing modes besides hard (default: every one)")
    parser.add_argument("--sharing-method", default=SHARING_METHOD, help="weighting of the sharing-mode runs")
    parser.add_argument("--groups", nargs="*", default=[],
                        help="groups of tasks trained as one network each, e.g. segmentation+depth (task names "
                             "joined by +; the groupings they make are tabulated)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="one run per seed and row")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at the same time (separate processes)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads per run (0: as set by OMP_NUM_THREADS, or CPUs / jobs with --jobs > 1)")
    parser.add_argument("--keep-checkpoints", action="store_true",
                        help="keep each run's last.pt / best.pt (by default removed once its metrics are written)")
    parser.add_argument("--table-only", action="store_true",
                        help="train nothing: tabulate the runs under --out that have finished, name the others")
    parser.add_argument("--run", default="", help=argparse.SUPPRESS)  # NAME:SEED, one run (a --jobs worker)
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides applied to every run")
    argv = list(sys.argv[1:] if argv is None else argv)
    # key=value words are overrides wherever they stand (so that they may follow --methods / --sharing lists).
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    args = parser.parse_args([a for a in argv if a not in overrides])
    args.overrides = list(args.overrides) + overrides
    args.argv = argv
    methods, modes = known_methods(), known_sharing()
    if args.methods is None:
        args.methods = [m for m in methods if m not in NOT_BY_DEFAULT]
    if args.sharing is None:
        args.sharing = [s for s in modes if s != "hard"]
    for option, names, allowed in (("--methods", args.methods, methods), ("--sharing", args.sharing, modes),
                                   ("--sharing-method", [args.sharing_method], methods)):
        unknown = [n for n in names if n not in allowed]
        if unknown:
            raise ValueError(f"{option}: unknown {', '.join(map(repr, unknown))}; known: {', '.join(allowed)}")
    if len(set(args.seeds)) != len(args.seeds):
        raise ValueError(f"--seeds: {args.seeds} repeats a seed")
    if args.jobs < 1 or args.threads < 0 or args.steps < 0:
        raise ValueError(f"--jobs {args.jobs} / --threads {args.threads} / --steps {args.steps}: expected "
                         "jobs >= 1, threads >= 0 and steps >= 0")
    return args


def run_plan(args: argparse.Namespace, tasks: Mapping[str, dict]) -> list[dict]:
    """Every row: name, kind and its own overrides (a baseline also its one task, in the mapping form).

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
    for text in args.groups:
        group = [t for t in tasks if t in text.split("+")]  # in the config's order
        unknown = [t for t in text.split("+") if t not in tasks]
        if unknown or len(group) < 2 or len(group) == len(tasks) or len(set(text.split("+"))) != len(group):
            raise ValueError(f"--groups: {text!r} is not two or more (but not all) distinct task names of the config "
                             f"joined by '+'; its tasks: {', '.join(tasks)}")
        plan.append({"name": "group_" + "+".join(group), "kind": "group", "method": args.sharing_method,
                     "sharing": "hard", "tasks": {t: dict(tasks[t]) for t in group},
                     "overrides": [f"weighting.method={args.sharing_method}"]})
    return plan


def run_dir_of(args: argparse.Namespace, name: str, seed: int) -> Path:
    return Path(args.out) / f"seed{seed}" / name


def is_finished(run_dir: Path) -> bool:
    return (run_dir / "metrics.json").is_file() and (run_dir / "done").is_file()


def run_config(args: argparse.Namespace, entry: dict, seed: int):
    """The config of one run: --config, the overrides, the row's own, the budget, the seed and the run directory."""
    from perception.config import load_config

    budget = [f"train.max_steps={args.steps}"] if args.steps else []
    # One evaluation, at the end (unless the overrides say otherwise).
    overrides = ["train.eval_interval=0"] + list(args.overrides) + entry["overrides"] + budget + [
        f"output_dir={run_dir_of(args, entry['name'], seed)}", f"seed={seed}"]
    cfg = load_config(args.config, overrides)
    if "tasks" in entry:  # one task of the config (an override could only add to a mapping of tasks)
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, tasks=entry["tasks"]))
        cfg.model.validate()
    return cfg


def train_run(args: argparse.Namespace, entry: dict, seed: int) -> Path | None:
    """Train one run in this process (or reuse a finished one); returns its directory (None: not finished, with
    --table-only)."""
    import torch

    from perception.engine.trainer import train

    run_dir = run_dir_of(args, entry["name"], seed)
    if is_finished(run_dir):
        return run_dir
    if args.table_only:
        return None
    cfg = run_config(args, entry, seed)
    described = list(entry["overrides"]) + ([f"model.tasks=[{', '.join(entry['tasks'])}]"] if "tasks" in entry
                                            else [])
    print(f"--- {entry['name']} (seed {seed}): {' '.join(described)}", flush=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    wall, cpu = time.perf_counter(), time.process_time()
    train(cfg)
    record = {"wall_s": round(time.perf_counter() - wall, 2), "cpu_s": round(time.process_time() - cpu, 2),
              "threads": torch.get_num_threads(), "jobs": int(os.environ.get("PERCEPTION_COMPARE_JOBS", "1")),
              "machine": machine_name(), "device": str(cfg.train.device)}
    if not args.keep_checkpoints:  # the table needs the metrics only; 60 runs of checkpoints are gigabytes
        for name in ("last.pt", "best.pt"):
            (run_dir / name).unlink(missing_ok=True)
    write_atomic(run_dir / "done", json.dumps(record) + "\n")
    return run_dir


def machine_name() -> str:
    """The CPU (model name from /proc/cpuinfo where there is one) and its logical core count."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} logical CPUs"


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def worker_command(args: argparse.Namespace, name: str, seed: int, threads: int) -> list[str]:
    """The command line of a ``--jobs`` worker: this tool, as invoked, training the one run ``name`` of ``seed``."""
    words, skip = [], False
    for word in args.argv:  # this invocation's words but --jobs / --threads (the worker gets its own)
        if skip or word in ("--jobs", "--threads") or word.startswith(("--jobs=", "--threads=")):
            skip = not skip and word in ("--jobs", "--threads")
            continue
        words.append(word)
    return [sys.executable, str(Path(__file__).resolve()), *words, "--threads", str(threads),
            "--run", f"{name}:{seed}"]


def train_parallel(args: argparse.Namespace, todo: list[tuple[dict, int]]) -> list[str]:
    """Train ``todo`` as ``--jobs`` processes at a time (see :func:`worker_command`); returns the runs that failed
    (the output of each run is in <run dir>.log)."""
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PERCEPTION_COMPARE_JOBS": str(args.jobs)}
    pending, running, failed = list(todo), [], []
    while pending or running:
        while pending and len(running) < args.jobs:
            entry, seed = pending.pop(0)
            log = run_dir_of(args, entry["name"], seed).with_suffix(".log")
            log.parent.mkdir(parents=True, exist_ok=True)
            print(f"--- {entry['name']} (seed {seed}) -> {log}", flush=True)
            handle = open(log, "w", encoding="utf-8")
            process = subprocess.Popen(worker_command(args, entry["name"], seed, threads), stdout=handle,
                                       stderr=subprocess.STDOUT, env=env)
            running.append((process, handle, f"seed{seed}/{entry['name']}", log))
        time.sleep(0.2)
        for item in list(running):
            process, handle, name, log = item
            if process.poll() is not None:
                handle.close()
                running.remove(item)
                if process.returncode:
                    failed.append(name)
                    print(f"--- {name} failed (exit {process.returncode}); see {log}", flush=True)
    return failed


def seconds_per_step(run_dir: Path) -> float:
    """Median training time per step over the log windows (the first, which includes warm-up, left out)."""
    rates = []
    for line in (run_dir / "train_log.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if "steps_per_s" in record:
            rates.append(record["steps_per_s"])
    rates = sorted(rates[1:] or rates)
    return 1.0 / rates[len(rates) // 2] if rates else float("nan")


def weight_curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Task -> (step, logged ``weight/<task>``) over a run's log windows."""
    curves: dict[str, list[tuple[int, float]]] = {}
    path = run_dir / "train_log.jsonl"
    if not path.is_file():
        return curves
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        for key, value in record.items():
            if key.startswith("weight/") and isinstance(value, (int, float)):
                curves.setdefault(key[len("weight/"):], []).append((int(record["step"]), float(value)))
    return curves


def read_done(run_dir: Path) -> dict:
    """The ``done`` record: wall and CPU seconds, threads, jobs, machine (an older file holds the wall time only)."""
    value = json.loads((run_dir / "done").read_text(encoding="utf-8"))
    return value if isinstance(value, dict) else {"wall_s": float(value)}


def gain(metrics: dict, baseline: dict, signs: dict[str, int]) -> tuple[dict, list[str]]:
    """delta_m of ``metrics`` against ``baseline``, leaving out metrics whose baseline is 0 (named in the list)."""
    from perception.metrics.multitask import delta_m

    usable = {k: s for k, s in signs.items() if k in metrics and k in baseline and float(baseline[k]) != 0.0}
    dropped = [k for k in signs if k in metrics and k not in usable]
    return (delta_m(metrics, baseline, usable) if usable else {"delta_m": float("nan")}), dropped


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; NaN for fewer than two values) of the finite ``values``."""
    values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not values:
        return float("nan"), float("nan")
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, float("nan")
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def mean_baseline(plan: list[dict], runs: Mapping[tuple[str, int], dict]) -> tuple[dict[str, float], dict]:
    """The single-task reference: every baseline metric averaged over the seeds that finished.

    Returns:
        metric -> mean, and task -> the seeds it was averaged over.
    """
    reference: dict[str, float] = {}
    seeds_of: dict[str, list[int]] = {}
    for entry in plan:
        if entry["kind"] != "baseline":
            continue
        task = entry["task"]
        records = sorted((seed, r) for (name, seed), r in runs.items() if name == entry["name"])
        seeds_of[task] = [seed for seed, _ in records]
        keys = {k for _, r in records for k in r["metrics"] if k.startswith(task + "/")}
        for key in sorted(keys):
            values = [r["metrics"][key] for _, r in records if isinstance(r["metrics"].get(key), (int, float))]
            if values:
                reference[key] = sum(float(v) for v in values) / len(values)
    return reference, seeds_of


def table_rows(plan: list[dict], runs: Mapping[tuple[str, int], dict], headline: Mapping[str, str],
               signs: Mapping[str, int]) -> list[dict]:
    """One row per planned run with at least one finished seed: per-seed and mean +- std of delta_m, of each
    task's delta_m and of the headline metrics; the median s/step. Baselines first, then ranked by mean delta_m.

    A baseline row's ``delta_m/<task>`` is each seed's change against the mean baseline: mean 0, its std the
    seed-to-seed noise of that task.

    Args:
        runs: (row name, seed) -> {"metrics", "s_per_step", "done"} of the finished runs.
        headline: task name -> the metric key shown for it.
        signs: metric key -> +1 / -1, the metrics delta_m uses.
    """
    tasks = list(headline)
    reference, baseline_seeds = mean_baseline(plan, runs)
    complete = all(baseline_seeds.get(t) for t in tasks)
    baselines, groups, others = [], [], []
    for entry in plan:
        records = sorted((seed, r) for (name, seed), r in runs.items() if name == entry["name"])
        if not records:
            continue
        row = {"run": entry["name"], "kind": entry["kind"], "method": entry.get("method", "equal"),
               "sharing": entry.get("sharing", "-"), "seeds": [seed for seed, _ in records],
               "s_per_step": _median([r["s_per_step"] for _, r in records]),
               "wall_s": _median([r["done"].get("wall_s", float("nan")) for _, r in records]),
               "cpu_s": _median([r["done"].get("cpu_s", float("nan")) for _, r in records]),
               "per_seed": {}, "dropped": []}
        for task in tasks:
            key = headline[task]
            row[key] = mean_std([r["metrics"].get(key) for _, r in records if key in r["metrics"]])
            row["per_seed"][key] = [r["metrics"].get(key) for _, r in records]
        gain_keys = ["delta_m"] + [f"delta_m/{t}" for t in tasks]
        if entry["kind"] == "baseline":
            own = {k: s for k, s in signs.items() if k.startswith(entry["task"] + "/")}
            gains = [gain(r["metrics"], reference, own) for _, r in records]
            gain_keys = [f"delta_m/{entry['task']}"]
        elif entry["kind"] == "group":  # its own tasks only
            members = list(entry["tasks"])
            own = {k: s for k, s in signs.items() if k.split("/", 1)[0] in members}
            gains = ([gain(r["metrics"], reference, own) for _, r in records]
                     if all(baseline_seeds.get(t) for t in members) else [({}, []) for _ in records])
            gain_keys = ["delta_m"] + [f"delta_m/{t}" for t in members]
        elif complete:
            gains = [gain(r["metrics"], reference, dict(signs)) for _, r in records]
        else:  # no reference for some task: no delta_m (the header names the task)
            gains = [({}, []) for _ in records]
        for key in gain_keys:
            values = [g.get(key, float("nan")) for g, _ in gains]
            row["per_seed"][key] = values
            row[key] = mean_std(values)
        row["dropped"] = sorted({k for _, dropped in gains for k in dropped})
        if entry["kind"] == "group":
            row["tasks"] = list(entry["tasks"])
        {"baseline": baselines, "group": groups}.get(entry["kind"], others).append(row)
    others.sort(key=lambda r: -r["delta_m"][0] if math.isfinite(r["delta_m"][0]) else math.inf)
    for rank, row in enumerate((r for r in others if math.isfinite(r["delta_m"][0])), 1):
        row["rank"] = rank
    return baselines + groups + others  # groups: delta_m over fewer tasks, not ranked with the whole networks


def grouping_rows(rows: list[dict], tasks: Sequence[str], whole: str) -> list[dict]:
    """Every split of ``tasks`` into networks whose every group has a row: a task alone its baseline
    (``single_<task>``), all the tasks the row ``whole``, any other group its ``group_<a>+<b>`` row.

    A split's value for a seed is the mean over the tasks of ``delta_m/<task>`` in the row that serves the task
    (seeds that every serving row has); mean +- std over those seeds, ranked by the mean. Returns [] when no split
    but the two trivial ones (one network, or one per task) has its rows.
    """
    from perception.mtl.affinity import set_partitions

    by_tasks = {}
    for row in rows:
        members = (row["tasks"] if row["kind"] == "group" else [row["run"][len("single_"):]]
                   if row["kind"] == "baseline" else list(tasks) if row["run"] == whole else None)
        if members is not None:
            by_tasks[frozenset(members)] = row
    if not any(r["kind"] == "group" for r in rows):
        return []
    out = []
    for blocks in set_partitions(len(tasks), len(tasks)):
        groups = [[tasks[i] for i in block] for block in blocks]
        serving = [by_tasks.get(frozenset(g)) for g in groups]
        if any(r is None for r in serving):
            continue
        seeds = sorted(set.intersection(*(set(r["seeds"]) for r in serving)))
        values = []
        for seed in seeds:
            changes = [r["per_seed"][f"delta_m/{t}"][r["seeds"].index(seed)] for g, r in zip(groups, serving)
                       for t in g]
            values.append(sum(changes) / len(changes) if all(math.isfinite(c) for c in changes) else float("nan"))
        out.append({"split": " + ".join("{" + ", ".join(g) + "}" for g in groups), "networks": len(groups),
                    "runs": [r["run"] for r in serving], "seeds": seeds, "per_seed": values,
                    "delta_m": mean_std(values)})
    out.sort(key=lambda r: -r["delta_m"][0] if math.isfinite(r["delta_m"][0]) else math.inf)
    return out


def format_groupings(splits: list[dict]) -> str:
    """The groupings table (markdown)."""
    lines = ["", "Task groupings: each task served by the network of its group; delta_m % = mean over the tasks of "
             "each one's change there, per seed, mean ± std over the seeds all its runs have.", "",
             "| split | networks | runs | seeds | delta_m % |", "|---|---|---|---|---|"]
    for r in splits:
        mean, std = r["delta_m"]
        value = "-" if not math.isfinite(mean) else f"{mean:+.2f}" + (f" ± {std:.2f}" if math.isfinite(std) else "")
        lines.append(f"| {r['split']} | {r['networks']} | {', '.join(r['runs'])} | {len(r['seeds'])} | {value} |")
    return "\n".join(lines)


def _median(values: Sequence[float]) -> float:
    values = sorted(float(v) for v in values if v is not None and math.isfinite(float(v)))
    if not values:
        return float("nan")
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def _get(data: Mapping, path: tuple[str, ...]) -> Any:
    for part in path:
        if not isinstance(data, Mapping) or part not in data:
            return None
        data = data[part]
    return data


def _show(label: str, value: Any) -> str:
    if label == "image size" and isinstance(value, (list, tuple)) and len(value) == 2:
        return f"{value[0]}x{value[1]}"
    if label == "pretrained":
        return "pretrained" if value else "from scratch"
    return str(value)


def trained_with(configs: Mapping[str, Mapping]) -> tuple[dict[str, str], list[str]]:
    """What the runs were trained with, read from their saved configs.

    Args:
        configs: run label (``seed0/method_equal``) -> its config.yaml as a dict.

    Returns:
        label (``backbone``, ``image size``, ...) -> the value all runs share, or the values with the runs that
        have each where they disagree; and the labels they disagree on.
    """
    values: dict[str, str] = {}
    disagree = []
    for label, path in BUDGET_KEYS.items():
        seen: dict[str, list[str]] = {}
        for run, cfg in configs.items():
            seen.setdefault(_show(label, _get(cfg, path)), []).append(run)
        if len(seen) == 1:
            values[label] = next(iter(seen))
        elif seen:
            disagree.append(label)
            values[label] = " / ".join(
                f"{v} ({len(runs)} run{'s' * (len(runs) > 1)}: {', '.join(sorted(runs)[:3])}"
                f"{', ...' if len(runs) > 3 else ''})" for v, runs in sorted(seen.items(), key=lambda kv: -len(kv[1])))
    val = {}
    for run, cfg in configs.items():
        sources = _get(cfg, ("data", "val")) or []
        counts = [_get(s, ("options", "num_samples")) for s in sources if isinstance(s, Mapping)]
        val[run] = str(sum(counts)) if counts and all(isinstance(c, int) for c in counts) else "?"
    if len(set(val.values())) == 1:
        values["val images"] = next(iter(val.values()))
    elif val:
        disagree.append("val images")
        values["val images"] = " / ".join(sorted(set(val.values())))
    return values, disagree


def missing_runs(plan: list[dict], seeds: Sequence[int], runs: Mapping[tuple[str, int], dict]) -> dict[str, list]:
    """Row name -> the seeds it has not finished."""
    missing = {}
    for entry in plan:
        absent = [s for s in seeds if (entry["name"], s) not in runs]
        if absent:
            missing[entry["name"]] = absent
    return missing


def timing_note(runs: Mapping[tuple[str, int], dict]) -> str:
    """How the runs were timed (threads, runs at a time, machine), from their ``done`` records."""
    kinds = {}
    for record in runs.values():
        done = record["done"]
        if "threads" in done:
            key = (done["threads"], done.get("jobs", 1), done.get("machine", "?"), done.get("device", "?"))
            kinds[key] = kinds.get(key, 0) + 1
    if not kinds:
        return "timed on an unrecorded machine"
    return "; ".join(f"{threads} torch thread(s) per run, {jobs} run(s) at a time, {machine}, device {device}"
                     + (f" ({n} runs)" if len(kinds) > 1 else "")
                     for (threads, jobs, machine, device), n in sorted(kinds.items(), key=lambda kv: -kv[1]))


def format_table(rows: list[dict], headline: Mapping[str, str], header: Mapping[str, Any]) -> str:
    """The markdown table with its header.

    Args:
        header: ``trained_with``, ``disagree``, ``seeds``, ``timing``, ``config``, ``overrides``, ``missing``,
            ``baseline_seeds`` (see :func:`build_table`).
    """
    tasks = list(headline)
    heads = [headline[t] for t in tasks]
    tw = header["trained_with"]
    lines = [
        f"Trained with (read from the runs' config.yaml): backbone {tw.get('backbone', '?')} "
        f"({tw.get('pretrained', '?')}), image {tw.get('image size', '?')}, {tw.get('steps', '?')} steps, "
        f"batch {tw.get('batch size', '?')}, {tw.get('optimizer', '?')} lr {tw.get('lr', '?')} "
        f"({tw.get('schedule', '?')}), {tw.get('val images', '?')} val images; seeds "
        f"{', '.join(map(str, header['seeds'])) or '-'}; config {header['config']}"
        f"{' ' + ' '.join(header['overrides']) if header['overrides'] else ''}.",
    ]
    if header["disagree"]:
        lines.append(f"**The runs disagree on: {', '.join(header['disagree'])}** - their rows are not comparable.")
    lines += [
        "delta_m %: each seed's run against the single-task baselines averaged over their seeds "
        f"({'; '.join(f'{t}: {len(s)}' for t, s in header['baseline_seeds'].items())} seeds; the LibMTL / Nash-MTL "
        "convention), mean ± std (n - 1) over the row's seeds; rows ranked by mean delta_m. A baseline row's "
        "delta_m/<task> is its seeds' spread around their mean (the noise floor).",
        f"s/step: median over a run's log windows (first left out), median over seeds; wall: median run time "
        f"including evaluation; {header['timing']}.", ""]
    columns = (["rank", "run", "method", "sharing", "seeds", "delta_m %"] + [f"delta_m/{t} %" for t in tasks]
               + heads + ["s/step", "wall s"])
    lines += ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]

    def pm(value: tuple[float, float] | None, digits: int, sign: bool) -> str:
        if value is None or not math.isfinite(value[0]):
            return "-"
        spec = f"{'+' if sign else ''}.{digits}f"
        return format(value[0], spec) + (f" ± {value[1]:.{digits}f}" if math.isfinite(value[1]) else "")

    dropped = set()
    for r in rows:
        cells = [str(r.get("rank", "-")), r["run"], r["method"], r["sharing"], str(len(r["seeds"])),
                 pm(r.get("delta_m"), 2, True)]
        cells += [pm(r.get(f"delta_m/{t}"), 2, True) for t in tasks]
        cells += [pm(r.get(k), 4, False) for k in heads]
        cells += [f"{r['s_per_step']:.3f}" if math.isfinite(r["s_per_step"]) else "-",
                  f"{r['wall_s']:.0f}" if math.isfinite(r["wall_s"]) else "-"]
        lines.append("| " + " | ".join(cells) + " |")
        dropped.update(r.get("dropped", []))
    if dropped:
        lines += ["", f"Left out of delta_m (single-task baseline 0): {', '.join(sorted(dropped))}."]
    unmatched = [t for t in tasks if not header["baseline_seeds"].get(t)]
    if unmatched:
        lines += ["", f"No delta_m: no finished single-task baseline of {', '.join(unmatched)}."]
    if header["missing"]:
        lines += ["", "Missing (not finished): " + ", ".join(
            f"{name} (seed{'s' * (len(seeds) > 1)} {', '.join(map(str, seeds))})"
            for name, seeds in header["missing"].items()) + "."]
    return "\n".join(lines)


def plot_delta_m(rows: list[dict], tasks: Sequence[str], path: Path) -> None:
    """delta_m and each task's delta_m per ranked row: mean ± std (bars) and every seed (dots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranked = [r for r in rows if r["kind"] not in ("baseline", "group")]  # a group's delta_m covers fewer tasks
    keys = ["delta_m"] + [f"delta_m/{t}" for t in tasks]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys) + 1.5, 0.38 * max(len(ranked), 1) + 1.4),
                             sharey=True, squeeze=False)
    y = list(range(len(ranked)))
    for ax, key in zip(axes[0], keys):
        for i, row in enumerate(ranked):
            mean, std = row.get(key, (float("nan"), float("nan")))
            seeds = [v for v in row["per_seed"].get(key, []) if v is not None and math.isfinite(v)]
            ax.scatter(seeds, [i] * len(seeds), s=12, color="tab:blue", alpha=0.6, zorder=3)
            if math.isfinite(mean):
                ax.errorbar([mean], [i], xerr=[std if math.isfinite(std) else 0.0], fmt="D", color="black",
                            markersize=4, capsize=3, zorder=4)
        ax.axvline(0.0, color="grey", linewidth=0.8)
        ax.set_title(f"{key} %", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(y)
    axes[0][0].set_yticklabels([r["run"] for r in ranked], fontsize=8)
    axes[0][0].invert_yaxis()
    fig.suptitle("delta_m against single-task baselines (diamond: mean ± std over seeds; dots: seeds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_weights(curves: Mapping[str, Mapping[str, list[tuple[int, float]]]], path: Path) -> None:
    """The logged loss weight of every task over the steps, one panel per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(curves) or ["(no weighting runs)"]
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(3.4 * cols, 6.0), 2.5 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for task, points in curves.get(name, {}).items():
            ax.plot([s for s, _ in points], [w for _, w in points], label=task, linewidth=1.2)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    for ax in axes.flat:
        if ax.get_lines():  # one legend: the tasks have the same colours in every panel
            ax.legend(fontsize=7)
            break
    fig.suptitle("logged loss weight per task (weight/<task>, one log window each)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_table(args: argparse.Namespace, plan: list[dict], headline: Mapping[str, str],
                signs: Mapping[str, int]) -> int:
    """Read the finished runs under --out, write comparison.md / .json and the two plots; prints the table."""
    import yaml

    runs: dict[tuple[str, int], dict] = {}
    configs: dict[str, dict] = {}
    for entry in plan:
        for seed in args.seeds:
            run_dir = run_dir_of(args, entry["name"], seed)
            if not is_finished(run_dir):
                continue
            runs[(entry["name"], seed)] = {
                "metrics": json.loads((run_dir / "metrics.json").read_text(encoding="utf-8")),
                "s_per_step": seconds_per_step(run_dir), "done": read_done(run_dir)}
            if (run_dir / "config.yaml").is_file():
                configs[f"seed{seed}/{entry['name']}"] = yaml.safe_load(
                    (run_dir / "config.yaml").read_text(encoding="utf-8"))
    rows = table_rows(plan, runs, headline, signs)
    values, disagree = trained_with(configs)
    _, baseline_seeds = mean_baseline(plan, runs)
    header = {"trained_with": values, "disagree": disagree, "config": args.config, "overrides": args.overrides,
              "seeds": sorted({int(c["seed"]) for c in configs.values() if "seed" in c}),
              "timing": timing_note(runs), "missing": missing_runs(plan, args.seeds, runs),
              "baseline_seeds": baseline_seeds}
    text = format_table(rows, headline, header)
    splits = grouping_rows(rows, list(headline), f"method_{args.sharing_method}")
    if splits:
        text += "\n" + format_groupings(splits)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.md").write_text(text + "\n", encoding="utf-8")
    settings = {k: v for k, v in vars(args).items() if k not in ("argv", "run")}
    data = _finite({"settings": settings, "header": header, "rows": rows, "groupings": splits})
    (out / "comparison.json").write_text(json.dumps(data, indent=2, allow_nan=False), encoding="utf-8")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(f"wrote {out / 'comparison.md'} and comparison.json; no plots: matplotlib is not installed "
              "(pip install -e '.[plot]')")
        return 0
    plot_delta_m(rows, list(headline), out / "comparison_delta_m.png")
    first = {}
    for entry in plan:
        seeds = [s for s in args.seeds if (entry["name"], s) in runs]
        if entry["kind"] == "method" and seeds:
            first[f"{entry['name']} (seed {seeds[0]})"] = weight_curves(run_dir_of(args, entry["name"], seeds[0]))
    plot_weights(first, out / "comparison_weights.png")
    print(f"wrote {out / 'comparison.md'}, comparison.json, comparison_delta_m.png, comparison_weights.png")
    return 0


def _finite(value: Any) -> Any:
    """``value`` with every NaN / inf float as None (strict JSON); (mean, std) pairs become lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def table_metrics(tasks: Mapping[str, Any]) -> dict[str, str]:
    """Task name -> the metric key shown for it (``<name>/<metric>``)."""
    return {name: f"{name}/{TABLE_METRIC.get(task.TYPE, task.HEADLINE[0] if task.HEADLINE else '')}"
            for name, task in tasks.items()}


def _main(argv=None) -> int:
    args = parse_args(argv)
    from perception.config import load_config
    from perception.engine.evaluator import delta_m_metrics
    from perception.tasks import tasks_to_spec

    base_cfg = load_config(args.config, list(args.overrides))
    specs = base_cfg.model.build_tasks()
    plan = run_plan(args, tasks_to_spec(specs))
    if args.run:  # one run, as a worker of --jobs
        name, _, seed = args.run.rpartition(":")
        entry = next((e for e in plan if e["name"] == name), None)
        if entry is None or not seed.lstrip("-").isdigit():
            raise ValueError(f"--run: {args.run!r} is not NAME:SEED of a planned run")
        train_run(args, entry, int(seed))
        return 0
    failed = []
    if not args.table_only:
        for entry in plan:  # every run's config is valid before anything trains
            run_config(args, entry, args.seeds[0])
        todo = [(e, s) for s in args.seeds for e in plan if not is_finished(run_dir_of(args, e["name"], s))]
        if args.jobs > 1:
            failed = train_parallel(args, todo)
        else:
            for entry, seed in todo:
                train_run(args, entry, seed)
    build_table(args, plan, table_metrics(specs), delta_m_metrics(base_cfg.eval, specs))
    if failed:
        print(f"error: {len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    """Compare; a user error ends with one ``error:`` line and exit code 2 (``--debug``: with the traceback)."""
    return run_tool(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
