"""DistributedDataParallel: two gloo processes on CPU give the gradients of one process on the whole batch.

The processes are started by torch.multiprocessing here (the test harness); the product runs under torchrun.
Segmentation only, with frozen batch norm and all pixels labelled: the loss is a mean over the images' pixels,
so the average of the two halves' gradients equals the full batch's gradient exactly. The gradient-combining
methods (segmentation and depth): each rank's own combination, averaged once.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from _engine_utils import TINY_MODEL
from perception.config import load_config
from perception.data.batch import collate
from perception.engine.optim import build_lr_scheduler, build_optimizer, param_groups
from perception.engine.step import TrainStep, make_grad_scaler
from perception.models import build_model
from perception.mtl import FixedWeighting, TaskScheduler, build_weighting
from scenes import toy_scene


class ManualSyncWeighting(FixedWeighting):
    """Equal weights, but asks the trainer to average the gradients itself (as gradient methods do)."""

    manual_grad_sync = True


def _batch(indices):
    return collate([toy_scene(np.random.default_rng([7, i]), 64, 64) for i in indices])


def _first_step_grads(rank: int, world: int, manual: bool, indices=None) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    cfg = load_config(None, [*TINY_MODEL, "model.tasks=[segmentation]", "model.backbone.frozen_bn=true",
                             "weighting.method=uncertainty"])
    model = build_model(cfg.model)
    weighting = ManualSyncWeighting(model.tasks) if manual else build_weighting(cfg.weighting, model.tasks)
    forward = model
    if world > 1:
        forward = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = build_optimizer(param_groups(model, weighting, 0.0), cfg.train)
    step = TrainStep(forward, model, weighting, optimizer, build_lr_scheduler(optimizer, cfg.train),
                     make_grad_scaler("none", torch.device("cpu")), TaskScheduler(model.tasks),
                     torch.device("cpu"), distributed=world > 1)
    if indices is None:
        indices = [0, 1, 2, 3] if world == 1 else [2 * rank, 2 * rank + 1]
    with step._sync_context(0, 1):
        step.forward_backward(_batch(indices), model.tasks)
    step.sync_gradients()
    named = list(model.named_parameters()) + [(f"weighting.{n}", p) for n, p in weighting.named_parameters()]
    return {n: p.grad.clone() for n, p in named if p.grad is not None}


def _half_grad(manual: bool) -> torch.Tensor:
    """The first half's gradient alone (one process, no averaging)."""
    grads = _first_step_grads(0, 1, manual, indices=[0, 1])
    return grads["heads.segmentation.predictor.weight"]


def _worker(rank: int, world: int, init_file: str, out_dir: str, job: str) -> None:
    """One gloo rank: ``job`` "sync" saves the first step's gradients of both sync paths, "methods" those of every
    gradient-combining method."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        if job == "sync":
            for manual in (False, True):
                grads = _first_step_grads(rank, world, manual)
                torch.save(grads, os.path.join(out_dir, f"rank{rank}_{manual}.pt"))
        else:
            for method in GRADIENT_METHODS:
                grads = _combined_grads(rank, world, method, [2 * rank, 2 * rank + 1])
                torch.save(grads, os.path.join(out_dir, f"{method}_rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one_process_on_the_whole_batch(tmp_path):
    """Both paths: DDP's own all-reduce, and the trainer's averaging under ``manual_grad_sync``."""
    # fork: the children inherit the imported modules (spawning would re-import torch and timm twice)
    mp.start_processes(_worker, args=(2, str(tmp_path / "init"), str(tmp_path), "sync"), nprocs=2, join=True,
                       start_method="fork")
    for manual in (False, True):
        single = _first_step_grads(0, 1, manual)
        ranks = [torch.load(tmp_path / f"rank{r}_{manual}.pt", weights_only=True) for r in range(2)]
        assert set(ranks[0]) == set(single) == set(ranks[1])
        if not manual:  # the uncertainty weighting's log-variance is averaged too
            assert "weighting.log_vars.segmentation" in single
        assert sum(float(g.abs().sum()) for g in single.values()) > 0
        # Each half alone has a different gradient: the match below is the averaging, not a coincidence.
        assert not torch.allclose(_half_grad(manual), single["heads.segmentation.predictor.weight"])
        for name, grad in single.items():
            for r in range(2):
                torch.testing.assert_close(ranks[r][name], grad, rtol=1e-4, atol=1e-6, msg=name)


# The methods that combine per-task gradients (``manual_grad_sync``): each rank combines its own per-task gradients
# from its half of the batch, then the trainer averages the combined gradients once (docs/mtl.md).
GRADIENT_METHODS = ("nash_mtl", "upgrad", "db_mtl", "aligned_mtl")


def _combined_grads(rank: int, world: int, method: str, indices) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    cfg = load_config(None, [*TINY_MODEL, "model.tasks=[segmentation, depth]", "model.backbone.frozen_bn=true",
                             f"weighting.method={method}"])
    model = build_model(cfg.model)
    weighting = build_weighting(cfg.weighting, model.tasks)
    assert weighting.manual_grad_sync
    forward = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    optimizer = build_optimizer(param_groups(model, weighting, 0.0), cfg.train)
    step = TrainStep(forward, model, weighting, optimizer, build_lr_scheduler(optimizer, cfg.train),
                     make_grad_scaler("none", torch.device("cpu")), TaskScheduler(model.tasks),
                     torch.device("cpu"), distributed=world > 1)
    with step._sync_context(0, 1):
        step.forward_backward(_batch(indices), model.tasks)
    step.sync_gradients()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_methods_average_each_ranks_combination(tmp_path):
    mp.start_processes(_worker, args=(2, str(tmp_path / "init"), str(tmp_path), "methods"), nprocs=2, join=True,
                       start_method="fork")
    for method in GRADIENT_METHODS:
        halves = [_combined_grads(0, 1, method, [2 * r, 2 * r + 1]) for r in range(2)]
        ranks = [torch.load(tmp_path / f"{method}_rank{r}.pt", weights_only=True) for r in range(2)]
        assert set(ranks[0]) == set(ranks[1]) == set(halves[0])
        shared = "backbone.body.conv1.weight" if "backbone.body.conv1.weight" in halves[0] else next(iter(halves[0]))
        # The halves' combinations differ, so the equality below is the averaging, not a coincidence.
        assert not torch.allclose(halves[0][shared], halves[1][shared]), method
        for name in halves[0]:
            expected = (halves[0][name] + halves[1][name]) / 2
            for r in range(2):
                torch.testing.assert_close(ranks[r][name], expected, rtol=1e-4, atol=1e-6, msg=f"{method} {name}")
