"""The surface normals task type: metric, loss, targets through augmentation and collate, head, inference, and the
NYUv2 3-task setting (segmentation + depth + normals) trained and evaluated from the command line."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from perception.data.batch import collate
from perception.data.config import AugmentConfig
from perception.data.transforms import JointTransform
from perception.metrics import higher_is_better
from perception.ops.geometry import fit_letterbox
from perception.tasks import TASK_TYPES, build_tasks
from perception.tasks.normals import NormalsTask
from perception.tasks.normals.loss import normals_loss
from perception.tasks.normals.metric import NormalsMetric, angular_errors

ROOT = Path(__file__).resolve().parents[1]


def _at_angles(degrees) -> np.ndarray:
    """Unit vectors in the x-z plane at ``degrees`` from +z, as an [N, 3] array."""
    a = np.radians(np.asarray(degrees, np.float64))
    return np.stack([np.sin(a), np.zeros_like(a), np.cos(a)], -1).astype(np.float32)


def _normals(h: int, w: int, seed: int = 0) -> np.ndarray:
    n = np.random.default_rng(seed).normal(size=(h, w, 3)).astype(np.float32)
    return n / np.linalg.norm(n, axis=-1, keepdims=True)


def test_registered_with_its_protocol():
    assert TASK_TYPES["normals"] is NormalsTask
    tasks = build_tasks({"semantic": {"type": "segmentation", "num_classes": 3}, "depth": {"type": "depth"},
                         "normals": {"type": "normals", "loss": "l1", "channels": 8}})
    task = tasks["normals"]
    assert (task.label, task.cfg.loss, task.cfg.channels) == ("normals", "l1", 8)
    assert list(build_tasks(["normals", "segmentation"])) == ["segmentation", "normals"]   # the registry's order
    assert task.signs() == {"normals/mean": -1, "normals/median": -1, "normals/within_11.25": 1,
                            "normals/within_22.5": 1, "normals/within_30": 1}
    assert task.LOSS_KIND == "regression" and task.SCORE in task.SIGNS and set(task.HEADLINE) == set(task.SIGNS)
    with pytest.raises(ValueError, match="loss"):
        build_tasks({"normals": {"type": "normals", "loss": "l2"}})


def test_metric_directions_reach_the_multitask_rules():
    assert not higher_is_better("normals/mean") and not higher_is_better("surface/median")
    assert higher_is_better("normals/within_11.25") and higher_is_better("normals/within_30")
    assert not higher_is_better("depth/rmse") and higher_is_better("semantic/mIoU")


def test_metric_on_known_angles():
    # One image of 2 x 3 pixels: angles 0, 10, 20, 40, 90 degrees to the prediction, and one pixel with no normal.
    target = np.zeros((1, 2, 3, 3), np.float32)
    target[0].reshape(-1, 3)[:5] = _at_angles([0, 10, 20, 40, 90])
    pred = np.zeros_like(target)
    pred[..., 2] = 2.0                                   # (0, 0, 2): not unit, the metric normalises
    metric = NormalsMetric()
    metric.update(torch.from_numpy(pred), torch.from_numpy(target))
    out = metric.compute("normals/")
    assert out["normals/mean"] == pytest.approx(32.0, abs=1e-6)
    assert abs(out["normals/median"] - 20.0) <= metric.bin_width
    assert out["normals/within_11.25"] == pytest.approx(2 / 5)
    assert out["normals/within_22.5"] == pytest.approx(3 / 5) and out["normals/within_30"] == pytest.approx(3 / 5)
    assert NormalsMetric().compute("n/") == {"n/mean": 0.0, "n/median": 0.0, "n/within_11.25": 0.0,
                                             "n/within_22.5": 0.0, "n/within_30": 0.0}
    np.testing.assert_allclose(angular_errors(torch.tensor([[1.0, 0, 0]]), torch.tensor([[-1.0, 0, 0]])), [180.0])


def test_metric_sums_reduce_like_one_pass_and_the_median_is_within_a_bin():
    rng = np.random.default_rng(1)
    angles = rng.uniform(0, 60, 400)
    target = torch.from_numpy(_at_angles(angles).reshape(4, 10, 10, 3))
    pred = torch.zeros_like(target)
    pred[..., 2] = 1.0
    whole = NormalsMetric()
    whole.update(pred, target)
    # Two "processes" each see half; their states summed (what all_reduce_sum does) give the same metrics.
    parts = [NormalsMetric(), NormalsMetric()]
    parts[0].update(pred[:2], target[:2])
    parts[1].update(pred[2:], target[2:])
    parts[0].sums += parts[1].sums
    parts[0].histogram += parts[1].histogram
    assert parts[0].compute() == pytest.approx(whole.compute(), abs=1e-9)
    out = whole.compute()
    assert out["normals/mean"] == pytest.approx(angles.mean(), abs=1e-4)
    assert abs(out["normals/median"] - np.median(angles)) <= whole.bin_width
    assert out["normals/within_22.5"] == pytest.approx((angles < 22.5).mean())


def test_cosine_and_l1_losses():
    n = torch.from_numpy(_normals(4, 5))[None]                       # [1, H, W, 3]
    pred = n.permute(0, 3, 1, 2).clone().requires_grad_(True)        # [1, 3, H, W]
    assert normals_loss(pred, n).item() == pytest.approx(0.0, abs=1e-6)
    assert normals_loss(pred, n, "l1").item() == pytest.approx(0.0, abs=1e-6)
    x = torch.zeros(1, 2, 2, 3)
    x[..., 0] = 1.0
    y = torch.zeros(1, 3, 2, 2)
    y[:, 1] = 1.0
    assert normals_loss(y, x).item() == pytest.approx(1.0)                    # orthogonal: 1 - cos 90
    assert normals_loss(y, x, "l1").item() == pytest.approx(2.0)              # |(1, 0, 0) - (0, 1, 0)|_1
    assert normals_loss(-x.permute(0, 3, 1, 2), x).item() == pytest.approx(2.0)  # opposite
    # Pixels without a normal count nowhere; a batch with none gives 0 that is still part of the graph.
    x[0, 0, 0] = 0.0
    y.requires_grad_(True)
    assert normals_loss(y, x).item() == pytest.approx(1.0)
    empty = normals_loss(y, torch.zeros(1, 2, 2, 3))
    assert empty.item() == 0.0 and empty.requires_grad
    empty.backward()
    assert torch.equal(y.grad, torch.zeros_like(y))


def test_flip_negates_x_and_zoom_keeps_the_vectors():
    h, w = 8, 12
    n = _normals(h, w)
    n[0, 0] = 0.0
    sample = {"image": np.zeros((h, w, 3), np.uint8), "normals": n}
    flip = JointTransform((h, w), True, AugmentConfig(scale=(1.0, 1.0), hflip=1.0, color_p=0.0), labels=["normals"])
    out = flip(sample, seed=0)
    expected = n[:, ::-1].copy()
    expected[..., 0] *= -1
    assert out["meta"]["flipped"]
    np.testing.assert_array_equal(out["normals"].numpy(), expected)
    zoom = JointTransform((h, w), True, AugmentConfig(scale=(2.0, 2.0), hflip=0.0, color_p=0.0), labels=["normals"])
    zoomed = zoom(sample, seed=0)["normals"].numpy().reshape(-1, 3)
    # Nearest resampling of an unchanged field: every vector is one of the input's, none is rescaled.
    assert {tuple(v) for v in zoomed} <= {tuple(v) for v in n.reshape(-1, 3)}
    shrink = JointTransform((h, w), True, AugmentConfig(scale=(0.5, 0.5), hflip=0.0, color_p=0.0),
                            labels=["normals"])
    padded = shrink(sample, seed=0)["normals"]
    assert (padded.abs().sum(-1) == 0).sum() >= h * w * 3 // 4          # the padding reads "no normal"


def test_collate_pads_with_zeros_and_marks_absent_samples():
    a = {"image": np.zeros((5, 7, 3), np.uint8), "normals": _normals(5, 7)}
    b = {"image": np.zeros((6, 4, 3), np.uint8)}
    batch = collate([a, b], size_divisor=8, labels=["normals"])
    target = batch.targets["normals"]
    assert target.shape == (2, 8, 8, 3) and target.dtype == torch.float32
    assert batch.has["normals"].tolist() == [True, False]
    np.testing.assert_array_equal(target[0, :5, :7].numpy(), a["normals"])
    assert target[0, 5:].abs().sum() == 0 and target[0, :, 7:].abs().sum() == 0 and target[1].abs().sum() == 0


def _task_and_head(channels: int = 8):
    task = build_tasks({"normals": {"type": "normals", "channels": channels}})["normals"]
    torch.manual_seed(0)
    return task, task.build_head(16, [4, 8, 16, 32])


def _pyramid(batch: int = 2, size: tuple[int, int] = (32, 48)):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(batch, 16, size[0] // s, size[1] // s, generator=g) for s in (4, 8, 16, 32)]


def test_head_gives_unit_vectors_and_its_loss_trains():
    task, head = _task_and_head()
    out = head(_pyramid())
    assert out.shape == (2, 3, 8, 12)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2, 8, 12))
    pred = task.postprocess(head, out, (32, 48))
    assert pred.shape == (2, 32, 48, 3)
    torch.testing.assert_close(pred.norm(dim=-1), torch.ones(2, 32, 48))
    target = torch.zeros(2, 32, 48, 3)
    target[..., 1] = -1.0
    loss, parts = task.loss(head, out, target, torch.tensor([True, True]))
    assert parts == {} and 0.0 <= loss.item() <= 2.0
    loss.backward()
    assert head.predictor.weight.grad.abs().sum() > 0
    restored = task.restore(pred[0], (30, 45), (60, 90))
    assert restored.shape == (60, 90, 3)
    torch.testing.assert_close(restored.norm(dim=-1), torch.ones(60, 90))


def test_predict_decode_numpy_and_draw_agree():
    task, head = _task_and_head()
    with torch.no_grad():
        out = head(_pyramid(1, (64, 64)))
    box = fit_letterbox(50, 70, (64, 64))            # resized 46 x 64, padded 64 x 64
    [result] = task.predict(head, out, [box])
    assert set(result) == set(task.FIELDS) and result["normals"].shape == (50, 70, 3)
    np.testing.assert_allclose(np.linalg.norm(result["normals"], axis=-1), 1.0, atol=1e-5)
    exported = {k: v[0].numpy() for k, v in task.export_outputs(head, out).items()}
    np.testing.assert_allclose(task.decode_numpy(exported, box)["normals"], result["normals"], atol=1e-4)
    picture = task.draw(np.zeros((1, 3, 3), np.uint8),
                        {"normals": np.array([[[1, 0, 0], [0, -1, 0], [0, 0, 0]]], np.float32)})
    assert picture.dtype == np.uint8 and picture.tolist() == [[[255, 128, 128], [128, 0, 128], [0, 0, 0]]]
    assert task.record({"normals": np.array([[[0, 0, -1.0], [0, -1.0, 0]]])}) == {"mean_normal": [0.0, -0.5, -0.5]}


def test_the_normals_head_alone_overfits_one_synthetic_batch(one_thread):
    from perception.data.synthetic import generate_scene
    from perception.models import build_model
    from perception.models.config import ModelConfig
    from perception.utils.configurable import from_dict

    torch.manual_seed(0)
    model = build_model(from_dict(ModelConfig, {"tasks": {"normals": {"type": "normals", "channels": 16}},
                                                "backbone": {"name": "test_resnet"}, "neck": {"channels": 16}}))
    batch = collate([generate_scene(i, "train", 0, 32, 64) for i in (0, 1)], labels=["normals"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)

    def mean_error() -> float:
        model.eval()
        with torch.no_grad():
            metric = NormalsMetric()
            metric.update(model.postprocess(model(batch.images), (32, 64))["normals"], batch.targets["normals"])
        model.train()
        return metric.compute()["normals/mean"]

    before = mean_error()                # about 78 degrees: random directions
    for _ in range(30):
        loss = model.compute_losses(model(batch.images), batch)[0]["normals"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = mean_error()
    assert after < 0.4 * before and after < 25.0, (before, after)   # about 18 degrees after 30 steps


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_tool", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _mtan_files(root: Path, split: str, count: int, h: int = 48, w: int = 64) -> None:
    """``count`` samples in the MTAN layout: floor (normal up) below a wall (normal facing the camera)."""
    for sub in ("image", "label", "depth", "normal"):
        (root / split / sub).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        rng = np.random.default_rng(i)
        image = rng.uniform(0, 1, (h, w, 3)).astype(np.float32)
        image[h // 2:, :, 1] = 0.9
        label = np.full((h, w), 11, np.float32)                         # wall
        label[h // 2:] = 4                                              # floor
        label[0] = -1
        depth = np.full((h, w, 1), 3.0, np.float32)
        normal = np.zeros((h, w, 3), np.float32)
        normal[:h // 2, :, 2] = -1.0
        normal[h // 2:, :, 1] = -1.0
        normal[:, :2] = 0.0                                              # no normal there
        for sub, array in (("image", image), ("label", label), ("depth", depth), ("normal", normal)):
            np.save(root / split / sub / f"{i}.npy", array)


def test_nyuv2_three_tasks_train_and_evaluate_from_the_command_line(tmp_path, capsys, one_thread):
    data = tmp_path / "nyuv2"
    _mtan_files(data, "train", 4)
    _mtan_files(data, "val", 2)
    tasks = ("{semantic: {type: segmentation, num_classes: 13, channels: 16}, depth: {type: depth, channels: 16, "
             "max_depth: 10.0}, normals: {type: normals, channels: 16}}")
    overrides = [f"model.tasks={tasks}", "model.backbone.name=test_resnet", "model.backbone.pretrained=false",
                 "model.neck.channels=16", f"output_dir={tmp_path / 'run'}", "train.device=cpu",
                 "train.progress=false", "train.tensorboard=false", "train.amp=none", "train.channels_last=false",
                 "train.max_steps=3", "train.warmup_steps=1", "train.log_interval=1", "train.eval_interval=0",
                 "train.num_overlays=0", "data.batch_size=2", "data.num_workers=0", "data.image_size=[48, 64]",
                 f"data.train=[{{type: nyuv2_mtan, root: {data}, split: train}}]",
                 f"data.val=[{{type: nyuv2_mtan, root: {data}, split: val}}]"]
    config = str(ROOT / "configs" / "nyuv2.yaml")
    assert _tool("train").main(["--config", config, *overrides]) == 0
    assert _tool("eval").main(["--config", config, "--checkpoint", str(tmp_path / "run" / "last.pt"),
                               "--output", str(tmp_path / "metrics.json"), *overrides]) == 0
    assert "normals" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("semantic/mIoU", "depth/abs_err", "normals/mean", "normals/median", "normals/within_11.25",
                "normals/within_22.5", "normals/within_30"):
        assert math.isfinite(metrics[key]), key
    assert 0.0 <= metrics["normals/mean"] <= 180.0 and 0.0 <= metrics["normals/within_30"] <= 1.0


def test_the_shipped_three_task_config():
    from perception.config import load_config

    cfg = load_config(ROOT / "configs" / "nyuv2_3task.yaml")
    tasks = cfg.model.build_tasks()
    assert {name: task.TYPE for name, task in tasks.items()} == {"segmentation": "segmentation", "depth": "depth",
                                                                 "normals": "normals"}
    assert tasks["segmentation"].num_classes == 13 and list(cfg.data.image_size) == [288, 384]
    assert cfg.data.train[0].type == "nyuv2_mtan" and cfg.weighting.method == "uncertainty"
    assert {"normals/mean", "normals/within_11.25", "segmentation/mIoU"} <= set(cfg.eval.delta_m_metrics)
    baseline = load_config(ROOT / "configs" / "nyuv2_normals.yaml")
    assert list(baseline.model.build_tasks()) == ["normals"] and baseline.weighting.method == "equal"


def test_predictor_onnx_export_and_pictures_of_a_three_task_model(tmp_path, one_thread):
    from perception.config import Config, from_dict
    from perception.inference.export import export_onnx, onnx_session, read_metadata, tasks_from_metadata
    from perception.inference.postprocess_numpy import postprocess_numpy
    from perception.inference.predictor import Predictor
    from perception.inference.visualize import render_prediction
    from perception.models import build_model
    from perception.ops.geometry import letterbox_image

    cfg = from_dict(Config, {"model": {"backbone": {"name": "test_resnet"}, "neck": {"channels": 16},
                                       "tasks": {"semantic": {"type": "segmentation", "num_classes": 3, "channels": 8},
                                                 "depth": {"type": "depth", "channels": 8},
                                                 "normals": {"type": "normals", "channels": 8}}},
                             "data": {"image_size": [64, 96]}})
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    image = np.random.default_rng(3).integers(0, 256, (77, 131, 3), dtype=np.uint8)
    pred = Predictor(model, (64, 96), device="cpu")(image)
    assert pred.normals.shape == (77, 131, 3) and pred.types["normals"] == "normals"
    np.testing.assert_allclose(np.linalg.norm(pred.normals, axis=-1), 1.0, atol=1e-5)
    picture = render_prediction(image, pred, tasks=model.task_specs)
    assert picture.shape == (77, 3 * 131, 3)
    # The ONNX graph's normals decoded with numpy only give the predictor's normals.
    exported = export_onnx(model, tmp_path / "tiny.onnx", (64, 96), exporter="torchscript")
    assert "normals__normals" in exported.output_names
    session = onnx_session(exported.path)
    metadata = read_metadata(session)
    padded, letterbox = letterbox_image(image, tuple(metadata["image_size"]))
    names = [o.name for o in session.get_outputs()]
    outputs = session.run(None, {"images": padded.transpose(2, 0, 1)[None].astype(np.float32)})
    got = postprocess_numpy({n: o[0] for n, o in zip(names, outputs)}, letterbox, tasks_from_metadata(metadata),
                            metadata)
    assert np.degrees(np.arccos(np.clip((got.normals * pred.normals).sum(-1), -1, 1))).max() < 0.5
    raw = model.task_specs["normals"].raw_image(pred["normals"])
    assert raw.dtype == np.uint16 and raw.shape == (77, 131, 3)
    np.testing.assert_allclose(raw[..., ::-1] / 32767.5 - 1.0, pred.normals, atol=1e-4)
