"""Optimiser parameter groups, the learning-rate schedule, and RNG state in checkpoints."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from _engine_utils import TINY_MODEL
from perception.config import load_config
from perception.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from perception.engine.optim import build_lr_scheduler, build_optimizer, lr_factor, param_groups
from perception.models import build_model
from perception.mtl import build_weighting


def test_no_weight_decay_on_norms_biases_and_the_weighting():
    cfg = load_config(None, [*TINY_MODEL, "train.weight_decay=0.05", "train.backbone_lr_mult=0.1", "train.lr=0.01",
                             "weighting.method=uncertainty"])  # a weighting with parameters of its own
    model = build_model(cfg.model)
    weighting = build_weighting(cfg.weighting, model.tasks)
    optimizer = build_optimizer(param_groups(model, weighting, 0.05, 0.1), cfg.train)
    by_name = {g["name"]: g for g in optimizer.param_groups}
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = [names[id(p)] for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]]
    assert decayed and all(names[id(p)].endswith("weight") for g in optimizer.param_groups
                           if g["weight_decay"] > 0 for p in g["params"])
    norm_ids = {id(p) for m in model.modules() if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm))
                for p in m.parameters()}
    assert not any(id(p) in norm_ids or p.ndim <= 1 for g in optimizer.param_groups if g["weight_decay"] > 0
                   for p in g["params"])
    assert by_name["weighting"]["weight_decay"] == 0.0
    assert {id(p) for p in by_name["weighting"]["params"]} == {id(p) for p in weighting.parameters()}
    assert by_name["backbone/decay"]["lr"] == pytest.approx(0.001) and by_name["heads/decay"]["lr"] == 0.01
    n_params = sum(len(g["params"]) for g in optimizer.param_groups)
    assert n_params == len(list(model.parameters())) + len(list(weighting.parameters()))


def test_warmup_then_cosine_and_poly():
    assert lr_factor(0, 100, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(5, 100, 10, 0.1) == pytest.approx(0.55)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10) == pytest.approx(0.5)               # half-way through the cosine
    assert lr_factor(100, 100, 10, min_lr_ratio=0.1) == pytest.approx(0.1)
    assert lr_factor(55, 100, 10, schedule="poly", poly_power=2.0) == pytest.approx(0.25)
    assert lr_factor(70, 100, 10, schedule="constant") == 1.0
    cfg = load_config(None, ["train.max_steps=4", "train.warmup_steps=2", "train.lr=1.0"]).train
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_lr_scheduler(opt, cfg)
    seen = []
    for _ in range(4):
        seen.append(opt.param_groups[0]["lr"])
        opt.step(), sched.step()
    assert seen == pytest.approx([0.001, 0.5005, 1.0, 0.5])


def test_rng_state_round_trips_through_a_checkpoint(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    save_checkpoint({"config": {}, "model": {}, "rng": rng_state()}, tmp_path / "c.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(1), expected[2])
    assert not math.isnan(expected[1])
