"""Semantic segmentation metrics from a confusion matrix accumulated over a whole split.

IoU_c = TP_c / (TP_c + FP_c + FN_c) per class from the summed confusion matrix (not averaged per image); mIoU is
the mean over the classes that occur in the ground truth or the predictions (a class absent from both has no
IoU); pixel accuracy is sum_c TP_c / labelled pixels; the accuracy of class c (``acc/<class>``) is TP_c / pixels
labelled c, the share of its pixels predicted as c (what YOLOP reports as lane accuracy: ``acc/lane``). Pixels
labelled ``ignore_index`` count nowhere.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from perception.utils.distributed import all_reduce_sum


class SegmentationMetric:
    """Accumulates a confusion matrix on the predictions' device (no host synchronisation per update).

    Args:
        num_classes: number of classes.
        class_names: one name per class (for the per-class keys); defaults to ``class_i``.
        ignore_index: ground-truth label that is not evaluated.
        device: where the confusion matrix lives (the GPU during GPU evaluation).
    """

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None, ignore_index: int = 255,
                 device: torch.device | str = "cpu") -> None:
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)]
        if len(self.class_names) != num_classes:
            raise ValueError(f"class_names: got {len(self.class_names)} names for {num_classes} classes")
        self.ignore_index = ignore_index
        # Rows: ground truth, columns: prediction; one extra bin counts labels outside 0..C-1 (a data error).
        self.confusion = torch.zeros(num_classes * num_classes + 1, dtype=torch.int64, device=device)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch.

        Args:
            pred (Tensor[B, H, W]): predicted class ids.
            target (Tensor[B, H, W]): ground-truth ids, ``ignore_index`` where unlabelled.
        """
        if pred.shape != target.shape:
            raise ValueError(f"segmentation metric: prediction shape {tuple(pred.shape)} differs from the labels' "
                             f"{tuple(target.shape)}")
        c = self.num_classes
        pred = pred.to(self.confusion.device).long().reshape(-1)
        target = target.to(self.confusion.device).long().reshape(-1)
        labelled = target != self.ignore_index
        in_range = (target >= 0) & (target < c)
        index = torch.where(in_range, target * c + pred.clamp(0, c - 1), c * c)
        # index_add_ rather than bincount: fixed output size, so no device-to-host sync.
        self.confusion.index_add_(0, index, labelled.long())

    def reduce(self) -> None:
        """Sum the confusion matrices of all processes (a no-op without torch.distributed)."""
        all_reduce_sum(self.confusion)

    def compute(self, prefix: str = "segmentation/") -> dict[str, float]:
        """``mIoU``, ``pixel_acc``, ``mAcc`` (mean class accuracy), ``iou/<class>`` and ``acc/<class>`` per
        class, in [0, 1].

        Raises:
            ValueError: labelled pixels carried class ids outside ``0..num_classes-1`` (wrong ``num_classes``
                or label mapping).
        """
        counts = self.confusion.cpu()
        bad = int(counts[-1])
        if bad:
            raise ValueError(f"segmentation metric: {bad} labelled pixels had class ids outside "
                             f"0..{self.num_classes - 1} (and not {self.ignore_index}); check "
                             "model.segmentation.num_classes and the dataset's label mapping")
        cm = counts[:-1].reshape(self.num_classes, self.num_classes).double()
        return segmentation_scores(cm, self.class_names, prefix)


def segmentation_scores(confusion: Tensor, class_names: Sequence[str], prefix: str = "segmentation/"
                        ) -> dict[str, float]:
    """Scores of a confusion matrix (Tensor[C, C], rows ground truth, columns prediction)."""
    tp = confusion.diag()
    gt = confusion.sum(1)
    predicted = confusion.sum(0)
    union = gt + predicted - tp
    total = gt.sum()
    present = union > 0
    iou = torch.where(present, tp / union.clamp(min=1), torch.nan)
    acc = torch.where(gt > 0, tp / gt.clamp(min=1), torch.nan)
    out = {
        f"{prefix}mIoU": float(iou[present].mean()) if present.any() else 0.0,
        f"{prefix}pixel_acc": float(tp.sum() / total) if total > 0 else 0.0,
        f"{prefix}mAcc": float(acc[gt > 0].mean()) if (gt > 0).any() else 0.0,
    }
    for name, value in zip(class_names, iou.tolist()):
        if value == value:  # classes seen in neither labels nor predictions have no IoU: left out
            out[f"{prefix}iou/{name}"] = value
    for name, value in zip(class_names, acc.tolist()):
        if value == value:  # classes without labelled pixels have no accuracy
            out[f"{prefix}acc/{name}"] = value
    return out
