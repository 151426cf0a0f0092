"""Multi-task metrics: the gain delta_m over single-task baselines, metric directions and the selection score.

Each task type's own metric lives in its folder (``perception/tasks/<type>/metric.py``).
"""
from perception.metrics.multitask import delta_m, higher_is_better, load_metrics, merge_baselines, weighted_score

__all__ = ["delta_m", "higher_is_better", "load_metrics", "merge_baselines", "weighted_score"]
