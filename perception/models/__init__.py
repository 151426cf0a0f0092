"""The network: timm backbone, FPN neck, the task heads (from :mod:`perception.tasks`) and their assembly."""
from perception.models.backbone import TimmBackbone
from perception.models.build import build_model
from perception.models.config import ModelConfig
from perception.models.multitask import MultiTaskModel
from perception.models.neck import FPN

__all__ = ["FPN", "ModelConfig", "MultiTaskModel", "TimmBackbone", "build_model"]
