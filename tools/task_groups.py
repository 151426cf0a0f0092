#!/usr/bin/env python
"""Should these tasks share a network? Task groupings from a run's inter-task affinity (Fifty et al. 2021).

    python tools/train.py --config configs/synthetic_driving.yaml train.affinity_interval=25 output_dir=runs/aff
    python tools/task_groups.py --affinity runs/aff/affinity.json --networks 2
    python tools/task_groups.py --affinity runs/aff_s0/affinity.json runs/aff_s1/affinity.json --networks 2
    python tools/task_groups.py --affinity runs/aff/affinity.json --networks 2 \\
        --config configs/synthetic_driving.yaml --out configs/groups        # + one training config per group

Prints the mean affinity matrix (Z(i->j): how much one step on task i's loss lowers task j's loss, in percent of
it; with several runs, their mean and each entry's range), a verdict per pair of tasks (helps / hurts, share or
not), and the best splits of the tasks into at most --networks groups, ranked by the paper's score: the sum over
tasks of the mean affinity their group's other members have onto them (a task alone scores 0). The search is exhaustive (up to 10 tasks). --overlap allows a task
in several groups (each such network trains it; it is served by the best one).

With --config (the training config of the run), --out receives one YAML per group of the best split: its
`_base_` is the training config, `model.tasks` the group (in the base's form, list or mapping) and `output_dir`
the base's with the group's names appended; `python tools/train.py --config <file>` trains that group as one
network. A bad input ends with one line `error: ...` and exit code 2.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perception.config import load_config, load_yaml_with_bases  # noqa: E402
from perception.mtl.affinity import (Grouping, best_overlapping, best_partitions, group_score,  # noqa: E402
                                     pair_verdicts, read_affinity)
from perception.utils.cli import run_tool, tool_parser  # noqa: E402


def _pct(value: float) -> str:
    return f"{100 * value:+.3g}%"


def format_matrix(tasks: list[str], z: list[list[float]],
                  ranges: list[list[tuple[float, float]]] | None = None) -> str:
    """The matrix (or, with ``ranges``, each entry's min .. max) as a text table, rows = the task stepped on,
    columns = the task measured."""
    cell = (lambda i, j: _pct(z[i][j])) if ranges is None else \
        (lambda i, j: f"{_pct(ranges[i][j][0])} .. {_pct(ranges[i][j][1])}")  # noqa: E731
    width = max(14, *(len(t) + 2 for t in tasks), *(len(cell(i, j)) + 2 for i in range(len(tasks))
                                                     for j in range(len(tasks))))
    lines = ["step on \\ loss of".ljust(18) + "".join(t.rjust(width) for t in tasks)]
    for i, name in enumerate(tasks):
        lines.append(name.ljust(18) + "".join(cell(i, j).rjust(width) for j in range(len(tasks))))
    return "\n".join(lines)


def format_grouping(rank: int, grouping: Grouping) -> str:
    groups = "  ".join("{" + ", ".join(g) + "}" for g in grouping.groups)
    parts = ", ".join(_pct(s) for s in grouping.group_scores)
    return f"  {rank}. {groups}   score {_pct(grouping.score)} (groups: {parts})"


def answer(tasks: list[str], z: list[list[float]], best: Grouping, networks: int) -> str:
    """The plain-words answer to "should these tasks share a network?"."""
    together = group_score(range(len(tasks)), z)
    if len(best.groups) == 1:
        return (f"yes: all {len(tasks)} tasks in one network scores best ({_pct(together)}); the affinity shows no "
                "split that would serve the tasks better")
    split = " and ".join("{" + ", ".join(g) + "}" for g in best.groups)
    alone = [g[0] for g in best.groups if len(g) == 1]
    text = (f"not all together: with up to {networks} networks the affinity prefers {split} ({_pct(best.score)}, "
            f"against {_pct(together)} for one shared network)")
    if alone:
        text += (f"; {', '.join(alone)} on its own: put into any of the other groups, the total score would be "
                 "lower")
    return text


def group_configs(config: Path, out: Path, groups: tuple[tuple[str, ...], ...]) -> list[Path]:
    """Write one training config per group into ``out`` (see the module's docstring); each is checked by
    loading it with the toolkit's config loader."""
    merged = load_yaml_with_bases(config)
    base = load_config(config)
    tasks = (merged.get("model") or {}).get("tasks", base.model.tasks)
    names = list(base.model.task_names)
    for group in groups:
        for name in group:
            if name not in names:
                raise ValueError(f"{config}: model.tasks has {names}, not the affinity's task {name!r} (was the "
                                 "affinity measured with another config?)")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for index, group in enumerate(groups, 1):
        stem = f"group{index}_{'_'.join(group)}"
        path = out / f"{stem}.yaml"
        run_dir = f"{base.output_dir.rstrip('/')}_{stem}"
        header = (f"# Task group {index} of {len(groups)} from tools/task_groups.py: trains {', '.join(group)} as "
                  f"one network.\n#   python tools/train.py --config {path}\n")
        if isinstance(tasks, dict):
            # _base_ merges mappings key by key, so it cannot drop tasks from a mapping: this file is the whole
            # training config (its _base_ chain merged) with model.tasks narrowed to the group.
            data = {**merged, "model": {**merged["model"], "tasks": {t: tasks[t] for t in group}}}
            header += f"# The whole of {config} (a mapping of tasks cannot be narrowed through _base_).\n"
        else:
            data = {"_base_": os.path.relpath(Path(config).resolve(), out.resolve()),
                    "model": {"tasks": [t for t in names if t in group]}}
        data["output_dir"] = run_dir
        if len(group) == 1:
            data["weighting"] = {"method": "equal"}  # one task: its plain loss, as the single-task baselines
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(header + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        os.replace(tmp, path)
        loaded = load_config(path)
        if set(loaded.model.task_names) != set(group):
            raise RuntimeError(f"{path}: trains {loaded.model.task_names}, expected {list(group)}")
        written.append(path)
    return written


def _main(argv=None) -> int:
    parser = tool_parser(__doc__)
    parser.add_argument("--affinity", required=True, nargs="+",
                        help="affinity.json of a run (train.affinity_interval > 0); several (seeds): their mean")
    parser.add_argument("--networks", type=int, required=True, help="at most this many networks (groups)")
    parser.add_argument("--top", type=int, default=5, help="how many of the best splits to print")
    parser.add_argument("--overlap", action="store_true",
                        help="allow a task in several groups (the paper's variant; fewer tasks only)")
    parser.add_argument("--config", default=None, help="the run's training config: write one config per group")
    parser.add_argument("--out", default=None, help="folder of the group configs (default: next to --affinity, "
                                                    "groups/)")
    args = parser.parse_args(argv)
    if args.networks < 1:
        raise ValueError(f"--networks: got {args.networks}, expected at least 1")
    if args.top < 1:
        raise ValueError(f"--top: got {args.top}, expected at least 1")
    if args.out and not args.config:
        raise ValueError("--out: the group configs need --config, the training config they start from")
    if args.overlap and args.config:
        raise ValueError("--config with --overlap: configs are written for the partition search (drop --overlap)")
    paths = [Path(p) for p in args.affinity]
    tasks, runs, described = None, [], []
    for path in paths:
        run_tasks, matrix = read_affinity(path)
        if tasks is not None and run_tasks != tasks:
            raise ValueError(f"{path}: tasks {run_tasks}, but {paths[0]} has {tasks}: runs to average must measure "
                             "the same tasks")
        tasks = run_tasks
        runs.append(matrix)
        data = json.loads(path.read_text(encoding="utf-8"))
        steps = [m.get("step") for m in data.get("measurements", []) if isinstance(m, dict)]
        described.append(f"{path}" + (f" ({len(steps)} measurements, steps {steps[0]}..{steps[-1]})" if steps else ""))
    k = len(tasks)
    z = [[sum(r[i][j] for r in runs) / len(runs) for j in range(k)] for i in range(k)]
    search = best_overlapping if args.overlap else best_partitions
    ranked = search(tasks, z, args.networks, args.top)

    mean_of = f"mean of {len(runs)} runs" if len(runs) > 1 else "one run"
    print(f"inter-task affinity, {mean_of}: {', '.join(described)}\n(mean Z(i->j): how much one step on task i's "
          "loss lowers task j's loss, in % of it; the diagonal is each task's step on itself)")
    print(format_matrix(tasks, z))
    if len(runs) > 1:
        print("\nrange over the runs (min .. max):")
        print(format_matrix(tasks, z, [[(min(r[i][j] for r in runs), max(r[i][j] for r in runs)) for j in range(k)]
                                       for i in range(k)]))
    print("\nshould these tasks share a network? pair by pair:")
    for line in pair_verdicts(tasks, z):
        print(f"  {line}")
    kind = "groups, a task may be in several" if args.overlap else "groups, each task in one"
    print(f"\nbest splits into at most {args.networks} networks ({kind}); score = sum over tasks of the mean "
          "affinity of their group's other members onto them:")
    for rank, grouping in enumerate(ranked, 1):
        print(format_grouping(rank, grouping))
    print(f"\nanswer: {answer(tasks, z, ranked[0], args.networks)}")
    if args.config:
        out = Path(args.out) if args.out else path.parent / "groups"
        written = group_configs(Path(args.config), out, ranked[0].groups)
        print(f"\nconfigs of the best split ({len(written)} networks), each trained with "
              "python tools/train.py --config <file>:")
        for file in written:
            print(f"  {file}")
    return 0


def main(argv=None) -> int:
    """Rank task groupings; a user error ends with one ``error:`` line and exit code 2."""
    return run_tool(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
