"""Semantic segmentation: the Panoptic-FPN semantic branch, cross-entropy with ignore, confusion-matrix mIoU."""
from perception.tasks.segmentation.config import SegmentationConfig
from perception.tasks.segmentation.head import SegmentationHead
from perception.tasks.segmentation.task import SegmentationTask

__all__ = ["SegmentationConfig", "SegmentationHead", "SegmentationTask"]
