"""Multi-task gain over single-task baselines, metric directions and the model-selection score.

    delta_m = (1/T) sum_t (1/M_t) sum_m s_m * (M_mt - M_st) / M_st * 100

with s_m = +1 where higher is better and -1 where lower is better (Maninis et al. 2019; LibMTL's delta_p), so a
positive delta_m means the multi-task model beats its single-task baselines. Papers such as Nash-MTL and FAMO
print the negative of it ("delta_m %, lower is better").
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Mapping

from perception.tasks import TASK_TYPES

# Metric names (the part after "task/") for which lower is better, besides those a registered task type's SIGNS
# marks -1; every other metric is higher-is-better.
LOWER_IS_BETTER = frozenset({"abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog", "abs_err", "rel_err"})


def higher_is_better(key: str) -> bool:
    """Whether larger values of metric ``key`` (e.g. ``depth/rmse``) are better."""
    name = key.rsplit("/", 1)[-1]
    return name not in LOWER_IS_BETTER and all(cls.SIGNS.get(name, 1) > 0 for cls in TASK_TYPES.values())


def load_metrics(path: str | os.PathLike) -> dict[str, float]:
    """A metrics.json file as a dict.

    Raises:
        FileNotFoundError / ValueError: naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metrics file {str(path)!r} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"metrics file {str(path)!r} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"metrics file {str(path)!r}: expected a JSON object of metric -> value")
    return data


def merge_baselines(paths: Iterable[str | os.PathLike]) -> dict[str, float]:
    """The single-task metrics of several metrics.json files, merged (one file per task, typically).

    Raises:
        ValueError: two files give the same metric.
    """
    merged: dict[str, float] = {}
    source: dict[str, str] = {}
    for path in paths:
        for key, value in load_metrics(path).items():
            if "/" not in key or not isinstance(value, (int, float)):
                continue
            if key in merged and merged[key] != value:
                raise ValueError(f"baselines: metric {key!r} is given by both {source[key]!r} and {str(path)!r}; "
                                 "pass one single-task metrics file per task")
            merged[key] = float(value)
            source[key] = str(path)
    return merged


def delta_m(multi: Mapping[str, float], single: Mapping[str, float], metric_signs: Mapping[str, int]
            ) -> dict[str, float]:
    """Multi-task gain in percent, overall and per task.

    Args:
        multi: the multi-task model's metrics.
        single: the single-task baselines' metrics (merged).
        metric_signs: metric key -> +1 (higher is better) or -1 (lower is better); only the metrics present in
            ``multi`` count, grouped by task (the key's prefix).

    Returns:
        ``{"delta_m": ..., "delta_m/<task>": ...}``.

    Raises:
        ValueError: a metric of the multi-task model has no baseline value, or a baseline value is 0.
    """
    per_task: dict[str, list[float]] = {}
    for key, sign in metric_signs.items():
        if key not in multi:
            continue
        if key not in single:
            raise ValueError(f"delta_m: no single-task baseline for {key!r}; give a metrics.json of the "
                             f"{key.split('/')[0]}-only model (baseline keys: {sorted(single) or 'none'})")
        base = float(single[key])
        if base == 0:
            raise ValueError(f"delta_m: the single-task value of {key!r} is 0, so the relative change is undefined")
        per_task.setdefault(key.split("/")[0], []).append(sign * (float(multi[key]) - base) / abs(base) * 100.0)
    if not per_task:
        raise ValueError(f"delta_m: none of the metrics {sorted(metric_signs)} is in the multi-task results")
    out = {f"delta_m/{task}": sum(v) / len(v) for task, v in per_task.items()}
    out["delta_m"] = sum(out.values()) / len(out)
    return out


def weighted_score(metrics: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """Weighted mean of the metrics in ``weights`` that ``metrics`` holds, lower-is-better ones negated.

    Raises:
        ValueError: none of them is present.
    """
    present = {k: w for k, w in weights.items() if k in metrics}
    if not present or sum(present.values()) == 0:
        raise ValueError(f"score: none of {sorted(weights)} was computed (got {sorted(metrics)[:10]}...); set "
                         "eval.score_weights or train.best_metric")
    total = sum(w * (1.0 if higher_is_better(k) else -1.0) * float(metrics[k]) for k, w in present.items())
    return total / sum(present.values())
