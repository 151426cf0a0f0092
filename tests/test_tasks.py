"""The task protocol: named task instances from the config, the registry, and nothing regressed by the redesign."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from _engine_utils import tiny_config
from perception.config import ConfigError, config_from_dict, load_config
from perception.data.batch import collate
from perception.models import build_model
from perception.tasks import TASK_TYPES, build_tasks
from scenes import toy_scene

GOLDEN = json.loads((Path(__file__).parent / "golden" / "tiny_model_v1.json").read_text())
SMALL = ["model.backbone.name=test_resnet", "model.neck.channels=32"]


def _golden_batch():
    return collate([toy_scene(np.random.default_rng([7, i]), 64, 64) for i in range(2)])


def test_three_task_losses_equal_those_recorded_before_the_redesign(tmp_path):
    """The tiny model, seed 0, on a fixed batch: the same task losses and components as before task types."""
    torch.manual_seed(0)
    model = build_model(tiny_config(tmp_path).model).train()
    batch = _golden_batch()
    with torch.no_grad():
        losses, parts = model.compute_losses(model(batch.images), batch)
    for task, value in GOLDEN["losses"].items():
        assert float(losses[task]) == pytest.approx(value, rel=1e-4), task
    for key, value in GOLDEN["components"].items():
        assert float(parts[key]) == pytest.approx(value, rel=1e-4), key


def test_a_checkpoint_config_written_before_the_redesign_builds_the_same_network():
    """The config dict a checkpoint stored before the redesign rebuilds a network of the same parameter names and
    shapes, so its weights load strictly."""
    cfg = config_from_dict(GOLDEN["config"])
    model = build_model(cfg.model)
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == GOLDEN["state_dict"]
    old_weights = {k: torch.zeros(shape) for k, shape in GOLDEN["state_dict"].items()}
    model.load_state_dict(old_weights, strict=True)


def test_list_form_names_tasks_after_their_types_in_the_registry_order():
    tasks = build_tasks(["depth", "detection"])
    assert list(tasks) == ["detection", "depth"]
    assert tasks["depth"].label == "depth" and tasks["detection"].TYPE == "detection"
    cfg = load_config(None, [*SMALL, "model.tasks=[depth, segmentation]", "model.segmentation.num_classes=5"])
    specs = cfg.model.build_tasks()
    assert specs["segmentation"].num_classes == 5 and list(specs) == ["segmentation", "depth"]


def test_mapping_form_keeps_its_order_labels_and_settings():
    cfg = load_config(None, [*SMALL, "model.tasks={semantic: {type: segmentation, num_classes: 4}, "
                                     "objects: {type: detection, num_classes: 3, num_convs: 1}, "
                                     "drivable: {type: segmentation, num_classes: 3, label: drivable}}"])
    specs = cfg.model.build_tasks()
    assert list(specs) == ["semantic", "objects", "drivable"]
    assert [t.label for t in specs.values()] == ["segmentation", "detection", "drivable"]
    assert specs["objects"].cfg.num_convs == 1 and specs["drivable"].class_names == ["class_0", "class_1", "class_2"]
    model = build_model(cfg.model)
    assert model.tasks == ["semantic", "objects", "drivable"]
    assert model.heads["drivable"].num_classes == 3 and model.neck.strides[-1] == 128  # P6/P7 for `objects`


@pytest.mark.parametrize("override, message", [
    ("model.tasks={a: {type: segmentashun}}", r"tasks.a.type: unknown task type 'segmentashun'.*segmentation"),
    ("model.tasks={a: {num_classes: 3}}", r"tasks.a: missing 'type'"),
    ("model.tasks={Bad-Name: {type: depth}}", r"task names are lower-case identifiers.*Bad-Name"),
    ("model.tasks={a: {type: depth, num_classes: 3}}", r"unknown key tasks.a.'num_classes'"),
    ("model.tasks={a: {type: depth}, b: {type: segmentation, label: depth}}",
     r"tasks.b.label: 'depth' is read by task 'a' of type 'depth'"),
    ("model.tasks={}", r"empty mapping"),
    ("model.tasks=[depth, depth]", r"each task may appear once"),
])
def test_bad_task_specs_are_one_line_errors_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [*SMALL, override])


def test_five_named_tasks_two_of_one_type_train_on_their_own_labels():
    """Five tasks of three types, two segmentation tasks on different labels: every task gets a finite loss from
    its own label, a task whose label the batch lacks gets exactly 0 with a gradient path, and every head learns."""
    cfg = load_config(None, [*SMALL, "model.tasks={objects: {type: detection, num_classes: 2, num_convs: 1}, "
                                     "semantic: {type: segmentation, num_classes: 4, channels: 16}, "
                                     "coarse: {type: segmentation, num_classes: 2, channels: 16, label: coarse}, "
                                     "depth: {type: depth, channels: 16}, "
                                     "depth_l1: {type: depth, channels: 16, loss: l1_log}}"])
    from perception.data.batch import register_label

    register_label("coarse", "segmentation")
    torch.manual_seed(0)
    model = build_model(cfg.model).train()
    samples = [toy_scene(np.random.default_rng([3, i]), 64, 64) for i in range(2)]
    for sample in samples:
        sample["coarse"] = (sample["semantic"] >= 2).astype(np.int64)  # objects vs background
    batch = collate(samples)
    losses, _ = model.compute_losses(model(batch.images), batch)
    assert list(losses) == ["objects", "semantic", "coarse", "depth", "depth_l1"]
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    for name in model.tasks:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.heads[name].parameters()), name

    model.zero_grad()
    without_coarse = collate([{k: v for k, v in s.items() if k != "coarse"} for s in samples])
    losses, _ = model.compute_losses(model(without_coarse.images), without_coarse)
    assert float(losses["coarse"]) == 0.0 and losses["coarse"].requires_grad
    preds = model.eval().postprocess(model(batch.images), (64, 64))
    assert preds["coarse"].shape == (2, 64, 64) and int(preds["coarse"].max()) <= 1
    assert preds["depth_l1"].shape == (2, 64, 64) and len(preds["objects"]) == 2


def test_every_registered_type_implements_the_protocol():
    for name, cls in TASK_TYPES.items():
        assert cls.TYPE == name and cls.HEADLINE and cls.SIGNS and cls.SCORE in cls.HEADLINE
        assert set(cls.SIGNS) <= set(cls.HEADLINE) and cls.LOSS_KIND in ("regression", "classification")
        for method in ("collate", "build_head", "loss", "postprocess", "restore", "build_metric"):
            assert getattr(cls, method) is not getattr(TASK_TYPES["detection"].__mro__[1], method), (name, method)
