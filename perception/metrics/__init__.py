"""Evaluation metrics: detection (pycocotools COCO mAP), segmentation (confusion matrix), depth (Eigen et al.),
and the multi-task gain delta_m over single-task baselines."""
from perception.metrics.depth import DepthMetric
from perception.metrics.detection import DetectionMetric, coco_evaluate
from perception.metrics.multitask import delta_m, higher_is_better, load_metrics, merge_baselines, weighted_score
from perception.metrics.segmentation import SegmentationMetric, segmentation_scores

__all__ = ["DepthMetric", "DetectionMetric", "SegmentationMetric", "coco_evaluate", "delta_m", "higher_is_better",
           "load_metrics", "merge_baselines", "segmentation_scores", "weighted_score"]
