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
