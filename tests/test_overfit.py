"""Learning really happens: a tiny model overfits one fixed batch on all three tasks."""
from __future__ import annotations

import numpy as np
import torch
from torchvision.ops import box_iou

from perception.data import collate
from perception.models import build_model
from perception.models.config import ModelConfig
from perception.mtl import UncertaintyWeighting
from perception.utils.configurable import from_dict
from scenes import toy_scene


def test_tiny_model_overfits_one_batch_boxes_masks_and_depth():
    torch.manual_seed(0)
    cfg = from_dict(ModelConfig, {
        "backbone": {"name": "test_resnet"}, "neck": {"channels": 32},
        "detection": {"num_classes": 2, "num_convs": 2},
        "segmentation": {"num_classes": 4, "channels": 32}, "depth": {"channels": 32}})
    model = build_model(cfg)
    weighting = UncertaintyWeighting(model.tasks)
    batch = collate([toy_scene(np.random.default_rng(seed)) for seed in (0, 1)])
    optimizer = torch.optim.AdamW(list(model.parameters()) + list(weighting.parameters()), lr=2e-3,
                                  weight_decay=0.0)
    for _ in range(250):
        task_losses, _ = model.compute_losses(model(batch.images), batch)
        loss, _ = weighting(task_losses)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    model.eval()
    with torch.no_grad():
        preds = model.postprocess(model(batch.images), tuple(batch.images.shape[-2:]))

    # Detection: every ground-truth box is found with IoU > 0.5 and the right class.
    for det, gt_boxes, gt_labels in zip(preds["detection"], batch.targets["detection"]["boxes"], batch.targets["detection"]["labels"]):
        assert len(det["boxes"]) > 0
        iou = box_iou(gt_boxes, det["boxes"])                               # [G, D]
        same_class = gt_labels[:, None] == det["labels"][None, :]
        assert ((iou > 0.5) & same_class).any(dim=1).all(), (gt_boxes, det)
    # Segmentation: pixel accuracy over labelled pixels.
    labelled = batch.targets["segmentation"] != 255
    accuracy = (preds["segmentation"] == batch.targets["segmentation"])[labelled].float().mean().item()
    assert accuracy > 0.9
    # Depth: AbsRel over valid pixels.
    valid = batch.targets["depth"] > 0
    abs_rel = ((preds["depth"] - batch.targets["depth"]).abs() / batch.targets["depth"])[valid].mean().item()
    assert abs_rel < 0.1
    assert all(torch.isfinite(p).all() for p in model.parameters())
