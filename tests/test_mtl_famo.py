"""FAMO: the logits follow the paper's update (one Adam step by hand, and torch's Adam over several), the loss it
backpropagates and its gradient, absent tasks and bad losses, distributed ranks that agree, the measurement forward
after the step that moves no BatchNorm statistic, and a tiny training run that resumes bit-exactly. (A skipped step
leaving the FAMO state bit-identical is in test_engine_skip.py.)"""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from _engine_utils import crashing_loader_fn, tiny_config, toy_loader_fn
from perception.data.batch import collate
from perception.engine.checkpoint import load_checkpoint
from perception.engine.optim import build_lr_scheduler, build_optimizer, param_groups
from perception.engine.step import TrainStep, make_grad_scaler
from perception.engine.trainer import train
from perception.models import build_model
from perception.mtl import FAMO, TaskScheduler, WeightingConfig, build_weighting
from perception.mtl.famo import famo_logit_gradient
from scenes import toy_scene


def test_one_update_by_hand_on_two_tasks():
    famo = FAMO(["a", "b"])                      # lr 0.025, weight decay 0.01, logits 0
    famo({"a": torch.tensor(1.0), "b": torch.tensor(2.0)})
    famo.post_step({"a": torch.tensor(1.0), "b": torch.tensor(2.0)},
                   {"a": torch.tensor(0.5), "b": torch.tensor(1.8)})
    # d = [log 2, log(2/1.8)] = [0.693147, 0.105361]; z = [1/2, 1/2]; z.d = 0.399254;
    # gradient z * (d - z.d) = [0.146947, -0.146947]; Adam's first step moves each logit by lr * sign.
    torch.testing.assert_close(famo.logits, torch.tensor([-0.025, 0.025]), rtol=0, atol=1e-6)  # float32
    # softmax([-0.025, 0.025]) = [1 / (1 + e^0.05), ...]: the task that improved less gets the weight.
    torch.testing.assert_close(famo.weights(), torch.tensor([0.4875026, 0.5124974]), rtol=0, atol=1e-6)
    torch.testing.assert_close(famo_logit_gradient(torch.tensor([0.5, 0.5]), torch.tensor([math.log(2),
                               math.log(2 / 1.8)])), torch.tensor([0.1469465, -0.1469465]), rtol=0, atol=1e-6)


def test_several_updates_match_torch_adam_with_weight_decay():
    famo = FAMO(["a", "b", "c"], lr=0.05, weight_decay=0.1)
    xi = torch.zeros(3, requires_grad=True)
    adam = torch.optim.Adam([xi], lr=0.05, weight_decay=0.1)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        before = torch.rand(3, generator=g) + 0.5
        after = before * (torch.rand(3, generator=g) + 0.3)
        famo({t: before[i] for i, t in enumerate("abc")})
        famo.post_step({t: before[i] for i, t in enumerate("abc")}, {t: after[i] for i, t in enumerate("abc")})
        d = torch.log(before + 1e-8) - torch.log(after + 1e-8)
        xi.grad = torch.autograd.grad(torch.softmax(xi, 0), xi, grad_outputs=d)[0]  # (dz/dxi)^T d by autograd
        adam.step()
    torch.testing.assert_close(famo.logits, xi.detach(), rtol=1e-5, atol=1e-7)


def test_the_loss_and_its_gradient():
    famo = FAMO(["a", "b"])
    famo.logits.copy_(torch.tensor([0.3, -0.2]))
    la, lb = torch.tensor(0.5, requires_grad=True), torch.tensor(4.0, requires_grad=True)
    loss, weights = famo({"a": la, "b": lb})
    z = torch.softmax(torch.tensor([0.3, -0.2]), 0)
    c = z[0] / 0.5 + z[1] / 4.0
    torch.testing.assert_close(loss, (z[0] * math.log(0.5) + z[1] * math.log(4.0)) / c, rtol=1e-6, atol=1e-7)
    loss.backward()
    # d/dL_i = z_i / (L_i c): per-loss weights that sum to 1.
    torch.testing.assert_close(torch.stack([la.grad, lb.grad]), torch.stack([z[0] / 0.5, z[1] / 4.0]) / c)
    assert float(la.grad + lb.grad) == pytest.approx(1.0)
    assert float(weights["a"]) == pytest.approx(float(z[0]))


def test_an_absent_task_keeps_its_logit_and_bad_losses_change_nothing():
    famo = FAMO(["a", "b", "c"])
    loss, _ = famo({"a": torch.tensor(1.0), "b": torch.tensor(2.0), "c": torch.tensor(3.0)},
                   present={"a": True, "b": True, "c": False})
    famo.post_step({"a": torch.tensor(1.0), "b": torch.tensor(2.0), "c": torch.tensor(3.0)},
                   {"a": torch.tensor(0.5), "b": torch.tensor(1.9), "c": torch.tensor(1.0)})
    assert famo.logits[2] == 0 and famo.adam_steps.tolist() == [1.0, 1.0, 0.0]
    state = {k: v.clone() for k, v in famo.state_dict().items()}
    famo({"a": torch.tensor(1.0), "b": torch.tensor(2.0)})
    famo.post_step({"a": torch.tensor(1.0), "b": torch.tensor(2.0)},
                   {"a": torch.tensor(math.nan), "b": torch.tensor(math.inf)})
    for key, value in famo.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_config_builds_famo_with_its_own_optimizer_settings():
    famo = build_weighting(WeightingConfig(method="famo", famo_lr=0.1, famo_weight_decay=0.0), ["a", "b"])
    assert isinstance(famo, FAMO) and (famo.lr, famo.weight_decay) == (0.1, 0.0)
    assert not list(famo.parameters())            # nothing for the network's optimizer
    with pytest.raises(ValueError, match="famo_lr"):
        WeightingConfig(method="famo", famo_lr=0.0).validate()


def test_a_tiny_run_trains_moves_the_logits_and_resumes_bit_exactly(tmp_path):
    steps = ["weighting.method=famo", "train.max_steps=6", "train.log_interval=1", "train.checkpoint_interval=3"]
    full = train(tiny_config(tmp_path / "full", *steps), loader_fn=toy_loader_fn(train_size=6))
    log = [json.loads(line) for line in (full / "train_log.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss/total"]) for r in log if "loss/total" in r)
    assert all(abs(sum(r[f"weight/{t}"] for t in ("detection", "segmentation", "depth")) - 1) < 1e-5
               for r in log if "weight/depth" in r)
    sa = load_checkpoint(full / "last.pt")
    assert not torch.equal(sa["weighting"]["logits"], torch.zeros(3))        # FAMO learnt something
    assert torch.isfinite(sa["weighting"]["logits"]).all() and sa["weighting"]["adam_steps"].tolist() == [6] * 3

    cfg = tiny_config(tmp_path / "crashed", *steps)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, loader_fn=crashing_loader_fn(3))
    assert load_checkpoint(tmp_path / "crashed" / "last.pt")["step"] == 3
    resumed = train(cfg, resume=tmp_path / "crashed" / "last.pt", loader_fn=toy_loader_fn(train_size=6))
    sb = load_checkpoint(resumed / "last.pt")
    for key in sa["weighting"]:
        assert torch.equal(sa["weighting"][key], sb["weighting"][key]), key
    for key in sa["model"]:
        assert torch.equal(sa["model"][key], sb["model"][key]), key


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        famo = FAMO(["a", "b"])
        before = {"a": torch.tensor(1.0), "b": torch.tensor(2.0)}
        famo(before)
        # Rank 0 sees task a improve a lot, rank 1 task b: alone they would move the logits in opposite ways.
        after = [{"a": torch.tensor(0.2), "b": torch.tensor(1.9)}, {"a": torch.tensor(0.9), "b": torch.tensor(0.5)}]
        famo.post_step(before, after[rank])
        torch.save(famo.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_distributed_ranks_keep_the_same_logits_from_the_averaged_improvement(tmp_path):
    mp.start_processes(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    # One process whose improvement is the ranks' mean: log(L_before) - mean(log(L_after)).
    famo = FAMO(["a", "b"])
    famo({"a": torch.tensor(1.0), "b": torch.tensor(2.0)})
    mean_after = {"a": torch.tensor(math.sqrt(0.2 * 0.9)), "b": torch.tensor(math.sqrt(1.9 * 0.5))}
    famo.post_step({"a": torch.tensor(1.0), "b": torch.tensor(2.0)}, mean_after)
    for key, value in famo.state_dict().items():
        assert torch.equal(ranks[0][key], ranks[1][key]), key
        torch.testing.assert_close(ranks[0][key], value, rtol=1e-5, atol=1e-7)


def test_the_measurement_forward_moves_no_batchnorm_statistic():
    cfg = tiny_config("unused", "weighting.method=famo")
    torch.manual_seed(0)
    model = build_model(cfg.model)
    weighting = build_weighting(cfg.weighting, model.tasks)
    optimizer = build_optimizer(param_groups(model, weighting, 0.0), cfg.train)
    step = TrainStep(model, model, weighting, optimizer, build_lr_scheduler(optimizer, cfg.train),
                     make_grad_scaler("none", torch.device("cpu")), TaskScheduler(model.tasks), torch.device("cpu"))
    batch = collate([toy_scene(np.random.default_rng([3, i]), 64, 64) for i in range(2)])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    after = step.losses_after_step(batch, model.tasks)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert all(m.track_running_stats for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    # The same numbers as a training-mode forward (batch statistics), which does move them.
    with torch.no_grad():
        expected, _ = model.compute_losses(model(batch.images, tasks=model.tasks), batch)
    assert after.keys() == expected.keys()
    for task in after:
        assert torch.equal(after[task], expected[task].float()), task
    assert any(not torch.equal(v, state[k]) for k, v in model.state_dict().items() if "running_mean" in k)
