"""Helpers of the inference tests: a tiny network, its checkpoint, generated images and videos."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from perception.config import Config, config_to_dict, from_dict
from perception.engine.checkpoint import save_checkpoint
from perception.models import build_model
from perception.tasks import build_tasks
from scenes import toy_scene

TINY = {
    "model": {"backbone": {"name": "test_resnet"}, "neck": {"channels": 32},
              "detection": {"num_classes": 2, "num_convs": 1, "class_names": ["red", "blue"]},
              "segmentation": {"num_classes": 4, "channels": 16, "class_names": ["sky", "ground", "red", "blue"]},
              "depth": {"channels": 16}},
    "data": {"image_size": [64, 96]},
}


# Four named tasks, two of them segmentation tasks reading the same labels (fine and coarse classes).
FOUR_TASKS = {
    "objects": {"type": "detection", "num_classes": 2, "num_convs": 1, "class_names": ["red", "blue"]},
    "semantic": {"type": "segmentation", "label": "segmentation", "num_classes": 4, "channels": 16,
                 "class_names": ["sky", "ground", "red", "blue"]},
    "coarse": {"type": "segmentation", "label": "segmentation", "num_classes": 2, "channels": 8,
               "class_names": ["road", "car"]},
    "depth": {"type": "depth", "channels": 16},
}


def tiny_config(tasks=None, image_size=(64, 96)) -> Config:
    """The tiny network; ``tasks`` a list of types (list form) or a mapping of named tasks (``FOUR_TASKS``)."""
    data = {**TINY, "data": {"image_size": list(image_size)}}
    if tasks is not None:
        tasks = dict(tasks) if isinstance(tasks, dict) else list(tasks)
        data = {**data, "model": {**data["model"], "tasks": tasks}}
    return from_dict(Config, data)


def tiny_model(cfg: Config, seed: int = 0, detections: bool = True) -> torch.nn.Module:
    """A random tiny network; with ``detections`` the classifier bias of its detection tasks is raised so that
    boxes come out."""
    torch.manual_seed(seed)
    model = build_model(cfg.model).eval()
    with torch.no_grad():
        for name, task in model.task_specs.items():
            head = model.heads[name]
            if task.TYPE == "detection" and detections:
                head.cls_logits.bias.fill_(0.5)
                head.cls_logits.weight.normal_(0, 0.5)
                head.box_pred.bias.fill_(1.0)
            elif task.TYPE == "segmentation":  # logits that vary over the image, so the class map is not constant
                head.predictor.weight.normal_(0, 1.0)
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


class _EchoDetection(torch.nn.Module):
    num_classes = 1

    def postprocess(self, out, size, score_thresh=None):
        dets = []
        for mask in out:
            ys, xs = torch.nonzero(mask, as_tuple=True)
            box = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()[None]
            dets.append({"boxes": box, "scores": torch.ones(1), "labels": torch.zeros(1, dtype=torch.int64)})
        return dets


class _EchoSegmentation(torch.nn.Module):
    num_classes = 2

    def postprocess(self, logits, size):
        return torch.nn.functional.interpolate(logits, size=size, mode="bilinear").argmax(1)


class _EchoDepth(torch.nn.Module):
    """Its output is depth in metres: the real head's interface reads it through ``log_depth``."""

    min_depth, max_depth = 1e-3, 250.0

    def log_depth(self, raw):
        return torch.log(raw.clamp_min(1e-6))

    def postprocess(self, raw, size):
        return torch.nn.functional.interpolate(raw, size=size, mode="bilinear")[:, 0]


class EchoModel(torch.nn.Module):
    """A stand-in network whose outputs are read off the input image, so that mapping back can be checked exactly.

    Its tasks are real task instances (so the predictor's per-task post-processing runs); its heads echo:

    - detection: one box, the bounding box of the red pixels (R > 128, G < 128) of each network input;
    - segmentation: 2 classes at stride 4, class 1 where the image is red (logits from the average red excess);
    - depth: the green channel / 10 (metres) at stride 4.
    """

    def __init__(self) -> None:
        super().__init__()
        self.task_specs = build_tasks({"detection": {"type": "detection", "num_classes": 1},
                                       "segmentation": {"type": "segmentation", "num_classes": 2},
                                       "depth": {"type": "depth"}})
        self.heads = torch.nn.ModuleDict({"detection": _EchoDetection(), "segmentation": _EchoSegmentation(),
                                          "depth": _EchoDepth()})
        self.calls: list[list[str]] = []

    @property
    def tasks(self) -> list[str]:
        return list(self.heads)

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


def echo_image(height: int, width: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """An RGB image: green a horizontal ramp 40..200, one red rectangle ``box`` (x0, y0, x1, y1) on grey."""
    image = np.full((height, width, 3), 90, np.uint8)
    image[:, :, 1] = np.linspace(40, 200, width).round().astype(np.uint8)[None]
    x0, y0, x1, y1 = box
    image[y0:y1, x0:x1] = (230, 20, 20)
    return image
