"""Task capacity on a shared trunk (``model.sharing: mtan | adapters``): adapters start at exactly hard sharing, an
attention mask by hand, each task's modules reached by its own loss only, what counts as shared, learning on a
tiny fixture, ONNX export and the model API (the API and checkpoint round trip are in test_mtl_sharing.py with
the other modes)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from _mtl_utils import tiny_model
from perception.data.batch import collate
from perception.models.sharing import ResidualAdapter, TaskAdaptedModel, TaskAttention
from perception.utils.configurable import ConfigError
from scenes import toy_scene

TASKS = ["detection", "segmentation", "depth"]


@pytest.fixture(scope="module")
def batch():
    return collate([toy_scene(np.random.default_rng([3, i]), 64, 64) for i in range(2)])


def _leaves(out) -> list[torch.Tensor]:
    if isinstance(out, dict):
        return [t for v in out.values() for t in _leaves(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _leaves(v)]
    return [out] if isinstance(out, torch.Tensor) else []


def test_adapters_start_at_exactly_hard_sharing_and_then_move_away(batch):
    torch.manual_seed(0)
    hard = tiny_model().eval()
    torch.manual_seed(0)
    adapted = tiny_model(sharing="adapters", adapter_channels=4).eval()
    assert isinstance(adapted, TaskAdaptedModel)
    with torch.no_grad():
        a, b = hard(batch.images), adapted(batch.images)
        assert all(torch.equal(x, y) for x, y in zip(_leaves(a), _leaves(b)))          # bit for bit
    # One gradient step on the adapters alone changes every task's output.
    losses, _ = adapted.train().compute_losses(adapted(batch.images), batch)
    sum(losses.values()).backward()
    with torch.no_grad():
        for p in adapted.task_modules.parameters():
            if p.grad is not None:
                p.sub_(0.1 * p.grad)
        b = adapted.eval()(batch.images)
        for task in TASKS:
            assert not all(torch.equal(x, y) for x, y in zip(_leaves(a[task]), _leaves(b[task]))), task


def test_adapter_and_attention_by_hand():
    x = torch.randn(2, 6, 5, 7)
    adapter = ResidualAdapter(6, 3)
    assert torch.equal(adapter(x), x)                                  # zero-initialised up projection
    with torch.no_grad():
        adapter.up.bias.fill_(0.5)
    torch.testing.assert_close(adapter(x), x + 0.5)
    # Zero convolutions: the normalised maps are 0, so the mask is sigmoid(last GroupNorm's bias) everywhere.
    attention = TaskAttention(6, 2, from_below=True)
    with torch.no_grad():
        for conv in (attention.mask[0], attention.mask[3]):
            conv.weight.zero_()
        attention.mask[4].bias.copy_(torch.linspace(-1, 1, 6))
    below = torch.randn(2, 6, 10, 13)                                   # the finer level: resized to 5 x 7
    out = attention(x, below)
    torch.testing.assert_close(out, torch.sigmoid(torch.linspace(-1, 1, 6))[None, :, None, None] * x)
    assert out.shape == x.shape


@pytest.mark.parametrize("sharing,options", [("mtan", {}), ("mtan", {"mtan_from_below": False}),
                                             ("adapters", {})])
def test_each_task_has_its_own_modules_reached_by_its_own_loss_only(sharing, options, batch):
    torch.manual_seed(0)
    model = tiny_model(sharing=sharing, **options).train()
    hard = tiny_model()
    # One module per level the head reads (detection: P3..P7, the dense tasks P2..P5), outputs as in hard sharing.
    assert [len(model.task_modules[t].levels) for t in TASKS] == [5, 4, 4]
    outputs = model(batch.images)
    reference = hard(batch.images)
    for task in TASKS:
        assert [x.shape for x in _leaves(outputs[task])] == [x.shape for x in _leaves(reference[task])]
    # Shared: backbone + FPN only; a task's own parameters: its head and its modules.
    shared = {id(p) for p in model.shared_parameters()}
    assert shared == {id(p) for m in (model.backbone, model.neck) for p in m.parameters()}
    assert not shared & {id(p) for p in model.task_modules.parameters()}
    assert {id(p) for p in model.task_parameters("depth")} == \
        {id(p) for m in (model.task_modules["depth"], model.heads["depth"]) for p in m.parameters()}
    losses, _ = model.compute_losses(outputs, batch)
    losses["depth"].backward()
    for task in ("detection", "segmentation"):
        assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in model.task_modules[task].parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.task_modules["depth"].parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())


@pytest.mark.parametrize("sharing", ["mtan", "adapters"])
def test_a_model_with_task_modules_trains(sharing, batch):
    from perception.engine.step import TrainStep, make_grad_scaler
    from perception.mtl import TaskScheduler, WeightingConfig, build_weighting

    torch.manual_seed(0)
    model = tiny_model(sharing=sharing)
    weighting = build_weighting(WeightingConfig(method="equal"), model.tasks)
    cpu = torch.device("cpu")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    step = TrainStep(model, model, weighting, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
                     make_grad_scaler("none", cpu), TaskScheduler(model.tasks), cpu, grad_clip=10.0)
    start = [p.detach().clone() for p in model.task_modules.parameters()]
    totals = []
    for index in range(12):
        step([batch], index)
        stats = step.pop_stats()
        totals.append(float(stats["total_sum"]))
    assert np.mean(totals[-3:]) < 0.8 * np.mean(totals[:3]), totals
    assert all(not torch.equal(p, s) for p, s in zip(model.task_modules.parameters(), start))  # every layer learned


def test_mtan_exports_to_onnx_and_matches_pytorch(tmp_path):
    from _inference_utils import TINY
    from _inference_utils import tiny_model as inference_model
    from perception.config import Config
    from perception.inference.export import compare_with_torch, export_onnx
    from perception.utils.configurable import from_dict

    cfg = from_dict(Config, {**TINY, "model": {**TINY["model"], "sharing": "mtan"}, "data": {"image_size": [64, 96]}})
    model = inference_model(cfg)
    result = export_onnx(model, tmp_path / "mtan.onnx", (64, 96), exporter="torchscript")
    images = np.random.default_rng(0).uniform(0, 255, size=(2, 3, 64, 96)).astype(np.float32)
    diffs = compare_with_torch(result.path, model, images)
    assert set(diffs) == set(result.output_names) and max(diffs.values()) < 1e-3, diffs


def test_task_module_settings_are_validated():
    with pytest.raises(ConfigError, match="mtan_reduction"):
        tiny_model(sharing="mtan", mtan_reduction=0)
    with pytest.raises(ConfigError, match="mtan_reduction"):
        tiny_model(sharing="mtan", mtan_reduction=64)                   # above neck.channels (32)
    with pytest.raises(ConfigError, match="adapter_channels"):
        tiny_model(sharing="adapters", adapter_channels=0)


@pytest.mark.parametrize("sharing", ["mtan", "adapters"])
def test_task_modules_follow_the_levels_of_a_pruned_pyramid(sharing, batch):
    # Detection on P3..P5 and stride-8 dense branches on a pruned neck (no P2, no P6/P7): each task gets one
    # module per level its head reads, and the outputs have the hard-sharing shapes.
    settings = {"neck": {"channels": 32, "prune": True}, "detection": {"num_classes": 8, "max_stride": 32},
                "segmentation": {"num_classes": 19, "stride": 8}, "depth": {"stride": 8}}
    torch.manual_seed(0)
    hard = tiny_model(**settings).eval()
    torch.manual_seed(0)
    adapted = tiny_model(sharing=sharing, **settings).eval()
    assert hard.neck.strides == (8, 16, 32)
    assert {t: len(m.levels) for t, m in adapted.task_modules.items()} == {t: 3 for t in TASKS}
    with torch.no_grad():
        a, b = hard(batch.images), adapted(batch.images)
    assert [x.shape for x in _leaves(a)] == [x.shape for x in _leaves(b)]
    if sharing == "adapters":
        assert all(torch.equal(x, y) for x, y in zip(_leaves(a), _leaves(b)))
