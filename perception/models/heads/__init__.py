"""Task heads. Each returns raw tensors from ``forward`` and has ``compute_loss`` and ``postprocess``."""
from perception.models.heads.depth import DepthHead
from perception.models.heads.detection import FCOSHead
from perception.models.heads.segmentation import SegmentationHead

__all__ = ["DepthHead", "FCOSHead", "SegmentationHead"]
