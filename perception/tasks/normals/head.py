"""Surface normals head: the Panoptic-FPN-style 1/4-scale branch and a 1x1 predictor of three channels.

The output is a field of unit vectors (``F.normalize`` over the channels); every resampling (to the labels'
size for the loss, to the input or the original image for predictions) renormalises, since a bilinear blend of
unit vectors is shorter than one.
"""
from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from perception.ops.dense import SemanticFPNBranch, upsample
from perception.tasks.normals.loss import normals_loss


def unit(x: Tensor, dim: int = 1) -> Tensor:
    """``x`` scaled to unit length along ``dim`` (a zero vector stays zero)."""
    return F.normalize(x, dim=dim, eps=1e-6)


class NormalsHead(nn.Module):
    """P2..P5 -> unit surface normals at 1/4 of the input size.

    Args:
        in_channels: channels of the pyramid levels.
        channels: channels of the branch.
        in_strides: strides of the levels it reads.
        loss: ``cosine`` or ``l1`` (see :func:`perception.tasks.normals.loss.normals_loss`).
        conv: the branch's unit, ``conv`` or ``dwsep``.
    """

    def __init__(self, in_channels: int, channels: int = 128, in_strides: Sequence[int] = (4, 8, 16, 32),
                 loss: str = "cosine", conv: str = "conv") -> None:
        super().__init__()
        if loss not in ("cosine", "l1"):
            raise ValueError(f"normals loss: got {loss!r}, expected 'cosine' or 'l1'")
        self.loss = loss
        self.branch = SemanticFPNBranch(in_channels, channels, in_strides, conv)
        self.predictor = nn.Conv2d(channels, 3, 1)
        # PyTorch's default (unit-scale) weights and a zero bias: normalising a near-zero vector (the 0.01-std
        # start of the other heads) would scale its gradient up by the inverse of its length, and a fixed bias
        # direction would assume a sign convention the dataset may not share.
        nn.init.zeros_(self.predictor.bias)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Args: features: [P2, P3, P4, P5]. Returns: unit normals Tensor[B, 3, H/4, W/4]."""
        return unit(self.predictor(self.branch(features)))

    def compute_loss(self, normals: Tensor, target: Tensor) -> Tensor:
        """The loss against Tensor[B, H, W, 3] unit normals (0 = none), at the labels' size."""
        return normals_loss(upsample(normals.float(), tuple(target.shape[1:3])), target, self.loss)

    def postprocess(self, normals: Tensor, size: tuple[int, int]) -> Tensor:
        """Unit normals Tensor[B, H, W, 3] (channels last, like the labels) at ``size``."""
        return unit(upsample(normals.float(), size)).permute(0, 2, 3, 1)
