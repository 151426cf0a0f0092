"""The synthetic scenes are learnable through the real loader: a tiny model fits them on all three tasks."""
from __future__ import annotations

import torch

from perception.data import build_dataloader
from perception.data.config import AugmentConfig, DataConfig, DatasetConfig
from perception.models import build_model
from perception.models.config import ModelConfig
from perception.mtl import UncertaintyWeighting
from perception.utils.configurable import from_dict

TASKS = ("detection", "segmentation", "depth")


def test_tiny_model_learns_synthetic_scenes_from_the_loader():
    torch.manual_seed(0)
    data = DataConfig(train=[DatasetConfig(options={"num_samples": 2, "height": 64, "width": 128})],
                      image_size=(64, 128), batch_size=2, num_workers=0,
                      augment=AugmentConfig(scale=(1.0, 1.0), hflip=0.0, color_p=0.0))
    loader = build_dataloader(data, "train", TASKS, seed=0)
    batch = next(iter(loader))
    cfg = from_dict(ModelConfig, {
        "backbone": {"name": "test_resnet"}, "neck": {"channels": 32},
        "detection": {"num_classes": 8, "num_convs": 2},
        "segmentation": {"num_classes": 19, "channels": 32}, "depth": {"channels": 32}})
    model = build_model(cfg)
    weighting = UncertaintyWeighting(model.tasks)
    optimizer = torch.optim.AdamW(list(model.parameters()) + list(weighting.parameters()), lr=3e-3,
                                  weight_decay=0.0)
    first = None
    for step in range(100):
        batch = next(iter(loader)) if step % 10 == 0 else batch  # the loader's batches, two scenes
        task_losses, _ = model.compute_losses(model(batch.images), batch)
        first = first or {k: float(v.detach()) for k, v in task_losses.items()}
        loss, _ = weighting(task_losses)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    last = {k: float(v.detach()) for k, v in task_losses.items()}
    for task in TASKS:
        assert last[task] < 0.5 * first[task], (task, first, last)
    model.eval()
    with torch.no_grad():
        preds = model.postprocess(model(batch.images), tuple(batch.images.shape[-2:]))
    labelled = batch.targets["segmentation"] != 255
    accuracy = (preds["segmentation"] == batch.targets["segmentation"])[labelled].float().mean().item()
    majority = torch.bincount(batch.targets["segmentation"][labelled]).max().item() / labelled.sum().item()
    assert accuracy > max(0.8, majority + 0.2), (accuracy, majority)
    valid = batch.targets["depth"] > 0
    abs_rel = ((preds["depth"] - batch.targets["depth"]).abs() / batch.targets["depth"])[valid].mean().item()
    assert abs_rel < 0.25
