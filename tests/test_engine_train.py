"""The training loop end to end on tiny generated scenes: train -> eval -> metrics.json, resume, non-finite stop."""
from __future__ import annotations

import json
import math

import pytest
import torch

from _engine_utils import crashing_loader_fn, tiny_config, toy_loader_fn
from perception.engine.evaluator import evaluate
from perception.engine.trainer import NonFiniteLossError, train
from perception.engine.checkpoint import load_checkpoint

STABLE_KEYS = ("detection/mAP", "detection/mAP50", "segmentation/mIoU", "segmentation/pixel_acc", "depth/abs_rel",
               "depth/rmse", "depth/delta1")


def _log(run_dir):
    return [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


def _losses(run_dir):
    return {r["step"]: r["loss/total"] for r in _log(run_dir) if "loss/total" in r}


def test_train_then_evaluate_writes_every_metric(tmp_path):
    cfg = tiny_config(tmp_path / "run", "train.max_steps=30", "train.eval_interval=15", "train.ema=true",
                      "train.ema_decay=0.9", "train.log_interval=5", "train.tensorboard=true", "train.num_overlays=1")
    run_dir = train(cfg, loader_fn=toy_loader_fn())
    for name in ("config.yaml", "last.pt", "best.pt", "metrics.json", "train_log.jsonl"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tb").iterdir())
    log = _log(run_dir)
    first, last = log[0], [r for r in log if "loss/total" in r][-1]
    # Learning really happens, and every task's loss, weight and sigma is logged.
    assert last["loss/total"] < first["loss/total"]
    for task in ("detection", "segmentation", "depth"):
        assert {f"loss/{task}", f"weight/{task}", f"sigma/{task}"} <= set(first)
    assert first["images_per_s"] > 0 and first["lr"] > 0

    state = load_checkpoint(run_dir / "last.pt")
    assert state["step"] == 30 and state["config"]["train"]["max_steps"] == 30 and "ema" in state

    metrics = evaluate(cfg, run_dir / "best.pt", loader_fn=toy_loader_fn(), output=tmp_path / "m.json")
    written = json.loads((tmp_path / "m.json").read_text())
    for key in STABLE_KEYS:
        assert math.isfinite(written[key]), key
    assert written == pytest.approx(metrics)
    # 30 steps on 8 scenes: the sky/ground split of the segmentation is learnt.
    assert written["segmentation/pixel_acc"] > 0.6


def test_resume_continues_the_same_loss_curve(tmp_path):
    steps = ["train.max_steps=6", "train.log_interval=1", "train.checkpoint_interval=3"]
    full = train(tiny_config(tmp_path / "full", *steps), loader_fn=toy_loader_fn(train_size=6))

    # The same run, crashing while it fetches the data of step 4 (after last.pt of step 3 was written).
    cfg = tiny_config(tmp_path / "crashed", *steps)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, loader_fn=crashing_loader_fn(3))
    assert load_checkpoint(tmp_path / "crashed" / "last.pt")["step"] == 3
    resumed = train(cfg, resume=tmp_path / "crashed" / "last.pt", loader_fn=toy_loader_fn(train_size=6))

    a, b = _losses(full), _losses(resumed)
    assert sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in range(1, 7):
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-6), step
    # Steps 4-6 use the second epoch's shuffle (6 scenes, batch 2): the sampler position was restored too.
    assert len({round(a[s], 6) for s in (4, 5, 6)}) == 3
    sa, sb = load_checkpoint(full / "last.pt"), load_checkpoint(resumed / "last.pt")
    for key in sa["model"]:
        torch.testing.assert_close(sb["model"][key], sa["model"][key], rtol=1e-4, atol=1e-6)


def test_non_finite_loss_stops_and_names_the_task(tmp_path):
    def poisoned(data_cfg, split, tasks, **kw):
        loader = toy_loader_fn()(data_cfg, split, tasks, **kw)

        class Poisoned:
            sampler = loader.sampler
            fetched = 0

            def __iter__(self):
                for batch in loader:
                    Poisoned.fetched += 1
                    if Poisoned.fetched > 2:  # from step 3 on every depth label is infinite
                        batch.targets["depth"][batch.targets["depth"] > 0] = math.inf
                    yield batch
        return Poisoned() if split == "train" else loader

    # No bound on the depth targets (by default the loss ignores depth beyond max_depth, infinity included), so
    # that the infinite labels reach the loss.
    cfg = tiny_config(tmp_path / "run", "train.max_steps=20", "train.checkpoint_interval=2",
                      "train.max_nonfinite_steps=3", "train.log_interval=2", "model.depth.loss_max_depth=.inf")
    with pytest.raises(NonFiniteLossError, match="depth loss") as err:
        train(cfg, loader_fn=poisoned)
    assert "last.pt" in str(err.value)
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    log = _log(tmp_path / "run")
    assert log[-1]["skipped_total"] >= 3 and log[0]["skipped_total"] == 0


def test_best_by_delta_m_needs_baselines(tmp_path):
    cfg = tiny_config(tmp_path / "run", "train.best_metric=delta_m", "train.max_steps=2")
    with pytest.raises(ValueError, match="eval.baselines"):
        train(cfg, loader_fn=toy_loader_fn())
    assert not (tmp_path / "run" / "last.pt").exists()


def test_bf16_autocast_channels_last_accumulation_on_cpu(tmp_path):
    cfg = tiny_config(tmp_path / "run", "train.amp=bf16", "train.channels_last=true", "train.accumulate=2",
                      "train.max_steps=4", "train.optimizer=sgd", "train.lr=0.01")
    run_dir = train(cfg, loader_fn=toy_loader_fn())
    log = [r for r in _log(run_dir) if "loss/total" in r]
    assert all(math.isfinite(r["loss/total"]) and r["skipped_steps"] == 0 for r in log)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert all(math.isfinite(metrics[k]) for k in STABLE_KEYS)


def test_gradient_methods_plug_in_without_trainer_changes(tmp_path):
    # MGDA-UB wants the shared features (needs_features) and syncs its own gradients (manual_grad_sync).
    cfg = tiny_config(tmp_path / "run", "weighting.method=mgda", "train.max_steps=2",
                      "weighting.task_schedule.method=round_robin")
    run_dir = train(cfg, loader_fn=toy_loader_fn())
    assert load_checkpoint(run_dir / "last.pt")["step"] == 2


def test_tools_train_and_eval_on_the_built_in_synthetic_scenes(tmp_path, capsys):
    """tools/train.py -> tools/eval.py through the data package's real loader, on tiny synthetic scenes."""
    import importlib.util
    from pathlib import Path

    from _engine_utils import TINY_MODEL

    root = Path(__file__).resolve().parents[1]

    def tool(name):
        spec = importlib.util.spec_from_file_location(f"{name}_tool", root / "tools" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    tiny = [o for o in TINY_MODEL if not o.startswith(("model.detection", "model.segmentation.class_names",
                                                        "model.segmentation.num_classes"))]
    overrides = [*tiny, "model.detection.num_convs=1", f"output_dir={tmp_path / 'run'}", "train.device=cpu",
                 "train.progress=false", "train.max_steps=3", "train.log_interval=1", "train.num_overlays=0",
                 "data.batch_size=2", "data.num_workers=0", "data.image_size=[64, 128]",
                 "data.train=[{type: synthetic, split: train, options: {num_samples: 6, height: 64, width: 128}}]",
                 "data.val=[{type: synthetic, split: val, options: {num_samples: 2, height: 64, width: 128}}]"]
    config = str(root / "configs" / "synthetic_driving.yaml")
    assert tool("train").main(["--config", config, *overrides]) == 0
    assert tool("eval").main(["--config", config, "--checkpoint", str(tmp_path / "run" / "last.pt"),
                              "--output", str(tmp_path / "metrics.json"), *overrides]) == 0
    assert "segmentation" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in STABLE_KEYS:
        assert math.isfinite(metrics[key]), key
    assert metrics["step"] == 3


def test_demo_trains_evaluates_and_writes_pictures_and_a_video(tmp_path, capsys):
    """tools/demo.py (what `make demo` runs), shortened: every promised output exists and the video keeps its frames."""
    import importlib.util
    from pathlib import Path

    import cv2

    from _engine_utils import TINY_MODEL

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("demo_tool", root / "tools" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    tiny = [o for o in TINY_MODEL if not o.startswith(("model.detection", "model.segmentation.class_names",
                                                        "model.segmentation.num_classes"))]
    overrides = [*tiny, "model.detection.num_convs=1", "train.device=cpu", "train.progress=false",
                 "train.max_steps=2", "train.eval_interval=0", "train.num_overlays=0", "train.tensorboard=false",
                 "data.batch_size=2", "data.num_workers=0", "data.image_size=[64, 128]",
                 "data.train=[{type: synthetic, split: train, options: {num_samples: 4, height: 64, width: 128}}]",
                 "data.val=[{type: synthetic, split: val, options: {num_samples: 2, height: 64, width: 128}}]"]
    out = tmp_path / "demo"
    assert demo.main(["--out", str(out), "--images", "2", "--video-frames", "4", *overrides]) == 0
    printed = capsys.readouterr().out
    assert "segmentation" in printed and "tools/infer.py" in printed
    assert {p.name for p in (out / "train").iterdir()} >= {"config.yaml", "last.pt", "metrics.json"}
    pictures = sorted((out / "predictions" / "images" / "vis").glob("*.jpg"))
    assert len(pictures) == 2
    # Inputs are rendered at twice the network size and the pictures keep that size (2 x 2 tiles).
    assert cv2.imread(str(pictures[0])).shape == (2 * 128, 2 * 256, 3)
    records = (out / "predictions" / "images" / "predictions.jsonl").read_text().splitlines()
    records = [json.loads(r) for r in records]
    assert len(records) == 2 and all({"detections", "semantic_classes", "depth_range_m"}
                                     <= {k for entry in r["tasks"].values() for k in entry} for r in records)
    assert all((r["height"], r["width"]) == (128, 256) for r in records)
    video = cv2.VideoCapture(str(out / "predictions" / "video" / "drive_pred.mp4"))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
    video.release()
