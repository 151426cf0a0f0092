"""Prediction overlays for TensorBoard: the image with boxes, the class map blended in, and the depth map.

Drawing uses torchvision's ``draw_bounding_boxes``/``draw_segmentation_masks`` and OpenCV's colour maps.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch
from torch import Tensor
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks


def palette(num_classes: int) -> list[tuple[int, int, int]]:
    """Distinct colours per class id (the PASCAL VOC bit-interleaving palette)."""
    colours = []
    for i in range(num_classes):
        r = g = b = 0
        c = i + 1
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours.append((r, g, b))
    return colours


def colourise_depth(depth: Tensor, max_depth: float | None = None) -> Tensor:
    """Tensor[3, H, W] uint8 of a depth map (Tensor[H, W], metres): near bright, far dark (magma of 1/depth)."""
    d = depth.float().cpu().numpy()
    valid = d > 0
    inv = np.where(valid, 1.0 / np.maximum(d, 1e-3), 0.0)
    hi = 1.0 / max(float(np.min(d[valid])) if valid.any() else 1.0, 1e-3)
    lo = 1.0 / max_depth if max_depth else (float(np.min(inv[valid])) if valid.any() else 0.0)
    norm = np.clip((inv - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    rgb = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_MAGMA)[..., ::-1]
    rgb[~valid] = 0
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


def overlay_panel(image: Tensor, prediction: dict, class_names: Sequence[str] | None = None,
                  num_classes: int | None = None) -> Tensor:
    """Side-by-side panels for one image.

    Args:
        image (Tensor[3, H, W]): uint8 RGB.
        prediction: any of ``detection`` ({boxes, scores, labels}), ``segmentation`` (Tensor[H, W] ids),
            ``depth`` (Tensor[H, W] metres) for this image.
        class_names: detection class names for the box labels.
        num_classes: segmentation classes (for the palette).

    Returns:
        Tensor[3, H, k * W] uint8.
    """
    image = image.cpu()
    panels = []
    det = prediction.get("detection")
    if det is not None and len(det["boxes"]):
        labels = [class_names[int(l)] if class_names else str(int(l)) for l in det["labels"]]
        text = [f"{name} {float(s):.2f}" for name, s in zip(labels, det["scores"])]
        panels.append(draw_bounding_boxes(image, det["boxes"].float().cpu(), text, colors="yellow", width=2))
    else:
        panels.append(image)
    seg = prediction.get("segmentation")
    if seg is not None:
        n = num_classes or int(seg.max()) + 1
        masks = seg.cpu()[None] == torch.arange(n)[:, None, None]
        panels.append(draw_segmentation_masks(image, masks, alpha=0.6, colors=palette(n)))
    depth = prediction.get("depth")
    if depth is not None:
        panels.append(colourise_depth(depth))
    return torch.cat(panels, dim=2)
