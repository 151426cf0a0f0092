"""A skipped step changes nothing: with an inf/NaN injected at the first step, after one real step and later, every
tensor of the model (buffers included), the optimizer, the weighting, the EMA and the task scheduler is
bit-identical before and after it; the other steps train to finite weights. And pre-created optimizer state
gives the same first steps as torch's lazily created state, bit for bit."""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from timm.utils import ModelEmaV3

from _engine_utils import tiny_config, toy_loader_fn
from perception.data.batch import collate
from perception.engine.trainer import train
from perception.engine.checkpoint import load_checkpoint
from perception.engine.optim import build_lr_scheduler, build_optimizer, init_optimizer_state, param_groups
from perception.engine.step import TrainStep, make_grad_scaler
from perception.models import build_model
from perception.mtl import build_task_scheduler, build_weighting
from scenes import toy_scene

OPTIMIZERS = {"adamw": ["train.optimizer=adamw"],
              "sgd": ["train.optimizer=sgd", "train.momentum=0.9", "train.lr=0.01"],
              "sgd_nesterov": ["train.optimizer=sgd", "train.momentum=0.9", "train.nesterov=true", "train.lr=0.01"]}
# Weightings with state of each kind: learned parameters (uncertainty), buffers fed in the forward (DWA), and
# parameters renormalised plus a buffer written inside weighting.backward (GradNorm).
# FAMO: buffers written after the optimizer step, from a second forward (post_step). DB-MTL: a [K, P] buffer of
# gradient averages written inside weighting.backward, allocated at set-up.
CASES = [("adamw", "uncertainty"), ("sgd", "gradnorm"), ("sgd_nesterov", "dwa"), ("adamw", "famo"),
         ("adamw", "db_mtl")]
# Which step is skipped and how: at the very first step (optimizer state not yet touched), right after one real
# step (the state written once) and later. "forward": NaN activations, so the BatchNorm statistics of that
# forward are NaN; "loss": an infinite depth label; "grad": a NaN gradient from a finite loss.
SKIPS = {0: "forward", 2: "loss", 5: "grad"}
STEPS = 6


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes as integers: equal means bit-identical (NaN payloads and signed zeros included)."""
    if t.is_floating_point():
        return t.detach().contiguous().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])
    return t.detach()


def _flatten(prefix: str, value, out: dict) -> dict:
    if isinstance(value, torch.Tensor):
        out[prefix] = _bits(value).clone()
    elif isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}", v, out)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _flatten(f"{prefix}.{i}", v, out)
    else:
        out[prefix] = copy.deepcopy(value)
    return out


def _full_state(step: TrainStep) -> dict:
    state = {}
    _flatten("model", step.module.state_dict(), state)
    _flatten("optimizer", step.optimizer.state_dict()["state"], state)
    _flatten("weighting", step.weighting.state_dict(), state)
    _flatten("ema", step.ema.module.state_dict(), state)
    _flatten("task_scheduler", step.task_scheduler.state_dict(), state)
    return state


def _assert_same(before: dict, after: dict, where: str) -> None:
    assert before.keys() == after.keys(), where
    for key, value in before.items():
        other = after[key]
        same = torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other
        assert same, f"{where}: {key} changed"


def _build(optimizer: str, amp: str, weighting: str) -> TrainStep:
    # No bound on the depth labels, so that the injected infinite label reaches the loss.
    cfg = tiny_config("unused", "model.depth.loss_max_depth=.inf", *OPTIMIZERS[optimizer], f"train.amp={amp}",
                      f"weighting.method={weighting}",
                      "model.detection.num_convs=1", "train.grad_clip=10", "train.max_steps=20")
    torch.manual_seed(0)
    model = build_model(cfg.model)
    weights = build_weighting(cfg.weighting, model.tasks)
    opt = build_optimizer(param_groups(model, weights, cfg.train.weight_decay), cfg.train)
    ema = ModelEmaV3(model, decay=0.9, use_warmup=False)
    return TrainStep(model, model, weights, opt, build_lr_scheduler(opt, cfg.train),
                     make_grad_scaler(amp, torch.device("cpu")),
                     build_task_scheduler(cfg.weighting.task_schedule, model.tasks), torch.device("cpu"), amp,
                     cfg.train.grad_clip, ema=ema)


class Injector:
    """Turns one micro-batch of a step bad in one of the ways of ``SKIPS``."""

    def __init__(self, step: TrainStep) -> None:
        self.kind = None
        model = step.module
        # NaN activations from the second stage on: every BatchNorm after it records NaN statistics.
        model.backbone.body.layer2.register_forward_pre_hook(
            lambda m, args: (args[0] * math.nan,) if self.kind == "forward" else None)
        model.heads.segmentation.predictor.bias.register_hook(
            lambda g: g * math.nan if self.kind == "grad" else g)

    @staticmethod
    def batch(batch, kind):
        if kind == "loss":
            batch = copy.copy(batch)
            batch.targets["depth"] = torch.where(batch.targets["depth"] > 0, math.inf, 0.0)
        return batch


def _micro_batches(step_index: int, accumulate: int):
    scenes = [toy_scene(np.random.default_rng([11, step_index, i]), 32, 32) for i in range(2 * accumulate)]
    return [collate(scenes[2 * i:2 * i + 2]) for i in range(accumulate)]


@pytest.mark.parametrize("accumulate", [1, 2])
@pytest.mark.parametrize("amp", ["none", "bf16"])
@pytest.mark.parametrize("optimizer,weighting", CASES)
def test_a_skipped_step_leaves_every_state_tensor_bit_identical(optimizer, weighting, amp, accumulate):
    step = _build(optimizer, amp, weighting)
    injector = Injector(step)
    for index in range(STEPS):
        batches = _micro_batches(index, accumulate)
        kind = SKIPS.get(index)
        # With accumulation only the last micro-batch is bad: the first one's forward already moved BatchNorm.
        batches = [injector.batch(b, kind if i == accumulate - 1 else None) for i, b in enumerate(batches)]
        before = _full_state(step)
        # The hooks fire for the bad micro-batch only.
        kinds = iter([kind if i == accumulate - 1 else None for i in range(accumulate)])
        original = step.forward_backward

        def forward_backward(batch, active, loss_scale=1.0):
            injector.kind = next(kinds)
            return original(batch, active, loss_scale)

        step.forward_backward = forward_backward
        step(batches, index)
        del step.forward_backward
        injector.kind = None
        after = _full_state(step)
        if kind is None:
            changed = [k for k in before if k.startswith("model.") and not torch.equal(before[k], after[k])]
            assert changed, f"step {index} trained nothing"
            if weighting == "famo":  # and the logits moved after the optimizer step
                assert not torch.equal(before["weighting.logits"], after["weighting.logits"]), index
            if weighting == "db_mtl":  # and the gradient averages moved
                assert not torch.equal(before["weighting.grad_ema"], after["weighting.grad_ema"]), index
        else:
            _assert_same(before, after, f"step {index} ({kind})")
        assert step.lr_scheduler.last_epoch == index + 1   # the LR schedule moves on, skipped or not
    stats = step.pop_stats()
    assert int(step.skipped_total) == len(SKIPS) and float(stats["skipped"]) == len(SKIPS)
    tensors = {**step.module.state_dict(), **step.ema.module.state_dict(),
               **{f"w.{k}": v for k, v in step.weighting.state_dict().items() if k != "history"},  # DWA: NaN = unknown
               **{f"opt.{i}.{k}": v for i, s in step.optimizer.state_dict()["state"].items() for k, v in s.items()}}
    for key, value in tensors.items():
        assert torch.isfinite(value.float()).all(), key


def test_the_fp32_sgd_report_a_bad_first_batch_then_finite_weights_and_metrics(tmp_path):
    """The reported run: SGD with momentum 0.9, the first batch's loss non-finite, 6 steps. It used to end with
    non-finite backbone weights and NaN depth metrics (CPU fused SGD's momentum buffer left uninitialised)."""
    def first_batch_bad(data_cfg, split, tasks, **kw):
        loader = toy_loader_fn()(data_cfg, split, tasks, **kw)

        class FirstBad:
            sampler = loader.sampler
            fetched = 0

            def __iter__(self):
                for batch in loader:
                    FirstBad.fetched += 1
                    if FirstBad.fetched == 1:
                        batch.targets["depth"][batch.targets["depth"] > 0] = math.inf
                    yield batch
        return FirstBad() if split == "train" else loader

    cfg = tiny_config(tmp_path / "run", "train.optimizer=sgd", "train.momentum=0.9", "train.log_interval=1",
                      "model.depth.loss_max_depth=.inf")
    run_dir = train(cfg, loader_fn=first_batch_bad)
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in log if "skipped_steps" in r] == [1, 0, 0, 0, 0, 0]
    state = load_checkpoint(run_dir / "last.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert all(torch.isfinite(b).all() for s in state["optimizer"]["state"].values() for b in s.values())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("detection/mAP", "segmentation/mIoU", "depth/abs_rel", "depth/rmse", "depth/delta1"):
        assert math.isfinite(metrics[key]), key


OPTIMIZER_KINDS = {
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.05),
    "adamw_foreach": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.05, foreach=True),
    "adamw_amsgrad": lambda p: torch.optim.AdamW(p, lr=0.01, amsgrad=True),
    "adamw_fused": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.05, fused=True),
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01),
    "sgd_momentum_foreach": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, foreach=True),
    "sgd_nesterov": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    "sgd_momentum_fused": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01, fused=True),
    "sgd_nesterov_fused": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, fused=True),
    "sgd_plain": lambda p: torch.optim.SGD(p, lr=0.1),
}


@pytest.mark.parametrize("kind", list(OPTIMIZER_KINDS))
def test_pre_created_optimizer_state_gives_torchs_first_steps_bit_for_bit(kind):
    def run(pre_create: bool):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(4))]
        optimizer = OPTIMIZER_KINDS[kind](params)
        if pre_create:
            init_optimizer_state(optimizer)
        for i in range(3):
            for j, p in enumerate(params):
                p.grad = torch.randn_like(p) * (10.0 ** (i - j))
            optimizer.step()
        return params, optimizer.state_dict()["state"]

    stock, stock_state = run(False)
    ours, our_state = run(True)
    for a, b in zip(stock, ours):
        assert torch.equal(_bits(a), _bits(b))
    assert stock_state.keys() == our_state.keys()
    for index, entries in stock_state.items():
        assert entries.keys() == our_state[index].keys()
        for key, value in entries.items():
            other = our_state[index][key]
            if isinstance(value, torch.Tensor):
                assert (value.dtype, value.device, value.shape) == (other.dtype, other.device, other.shape), key
                assert torch.equal(_bits(value), _bits(other)), (index, key)
            else:
                assert value == other, (index, key)


def test_state_is_created_when_built_and_filled_in_after_loading_a_checkpoint():
    cfg = tiny_config("unused", "train.optimizer=sgd", "train.momentum=0.9")
    model = build_model(cfg.model)
    optimizer = build_optimizer(param_groups(model, None, 0.0), cfg.train)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    assert all(torch.equal(optimizer.state[p]["momentum_buffer"], torch.zeros_like(p)) for p in params)
    # A checkpoint written before some parameters ever had a gradient: their entries are missing.
    saved = optimizer.state_dict()
    del saved["state"][0]
    optimizer.load_state_dict(saved)
    assert "momentum_buffer" not in optimizer.state[params[0]]
    init_optimizer_state(optimizer)
    assert torch.equal(optimizer.state[params[0]]["momentum_buffer"], torch.zeros_like(params[0]))
    with pytest.raises(ValueError, match="dampening"):
        init_optimizer_state(torch.optim.SGD(list(model.parameters())[:1], lr=0.1, momentum=0.9, dampening=0.1))


def test_fp16_loss_scaling_backs_off_on_a_skipped_step_that_changes_nothing():
    """fp16 needs CUDA in the trainer; TrainStep itself runs it under CPU autocast, which is enough for the
    GradScaler's side: unscale_ and update still see the overflow, and the scale halves at every skipped step."""
    step = _build("sgd", "fp16", "uncertainty")
    injector = Injector(step)
    skips, skipped_at = 0, []
    for index in range(4):
        before, scale = _full_state(step), step.scaler.get_scale()
        injector.kind = "grad" if index == 2 else None
        step(_micro_batches(index, 1), index)
        injector.kind = None
        if int(step.skipped_total) > skips:   # the injected NaN, or an fp16 overflow at the initial 2^16 scale
            skips += 1
            skipped_at.append(index)
            _assert_same(before, _full_state(step), f"step {index}")
            assert step.scaler.get_scale() == scale / 2
        else:
            assert step.scaler.get_scale() == scale
    assert 2 in skipped_at
