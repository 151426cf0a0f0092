"""Box coding of dense detectors: distances from a location to the sides of a box (FCOS's ltrb), both ways."""
from __future__ import annotations

import torch
from torch import Tensor


def ltrb_to_boxes(points: Tensor, ltrb: Tensor) -> Tensor:
    """Decode distances to boxes.

    Args:
        points (Tensor[..., 2]): (x, y) locations.
        ltrb (Tensor[..., 4]): distances to the left, top, right and bottom sides.

    Returns:
        Tensor[..., 4]: boxes (x0, y0, x1, y1).
    """
    return torch.cat([points - ltrb[..., :2], points + ltrb[..., 2:]], dim=-1)


def boxes_to_ltrb(points: Tensor, boxes: Tensor) -> Tensor:
    """Distances from ``points`` (Tensor[..., 2]) to the sides of ``boxes`` (Tensor[..., 4]); negative outside."""
    return torch.cat([points - boxes[..., :2], boxes[..., 2:] - points], dim=-1)
