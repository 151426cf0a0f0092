"""Per-task losses as pure functions: detection (focal, GIoU, centerness), segmentation, depth."""
from perception.losses.depth import l1_log_loss, silog_loss
from perception.losses.detection import fcos_losses
from perception.losses.segmentation import semantic_cross_entropy

__all__ = ["fcos_losses", "l1_log_loss", "semantic_cross_entropy", "silog_loss"]
