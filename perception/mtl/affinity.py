"""Which tasks help which: inter-task affinity and the task groupings it suggests.

Inter-task affinity (Fifty, Amid, Zhao, Yu, Anil, Finn, "Efficiently Identifying Task Groupings for Multi-Task
Learning", NeurIPS 2021) measures how a step on one task's loss moves every other task's loss on the same batch::

    Z(i -> j) = 1 - L_j(theta_s - lr * grad_theta_s L_i, theta_j) / L_j(theta_s, theta_j)

Only the shared parameters ``theta_s`` (``model.shared_parameters()``) take the look-ahead step; every task's own
parameters ``theta_j`` stay. ``Z > 0``: a step on ``i`` lowers ``j``'s loss (``i`` helps ``j``); ``Z < 0``: it
raises it (negative transfer). The paper steps with the optimizer's own update; here the look-ahead is a plain SGD
step with each parameter's current learning rate, the usual simplification (AdamW rescales the gradient per
coordinate, so its Z can differ; the SGD step measures what task i's gradient itself does to the other tasks).

The measurement (:func:`lookahead_affinity`) calls the network through ``torch.func.functional_call`` with its
parameters swapped for detached copies and its buffers for clones: the network, its ``.grad`` fields, the
optimizer and the BatchNorm statistics are never touched, and the random state (dropout, drop-path) is put back
as it was, the same masks serving every forward of the measurement. It runs in float32 whatever the training's
autocast: the relative change of a loss after one small step is far below bfloat16's resolution.

:class:`AffinityLog` keeps the measurements of a run and their mean (the paper averages over training), writes
``affinity.json`` and draws the mean matrix (:func:`plot_affinity`). :func:`best_partitions` splits the tasks into
at most ``B`` groups that maximise the total affinity; :func:`best_overlapping` is the paper's variant where a task
may be served by several of the chosen groups and counts in the one that suits it best.
"""
from __future__ import annotations

import itertools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

AFFINITY_FILE = "affinity.json"
AFFINITY_PLOT = "affinity.png"
DEFINITION = ("Z[i][j] = 1 - L_j(shared parameters after one SGD step on L_i at the current learning rate) / "
              "L_j(shared parameters); rows: the task i stepped on, columns: the task j measured; same batch")
MAX_EXHAUSTIVE_TASKS = 10  # Bell(10) = 115975 partitions: a second or two in Python


# ------------------------------------------------------------------------------------------------ measurement
def parameter_lrs(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Parameter name -> the learning rate of its optimizer group now (parameters in no group are left out)."""
    lr_of = {id(p): float(group["lr"]) for group in optimizer.param_groups for p in group["params"]}
    return {name: lr_of[id(p)] for name, p in model.named_parameters() if id(p) in lr_of}


def shared_parameter_names(model: nn.Module) -> list[str]:
    """Names (as in ``named_parameters``) of the parameters ``model.shared_parameters()`` yields."""
    shared = {id(p) for p in model.shared_parameters()}
    return [name for name, p in model.named_parameters() if id(p) in shared]


def lookahead_affinity(model: nn.Module, images: Tensor, batch: Any, lr: float | Mapping[str, float],
                       tasks: Sequence[str] | None = None, present: Mapping[str, bool] | None = None) -> Tensor:
    """Z(i -> j) of every pair of tasks on one batch, on the device (nothing is synchronised or changed).

    Costs one forward and ``K`` backward passes with the graph kept, then ``K`` forwards without a graph.

    Args:
        model: a multi-task network: ``forward(images, tasks=...)``, ``compute_losses(outputs, batch)`` ->
            ``(task -> loss, components)``, ``shared_parameters()``, ``tasks``; in the mode it trains in.
        images: the batch's images, on the model's device.
        batch: what ``compute_losses`` reads the targets from.
        lr: the look-ahead's learning rate, one for all, or per parameter name (:func:`parameter_lrs`); a shared
            parameter missing from the mapping does not move.
        tasks: the tasks to measure (default: all of the model's).
        present: task -> whether the batch carries its labels; an absent task's row and column are NaN.

    Returns:
        Tensor[K, K] (float32, or float64 for a float64 network): ``[i, j] = Z(i -> j)``; NaN where ``L_j`` is not
        positive and finite on this batch (the ratio means nothing there).

    Raises:
        ValueError: when the model has no shared parameters (``model.sharing: soft``): nothing carries transfer.
    """
    tasks = list(model.tasks if tasks is None else tasks)
    params = {name: p.detach() for name, p in model.named_parameters()}
    shared = shared_parameter_names(model)
    if not shared:
        raise ValueError("inter-task affinity: the model has no shared parameters (model.sharing: soft keeps one "
                         "trunk per task), so no step on one task can move another's loss")
    lrs = {name: (lr.get(name, 0.0) if isinstance(lr, Mapping) else float(lr)) for name in shared}
    leaves = {name: params[name].clone().requires_grad_(True) for name in shared}
    # Clones: a training-mode BatchNorm updates the running statistics it is given, in place.
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    devices = [images.device] if images.device.type == "cuda" else []

    with torch.random.fork_rng(devices=devices):  # puts the random state back on exit
        cpu_state = torch.get_rng_state()
        cuda_state = torch.cuda.get_rng_state(images.device) if devices else None

        def losses(weights: dict[str, Tensor]) -> Tensor:
            torch.set_rng_state(cpu_state)  # the same dropout masks for every forward
            if cuda_state is not None:
                torch.cuda.set_rng_state(cuda_state, images.device)
            with torch.autocast(images.device.type, enabled=False):
                outputs = functional_call(model, (weights, buffers), (images,), {"tasks": tasks}, strict=False)
                task_losses, _ = model.compute_losses(outputs, batch)
            values = [task_losses[t] for t in tasks]
            dtype = torch.promote_types(values[0].dtype, torch.float32)
            return torch.stack([v.to(dtype) for v in values])

        before = losses({**params, **leaves})                                               # [K], with a graph
        grads = []
        for i in range(len(tasks)):
            grads.append(torch.autograd.grad(before[i], list(leaves.values()), retain_graph=i < len(tasks) - 1,
                                             allow_unused=True))
        before = before.detach()
        with torch.no_grad():
            after = []
            for grad in grads:
                stepped = {name: leaf.detach() - lrs[name] * g if g is not None else leaf.detach()
                           for (name, leaf), g in zip(leaves.items(), grad)}
                after.append(losses({**params, **stepped}))
            after = torch.stack(after)                                                       # [K(i), K(j)]
    z = torch.where((torch.isfinite(before) & (before > 0))[None, :], 1.0 - after / before, torch.nan)
    for index, task in enumerate(tasks):  # in place, with host indices: no host-to-device copy
        if present is not None and not present.get(task, True):
            z[index, :] = torch.nan
            z[:, index] = torch.nan
    return z


# ------------------------------------------------------------------------------------------------ the record
def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _matrix_json(matrix: Sequence[Sequence[float]]) -> list[list[float | None]]:
    return [[_finite_or_none(v) for v in row] for row in matrix]


class AffinityLog:
    """The affinity measurements of one run, their mean, ``affinity.json`` and its heat map.

    Args:
        tasks: the task names (the rows and columns, in this order).
    """

    def __init__(self, tasks: Sequence[str]) -> None:
        self.tasks = list(tasks)
        self.measurements: list[dict[str, Any]] = []  # {"step", "lr", "matrix"}

    def add(self, step: int, matrix: Sequence[Sequence[float]], lr: float | None = None) -> None:
        """Record one K x K measurement taken before optimizer step ``step + 1``."""
        k = len(self.tasks)
        if len(matrix) != k or any(len(row) != k for row in matrix):
            raise ValueError(f"affinity at step {step}: expected a {k}x{k} matrix for {self.tasks}")
        self.measurements.append({"step": int(step), "lr": lr, "matrix": [[float(v) for v in r] for r in matrix]})

    def keep_before(self, step: int) -> None:
        """Keep the measurements taken before the steps up to ``step`` (a run resumed at ``step`` takes the
        measurement at ``step``, before its next step, and the later ones again)."""
        self.measurements = [m for m in self.measurements if m["step"] < step]

    def mean(self) -> tuple[list[list[float]], list[list[int]]]:
        """The mean over the measurements of each entry (NaN entries left out), and how many entered it."""
        k = len(self.tasks)
        sums = [[0.0] * k for _ in range(k)]
        counts = [[0] * k for _ in range(k)]
        for m in self.measurements:
            for i, row in enumerate(m["matrix"]):
                for j, v in enumerate(row):
                    if v is not None and math.isfinite(v):
                        sums[i][j] += v
                        counts[i][j] += 1
        mean = [[sums[i][j] / counts[i][j] if counts[i][j] else math.nan for j in range(k)] for i in range(k)]
        return mean, counts

    def to_dict(self) -> dict[str, Any]:
        mean, counts = self.mean()
        return {"tasks": self.tasks, "definition": DEFINITION, "lookahead": "sgd",
                "measurements": [{**m, "matrix": _matrix_json(m["matrix"])} for m in self.measurements],
                "mean": _matrix_json(mean), "count": counts}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "affinity") -> "AffinityLog":
        tasks = data.get("tasks")
        if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
            raise ValueError(f"{source}: 'tasks' must be a list of task names")
        log = cls(tasks)
        for m in data.get("measurements", []):
            log.add(m["step"], [[math.nan if v is None else v for v in row] for row in m["matrix"]], m.get("lr"))
        return log

    def save(self, path: str | os.PathLike) -> Path:
        """Write the record as JSON, atomically."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path


def plot_affinity(tasks: Sequence[str], matrix: Sequence[Sequence[float | None]], path: str | os.PathLike,
                  title: str = "inter-task affinity") -> Path:
    """Draw ``matrix`` as an annotated heat map PNG: rows = the task stepped on (source i), columns = the task
    measured (target j), values in percent of ``L_j``. Blue helps, red hurts; the colour scale spans the
    off-diagonal entries (the diagonal, a task's effect on itself, is larger and drawn grey)."""
    import matplotlib
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k = len(tasks)
    values = np.array([[math.nan if v is None else float(v) for v in row] for row in matrix], dtype=float) * 100.0
    off = ~np.eye(k, dtype=bool) & np.isfinite(values)
    limit = float(np.abs(values[off]).max()) if off.any() else 1.0
    limit = limit if limit > 0 else 1.0
    shown = np.ma.masked_where(~off, values)
    fig = Figure(figsize=(1.1 * k + 2.2, 1.0 * k + 1.3), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["RdBu"].with_extremes(bad="#d9d9d9")
    image = ax.imshow(shown, cmap=cmap, vmin=-limit, vmax=limit)
    for i in range(k):
        for j in range(k):
            text = "n/a" if not math.isfinite(values[i, j]) else f"{values[i, j]:+.3g}%"
            dark = off[i, j] and abs(values[i, j]) > 0.6 * limit
            ax.text(j, i, text, ha="center", va="center", fontsize=9, style="italic" if i == j else "normal",
                    color="white" if dark else "black")
    ax.set_xticks(range(k), labels=list(tasks), rotation=30, ha="right")
    ax.set_yticks(range(k), labels=list(tasks))
    ax.set_xlabel("target j (loss measured)")
    ax.set_ylabel("source i (step taken)")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="Z(i->j), % of L_j")
    fig.tight_layout()
    fig.savefig(str(path))
    return Path(path)


def read_affinity(path: str | os.PathLike) -> tuple[list[str], list[list[float]]]:
    """The tasks and the mean matrix of an ``affinity.json``, checked.

    Raises:
        ValueError: naming the file and what is wrong (not JSON, a missing key, a matrix that is not K x K, an
            entry that is not a finite number).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object with 'tasks' and 'mean', got {type(data).__name__}")
    for key in ("tasks", "mean"):
        if key not in data:
            raise ValueError(f"{path}: missing key {key!r} (tools/train.py with train.affinity_interval > 0 "
                             "writes it)")
    tasks, mean = data["tasks"], data["mean"]
    if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) and t for t in tasks) \
            or len(set(tasks)) != len(tasks):
        raise ValueError(f"{path}: 'tasks' must be a non-empty list of distinct task names, got {tasks!r}")
    k = len(tasks)
    if not isinstance(mean, list) or len(mean) != k or any(not isinstance(r, list) or len(r) != k for r in mean):
        shape = f"{len(mean)} rows of lengths {[len(r) if isinstance(r, list) else None for r in mean]}" \
            if isinstance(mean, list) else type(mean).__name__
        raise ValueError(f"{path}: 'mean' must be a {k}x{k} matrix (one row and column per task), got {shape}")
    out = []
    for i, row in enumerate(mean):
        for j, v in enumerate(row):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{path}: mean[{i}][{j}] ({tasks[i]} -> {tasks[j]}) is {v!r}, expected a finite "
                                 "number (null: that pair was never measured, e.g. no batch carried both labels)")
        out.append([float(v) for v in row])
    return list(tasks), out


# ------------------------------------------------------------------------------------------------ grouping
def task_scores(group: Sequence[int], z: Sequence[Sequence[float]]) -> dict[int, float]:
    """Per member ``j`` of ``group``: the mean of ``Z(i -> j)`` over the other members ``i`` (0 alone)."""
    out = {}
    for j in group:
        others = [i for i in group if i != j]
        out[j] = sum(z[i][j] for i in others) / len(others) if others else 0.0
    return out


def group_score(group: Sequence[int], z: Sequence[Sequence[float]]) -> float:
    """The paper's score of a group: the sum over its members of :func:`task_scores`."""
    return sum(task_scores(group, z).values())


def set_partitions(n: int, max_blocks: int) -> Iterator[list[list[int]]]:
    """Every split of ``range(n)`` into at most ``max_blocks`` non-empty blocks (each once, blocks in order of
    their first element)."""
    def grow(i: int, blocks: list[list[int]]) -> Iterator[list[list[int]]]:
        if i == n:
            yield [list(b) for b in blocks]
            return
        for block in blocks:
            block.append(i)
            yield from grow(i + 1, blocks)
            block.pop()
        if len(blocks) < max_blocks:
            blocks.append([i])
            yield from grow(i + 1, blocks)
            blocks.pop()

    if n > 0:
        yield from grow(0, [])


@dataclass(frozen=True)
class Grouping:
    """A choice of groups and its total affinity score."""

    groups: tuple[tuple[str, ...], ...]
    score: float
    group_scores: tuple[float, ...]


def _check(tasks: Sequence[str], z: Sequence[Sequence[float]], networks: int) -> None:
    if networks < 1:
        raise ValueError(f"--networks: got {networks}, expected at least 1")
    if len(z) != len(tasks) or any(len(row) != len(tasks) for row in z):
        raise ValueError(f"affinity: expected a {len(tasks)}x{len(tasks)} matrix for the tasks {list(tasks)}")
    if len(tasks) > MAX_EXHAUSTIVE_TASKS:
        raise ValueError(f"task grouping: {len(tasks)} tasks, the exhaustive search handles at most "
                         f"{MAX_EXHAUSTIVE_TASKS}")


def best_partitions(tasks: Sequence[str], z: Sequence[Sequence[float]], networks: int, top: int = 5
                    ) -> list[Grouping]:
    """The ``top`` splits of ``tasks`` into at most ``networks`` groups (each task in exactly one), best first,
    by total :func:`group_score`; exhaustive. Ties keep the order of enumeration (fewer, earlier groups first)."""
    _check(tasks, z, networks)
    score_of: dict[tuple[int, ...], float] = {}
    ranked = []
    for order, blocks in enumerate(set_partitions(len(tasks), networks)):
        scores = []
        for block in blocks:
            key = tuple(block)
            if key not in score_of:
                score_of[key] = group_score(block, z)
            scores.append(score_of[key])
        ranked.append((-sum(scores), order, blocks, scores))
    ranked.sort(key=lambda r: (r[0], r[1]))
    return [Grouping(tuple(tuple(tasks[i] for i in b) for b in blocks), -neg, tuple(scores))
            for neg, _, blocks, scores in ranked[:top]]


def best_overlapping(tasks: Sequence[str], z: Sequence[Sequence[float]], networks: int, top: int = 5,
                     max_combinations: int = 2_000_000) -> list[Grouping]:
    """The paper's overlapping variant: at most ``networks`` groups (any subsets) covering every task; each task
    counts once, with its score in the chosen group that suits it best. A task in several groups is trained by
    each of those networks and served by the best of them.

    Raises:
        ValueError: when the number of combinations to try exceeds ``max_combinations``.
    """
    _check(tasks, z, networks)
    k = len(tasks)
    subsets = [tuple(i for i in range(k) if mask >> i & 1) for mask in range(1, 2 ** k)]
    budget = min(networks, k)
    total = sum(math.comb(len(subsets), b) for b in range(1, budget + 1))
    if total > max_combinations:
        raise ValueError(f"task grouping with overlap: {total} combinations of groups for {k} tasks and "
                         f"{networks} networks, more than {max_combinations}; use the partition search")
    member = {s: task_scores(s, z) for s in subsets}
    ranked = []
    for b in range(1, budget + 1):
        for combo in itertools.combinations(subsets, b):
            best: dict[int, float] = {}
            for s in combo:
                for j, v in member[s].items():
                    best[j] = max(best.get(j, -math.inf), v)
            if len(best) < k:
                continue
            # A group that serves no task best only costs a network: leave such combinations out.
            if not all(any(member[s][j] >= best[j] for j in s) for s in combo):
                continue
            ranked.append((-sum(best.values()), len(ranked), combo))
    ranked.sort(key=lambda r: (r[0], r[1]))
    return [Grouping(tuple(tuple(tasks[i] for i in s) for s in combo), -neg, tuple(group_score(s, z) for s in combo))
            for neg, _, combo in ranked[:top]]


def pair_verdicts(tasks: Sequence[str], z: Sequence[Sequence[float]]) -> list[str]:
    """For every pair of tasks, in plain words: whether each helps or hurts the other, and whether they should
    share a network by the affinity (their pair's score ``Z(a -> b) + Z(b -> a)`` > 0)."""
    lines = []
    for a, b in itertools.combinations(range(len(tasks)), 2):
        ta, tb = tasks[a], tasks[b]
        parts = []
        for i, j in ((a, b), (b, a)):
            verb = "helps" if z[i][j] > 0 else "hurts" if z[i][j] < 0 else "does not move"
            own = z[j][j]
            rel = f", {abs(z[i][j]) / own:.0%} of what a step on {tasks[j]} itself does" if own > 0 else ""
            parts.append(f"a step on {tasks[i]} {verb} {tasks[j]} ({100 * z[i][j]:+.3g}% of its loss{rel})")
        pair = z[a][b] + z[b][a]
        if z[a][b] > 0 and z[b][a] > 0:
            verdict = "they help each other: share a network"
        elif z[a][b] < 0 and z[b][a] < 0:
            verdict = "they hurt each other: train them apart"
        else:
            helper, helped = (ta, tb) if z[a][b] > 0 else (tb, ta)
            verdict = (f"one-sided: {helper} helps {helped}, {helped} hurts {helper}; on balance "
                       + ("share" if pair > 0 else "train them apart"))
        lines.append(f"{ta} + {tb}: {verdict} (pair score {100 * pair:+.3g}%); " + "; ".join(parts))
    return lines
