"""Helpers of the inference tests: a tiny network, its checkpoint, generated images and videos."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from perception.config import Config, config_to_dict, from_dict
from perception.engine.checkpoint import save_checkpoint
from perception.models import build_model
from scenes import toy_scene

TINY = {
    "model": {"backbone": {"name": "test_resnet"}, "neck": {"channels": 32},
              "detection": {"num_classes": 2, "num_convs": 1, "class_names": ["red", "blue"]},
              "segmentation": {"num_classes": 4, "channels": 16, "class_names": ["sky", "ground", "red", "blue"]},
              "depth": {"channels": 16}},
    "data": {"image_size": [64, 96]},
}


def tiny_config(tasks=None, image_size=(64, 96)) -> Config:
    data = {**TINY, "data": {"image_size": list(image_size)}}
    if tasks is not None:
        data = {**data, "model": {**data["model"], "tasks": list(tasks)}}
    return from_dict(Config, data)


def tiny_model(cfg: Config, seed: int = 0, detections: bool = True) -> torch.nn.Module:
    """A random tiny network; with ``detections`` its classifier bias is raised so that boxes come out."""
    torch.manual_seed(seed)
    model = build_model(cfg.model).eval()
    if detections and "detection" in model.heads:
        with torch.no_grad():
            head = model.heads["detection"]
            head.cls_logits.bias.fill_(0.5)
            head.cls_logits.weight.normal_(0, 0.5)
            head.box_pred.bias.fill_(1.0)
    if "segmentation" in model.heads:
        with torch.no_grad():  # logits that vary over the image, so that the class map is not constant
            model.heads["segmentation"].predictor.weight.normal_(0, 1.0)
    return model


def write_checkpoint(path: Path, cfg: Config, model: torch.nn.Module, **extra) -> Path:
    return save_checkpoint({"config": config_to_dict(cfg), "model": model.state_dict(), **extra}, path)


def scene_image(seed: int, height: int = 128, width: int = 128) -> np.ndarray:
    return toy_scene(np.random.default_rng(seed), height, width)["image"]


def write_video(path: Path, num_frames: int, size=(72, 120), fps: float = 12.0) -> Path:
    """A short mp4 (mp4v) of moving toy scenes, ``size`` = (H, W)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (size[1], size[0]))
    assert writer.isOpened()
    for i in range(num_frames):
        writer.write(cv2.cvtColor(scene_image(i, *size), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


class EchoModel(torch.nn.Module):
    """A stand-in network whose outputs are read off the input image, so that mapping back can be checked exactly.

    - detection: one box, the bounding box of the red pixels (R > 128, G < 128) of each network input;
    - segmentation: 2 classes at stride 4, class 1 where the image is red (logits from the average red excess);
    - depth: the green channel / 10 (metres) at stride 4.
    """

    tasks = ["detection", "segmentation", "depth"]

    def __init__(self) -> None:
        super().__init__()
        self.heads = {}
        self.calls: list[list[str]] = []

    def forward(self, images, tasks=None):
        tasks = list(tasks or self.tasks)
        self.calls.append(tasks)
        x = images.float()
        red = ((x[:, 0] > 128) & (x[:, 1] < 128)).float()                 # [B, H, W]
        out = {}
        if "detection" in tasks:
            out["detection"] = red
        if "segmentation" in tasks:
            excess = torch.nn.functional.avg_pool2d(red[:, None], 4) - 0.5  # [B, 1, H/4, W/4]
            out["segmentation"] = torch.cat([-excess, excess], 1)
        if "depth" in tasks:
            out["depth"] = torch.nn.functional.avg_pool2d(x[:, 1:2], 4) / 10.0
        return out

    def postprocess(self, outputs, size):
        results = {}
        for task, out in outputs.items():
            if task == "detection":
                dets = []
                for mask in out:
                    ys, xs = torch.nonzero(mask, as_tuple=True)
                    box = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()[None]
                    dets.append({"boxes": box, "scores": torch.ones(1), "labels": torch.zeros(1, dtype=torch.int64)})
                results[task] = dets
            elif task == "segmentation":
                results[task] = torch.nn.functional.interpolate(out, size=size, mode="bilinear").argmax(1)
            else:
                results[task] = torch.nn.functional.interpolate(out, size=size, mode="bilinear")[:, 0]
        return results


def echo_image(height: int, width: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """An RGB image: green a horizontal ramp 40..200, one red rectangle ``box`` (x0, y0, x1, y1) on grey."""
    image = np.full((height, width, 3), 90, np.uint8)
    image[:, :, 1] = np.linspace(40, 200, width).round().astype(np.uint8)[None]
    x0, y0, x1, y1 = box
    image[y0:y1, x0:x1] = (230, 20, 20)
    return image
