"""Parameter sharing modes: cross-stitch at identity is separate networks, the soft penalty's value and pull, and
every mode keeps the model's API."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from _mtl_utils import tiny_model
from perception.data.batch import collate
from perception.models.multitask import MultiTaskModel
from perception.models.sharing import PENALTY_KEY, CrossStitchModel, CrossStitchUnit, SoftSharingModel
from perception.utils.configurable import ConfigError
from scenes import toy_scene

TASKS = ["detection", "segmentation", "depth"]


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    return collate([toy_scene(rng, 64, 64) for _ in range(2)])


def _single_task_net(model, task):
    return MultiTaskModel(model.backbone[task], model.neck[task], {task: model.heads[task]},
                          {task: model.task_specs[task]})


def _assert_outputs_close(a, b):
    if isinstance(a, dict):
        for key in a:
            _assert_outputs_close(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        for x, y in zip(a, b):
            _assert_outputs_close(x, y)
    else:
        torch.testing.assert_close(a, b)


def test_cross_stitch_unit_mixes_the_tasks_features():
    unit = CrossStitchUnit(3, self_weight=0.8)
    torch.testing.assert_close(unit.weight.sum(1), torch.ones(3))     # rows are convex combinations
    assert unit.weight[0, 0].item() == pytest.approx(0.8) and unit.weight[0, 1].item() == pytest.approx(0.1)
    xs = [torch.randn(2, 4, 3, 3) for _ in range(3)]
    mixed = unit(xs)
    torch.testing.assert_close(mixed[1], 0.1 * xs[0] + 0.8 * xs[1] + 0.1 * xs[2])


def test_cross_stitch_at_identity_equals_separate_networks(batch):
    torch.manual_seed(0)
    model = tiny_model(sharing="cross_stitch", cross_stitch_init=1.0).eval()
    assert isinstance(model, CrossStitchModel)
    with torch.no_grad():
        outputs = model(batch.images)
        for task in TASKS:
            _assert_outputs_close(outputs[task], _single_task_net(model, task)(batch.images, tasks=[task])[task])
    # Task losses reach the other tasks' backbones only through the (learned) mixing weights.
    task_losses, _ = model.compute_losses(model.train()(batch.images), batch)
    task_losses["depth"].backward()
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in model.backbone["detection"].parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone["depth"].parameters())
    assert all(unit.weight.grad[2, 0].abs() > 0 for unit in model.units)   # alpha_{depth, detection} learns

    # Away from the identity the tasks' features mix.
    torch.manual_seed(0)
    mixed = tiny_model(sharing="cross_stitch", cross_stitch_init=0.9).eval()
    with torch.no_grad():
        out = mixed(batch.images, tasks=["segmentation"])["segmentation"]
        alone = _single_task_net(mixed, "segmentation")(batch.images, tasks=["segmentation"])["segmentation"]
    assert not torch.allclose(out, alone)


def test_soft_sharing_penalty_is_zero_when_tied_and_pulls_parameters_together(batch):
    torch.manual_seed(0)
    model = tiny_model(sharing="soft", soft_sharing_weight=0.5)
    assert isinstance(model, SoftSharingModel) and list(model.shared_parameters()) == []
    assert model.sharing_penalty().item() == 0.0                      # every trunk starts from the same weights
    # Perturb one parameter of the depth trunk by d: the penalty is lambda * |d|^2 per pair that contains it.
    param = next(model.backbone["depth"].parameters())
    delta = 0.01 * torch.randn_like(param)
    with torch.no_grad():
        param.add_(delta)
    expected = 0.5 * 2 * delta.pow(2).sum()                           # pairs (detection, depth), (segm., depth)
    torch.testing.assert_close(model.sharing_penalty(), expected)
    torch.testing.assert_close(model.sharing_penalty(["detection", "segmentation"]), torch.zeros(()))
    # Its gradient is 2 lambda (theta_a - theta_b) summed over partners; a step along it shrinks the distance.
    penalty = model.sharing_penalty()
    penalty.backward()
    torch.testing.assert_close(param.grad, 2 * 0.5 * 2 * delta)
    torch.testing.assert_close(next(model.backbone["detection"].parameters()).grad, -2 * 0.5 * delta)
    with torch.no_grad():
        for trunk in ("backbone", "neck"):
            for module in getattr(model, trunk).values():
                for p in module.parameters():
                    if p.grad is not None:
                        p.sub_(0.1 * p.grad)
    assert model.sharing_penalty() < 0.5 * penalty
    # compute_losses hands the penalty (with its gradient) to the trainer, over the tasks that ran.
    outputs = model(batch.images, tasks=["segmentation", "depth"])
    task_losses, components = model.compute_losses(outputs, batch)
    assert set(task_losses) == {"segmentation", "depth"} and components[PENALTY_KEY].requires_grad
    torch.testing.assert_close(components[PENALTY_KEY], model.sharing_penalty(["segmentation", "depth"]))


@pytest.mark.parametrize("sharing", ["hard", "soft", "cross_stitch", "mtan", "adapters"])
def test_every_sharing_mode_keeps_the_model_api(sharing, batch):
    torch.manual_seed(0)
    model = tiny_model(sharing=sharing)
    if sharing == "adapters":                                         # away from their zero start
        with torch.no_grad():
            for p in model.task_modules.parameters():
                p.normal_(0, 0.1)
    outputs, features = model(batch.images, return_features=True)
    assert set(outputs) == set(TASKS)
    # A pyramid shared by all tasks, or none.
    assert (features is not None) == (sharing in ("hard", "mtan", "adapters"))
    task_losses, _ = model.compute_losses(outputs, batch)
    assert all(torch.isfinite(v) for v in task_losses.values())
    predictions = model.eval().postprocess(outputs, tuple(batch.images.shape[-2:]))
    assert predictions["segmentation"].shape == (2, 64, 64) and len(predictions["detection"]) == 2
    assert set(model(batch.images, tasks=["depth"])) == {"depth"}
    last = list(model.last_shared_parameters())
    assert last and all(any(p is q for q in model.parameters()) for p in last)
    # A checkpoint round trip through the state dict restores the same network.
    clone = tiny_model(sharing=sharing)
    clone.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(clone.eval()(batch.images, tasks=["depth"])["depth"],
                                   model(batch.images, tasks=["depth"])["depth"])


def test_sharing_settings_are_validated():
    with pytest.raises(ConfigError, match="sharing"):
        tiny_model(sharing="cross-stitch")
    with pytest.raises(ConfigError, match="cross_stitch_init"):
        tiny_model(sharing="cross_stitch", cross_stitch_init=1.5)
    with pytest.raises(ConfigError, match="soft_sharing_weight"):
        tiny_model(sharing="soft", soft_sharing_weight=-1.0)


@pytest.mark.parametrize("method", ["uncertainty", "pcgrad"])
def test_the_train_step_hands_the_soft_penalty_to_the_weighting_once(batch, method):
    from perception.engine.step import TrainStep, make_grad_scaler
    from perception.mtl import WeightingConfig, build_weighting

    torch.manual_seed(0)
    model = tiny_model(sharing="soft", soft_sharing_weight=0.5)
    param = next(model.backbone["depth"].parameters())
    with torch.no_grad():
        param.add_(0.05)                                              # untie the trunks: a penalty to pull
    weighting = build_weighting(WeightingConfig(method=method, init_log_var=0.5), model.tasks)
    params = [p for p in model.parameters() if p.requires_grad]
    cpu = torch.device("cpu")
    step = TrainStep(model, model, weighting, torch.optim.SGD(params, lr=0.0), None, make_grad_scaler("none", cpu),
                     None, cpu)
    _, loss = step.forward_backward(batch, model.tasks)
    # The reference: the weighting's combination of the task losses plus the penalty, unweighted, once.
    task_losses, components = model.compute_losses(model(batch.images), batch)
    combined, _ = weighting(task_losses)
    reference = torch.autograd.grad(combined + components[PENALTY_KEY], params, allow_unused=True,
                                    retain_graph=True)
    penalty_grad = torch.autograd.grad(components[PENALTY_KEY], [param])[0]
    assert penalty_grad.abs().max() > 1e-2                            # large against the tolerance below
    for p, ref in zip(params, reference):
        torch.testing.assert_close(p.grad, ref if ref is not None else torch.zeros_like(p), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(loss, (combined + components[PENALTY_KEY]).detach())
