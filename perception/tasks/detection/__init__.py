"""Object detection: FCOS head (Tian et al. 2019), focal/GIoU/centerness losses, COCO mAP."""
from perception.tasks.detection.config import DetectionConfig
from perception.tasks.detection.head import FCOSHead
from perception.tasks.detection.task import DetectionTask

__all__ = ["DetectionConfig", "DetectionTask", "FCOSHead"]
