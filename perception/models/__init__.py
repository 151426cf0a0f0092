"""The network: timm backbone, FPN neck, task heads and their assembly."""
from perception.models.backbone import TimmBackbone
from perception.models.config import TASKS, ModelConfig
from perception.models.heads import DepthHead, FCOSHead, SegmentationHead
from perception.models.multitask import MultiTaskModel, build_model
from perception.models.neck import FPN

__all__ = ["FPN", "TASKS", "DepthHead", "FCOSHead", "ModelConfig", "MultiTaskModel", "SegmentationHead",
           "TimmBackbone", "build_model"]
