"""Monocular depth: a dense branch predicting log-depth (or bounded depth), SILog loss, Eigen et al.'s metrics."""
from perception.tasks.depth.config import DepthConfig
from perception.tasks.depth.head import DepthHead
from perception.tasks.depth.task import DepthTask

__all__ = ["DepthConfig", "DepthHead", "DepthTask"]
