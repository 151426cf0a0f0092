"""Helpers of the engine tests: a tiny model config and loaders over generated toy scenes."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from perception.config import Config, load_config
from perception.data.batch import collate
from scenes import toy_scene

TINY_MODEL = [
    "model.backbone.name=test_resnet",
    "model.neck.channels=32",
    "model.detection.num_classes=2",
    "model.detection.class_names=[red, blue]",
    "model.detection.num_convs=2",
    "model.segmentation.num_classes=4",
    "model.segmentation.class_names=[sky, ground, red, blue]",
    "model.segmentation.channels=32",
    "model.depth.channels=32",
]


def tiny_config(output_dir, *overrides: str) -> Config:
    """A config of the tiny test network, quiet, on CPU, AdamW at 2e-3, uncertainty weighting (one backward)."""
    base = [*TINY_MODEL, "weighting.method=uncertainty", f"output_dir={output_dir}", "train.device=cpu", "train.progress=false",
            "train.tensorboard=false", "train.lr=0.002", "train.warmup_steps=2", "train.max_steps=6",
            "train.log_interval=2", "train.eval_interval=0", "train.num_overlays=0", "data.batch_size=2",
            "data.num_workers=0", "data.image_size=[64, 64]", "eval.detection_score_thresh=0.05"]
    return load_config(None, [*base, *overrides])


class ToyScenes(Dataset):
    """``size`` toy scenes, scene i a pure function of (seed, i)."""

    def __init__(self, size: int, height: int = 64, width: int = 64, seed: int = 0) -> None:
        self.size, self.height, self.width, self.seed = size, height, width, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        return toy_scene(np.random.default_rng([self.seed, index]), self.height, self.width)


class ShardedShuffle(Sampler):
    """Seeded per-epoch permutation, sharded by rank, with ``set_epoch`` and ``set_start`` (the loader contract)."""

    def __init__(self, size: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.start = epoch, 0

    def set_start(self, index: int) -> None:
        self.start = index

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.size)
        return iter(order[self.rank::self.world_size][self.start:].tolist())

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world_size)) - self.start


def toy_loader_fn(train_size: int = 8, val_size: int = 4, height: int = 64, width: int = 64):
    """A ``build_dataloader``-shaped function over toy scenes (val scenes differ from train scenes)."""

    def build(data_cfg, split, tasks, *, distributed=False, seed=0):
        rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if distributed else (0, 1)
        if split == "train":
            dataset = ToyScenes(train_size, height, width, seed=1)
            sampler = ShardedShuffle(train_size, seed, rank, world)
        else:
            dataset = ToyScenes(val_size, height, width, seed=2)
            sampler = list(range(rank, val_size, world))
        return DataLoader(dataset, batch_size=data_cfg.batch_size, sampler=sampler, collate_fn=collate,
                          num_workers=0)

    return build


def crashing_loader_fn(fetches: int):
    """The toy loaders, with the training loader raising while it fetches the batch after ``fetches``."""
    def build(data_cfg, split, tasks, **kw):
        loader = toy_loader_fn(train_size=6)(data_cfg, split, tasks, **kw)
        if split != "train":
            return loader

        class Crash:
            sampler = loader.sampler
            fetched = 0

            def __iter__(self):
                for batch in loader:
                    if Crash.fetched == fetches:
                        raise KeyboardInterrupt("simulated crash")
                    Crash.fetched += 1
                    yield batch
        return Crash()
    return build
