#!/usr/bin/env python
"""Embed perception's segmentation and depth heads in your own network.

The heads only need multi-scale features of one width at strides 4, 8, 16 and 32. Here the "other network" is
torchvision's ResNet-18 read through ``create_feature_extractor`` (any CNN or ViT adapter works), its four stages
brought to one width by torchvision's FeaturePyramidNetwork; the heads bring their own losses
(``compute_loss``) and post-processing (``postprocess``):

    python examples/embed_heads.py --steps 60

trains both heads (and the network under them) on a few built-in synthetic street scenes and prints the losses
falling, then the predicted class ids and depth of one scene at its full size.
"""
from __future__ import annotations

import argparse
import sys
from collections import OrderedDict
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import resnet18
from torchvision.models.feature_extraction import create_feature_extractor
from torchvision.ops import FeaturePyramidNetwork

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perception.tasks.depth import DepthHead  # noqa: E402
from perception.tasks.segmentation import SegmentationHead  # noqa: E402


class MyNetwork(nn.Module):
    """Your network: a backbone with four stages, an FPN, and perception's dense heads on top.

    Args:
        num_classes: semantic classes.
        width: FPN width (the heads' ``in_channels``).
    """

    def __init__(self, num_classes: int, width: int = 64) -> None:
        super().__init__()
        stages = {"layer1": "c2", "layer2": "c3", "layer3": "c4", "layer4": "c5"}   # strides 4, 8, 16, 32
        self.body = create_feature_extractor(resnet18(weights=None), return_nodes=stages)
        self.fpn = FeaturePyramidNetwork([64, 128, 256, 512], width)
        self.segmentation = SegmentationHead(width, num_classes, channels=width, in_strides=(4, 8, 16, 32))
        self.depth = DepthHead(width, channels=width, in_strides=(4, 8, 16, 32), max_depth=100.0)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Args: images (Tensor[B, 3, H, W]): RGB 0..255, H and W multiples of 32.

        Returns:
            ``segmentation`` logits Tensor[B, K, H/4, W/4] and raw ``depth`` Tensor[B, 1, H/4, W/4].
        """
        features = self.fpn(OrderedDict(self.body((images.float() - self.mean) / self.std)))
        levels = list(features.values())               # [P2, P3, P4, P5], all ``width`` channels
        return {"segmentation": self.segmentation(levels), "depth": self.depth(levels)}

    def losses(self, outputs: dict[str, Tensor], semantic: Tensor, depth: Tensor) -> dict[str, Tensor]:
        """The heads' own losses: cross-entropy (255 = ignore) and SILog on depth in metres (0 = no data)."""
        return {"segmentation": self.segmentation.compute_loss(outputs["segmentation"], semantic),
                "depth": self.depth.compute_loss(outputs["depth"], depth)}

    @torch.no_grad()
    def predict(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Class ids Tensor[B, H, W] and depth in metres Tensor[B, H, W] at the input size."""
        outputs = self.forward(images)
        size = tuple(images.shape[-2:])
        return self.segmentation.postprocess(outputs["segmentation"], size), self.depth.postprocess(
            outputs["depth"], size)


def train(model: MyNetwork, images: Tensor, semantic: Tensor, depth: Tensor, steps: int = 60,
          lr: float = 2e-3) -> list[float]:
    """A few full-batch AdamW steps; returns the summed loss of every step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    history = []
    for _ in range(steps):
        losses = model.losses(model(images), semantic, depth)
        loss = losses["segmentation"] + losses["depth"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append(float(loss.detach()))
    return history


def synthetic_batch(count: int = 4, size: tuple[int, int] = (128, 256)):
    """Built-in street scenes: images uint8 [B, 3, H, W], semantic [B, H, W], depth [B, H, W] and class names."""
    from perception.data.synthetic import generate_scene

    samples = [generate_scene(index=i, split="train", height=size[0], width=size[1]) for i in range(count)]
    images = torch.stack([torch.from_numpy(s["image"]).permute(2, 0, 1) for s in samples])
    semantic = torch.stack([torch.from_numpy(s["semantic"]).long() for s in samples])
    depth = torch.stack([torch.from_numpy(s["depth"]).float() for s in samples])
    return images, semantic, depth


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    images, semantic, depth = synthetic_batch()
    model = MyNetwork(num_classes=19)   # the synthetic scenes are labelled with Cityscapes' 19 trainIds
    history = train(model, images, semantic, depth, args.steps)
    print(f"loss {history[0]:.3f} -> {history[-1]:.3f} after {args.steps} steps")
    model.eval()
    ids, metres = model.predict(images[:1])
    accuracy = (ids[0] == semantic[0])[semantic[0] != 255].float().mean()
    print(f"class ids {tuple(ids.shape)}, pixel accuracy {accuracy:.3f}; depth {tuple(metres.shape)} "
          f"{float(metres.min()):.1f}..{float(metres.max()):.1f} m")


if __name__ == "__main__":
    main()
