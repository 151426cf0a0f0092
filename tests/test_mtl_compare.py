"""The comparison tool's bookkeeping: the run plan, delta_m against baselines, and a baseline of 0 left out."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "compare_methods", Path(__file__).resolve().parents[1] / "tools" / "compare_methods.py")
compare = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(compare)


def test_overrides_may_follow_the_lists_and_the_plan_has_baselines_first():
    args = compare.parse_args(["--methods", "equal", "pcgrad", "model.backbone.name=resnet18", "--sharing",
                               "cross_stitch", "data.batch_size=4"])
    assert args.methods == ["equal", "pcgrad"] and args.sharing == ["cross_stitch"]
    assert args.overrides == ["model.backbone.name=resnet18", "data.batch_size=4"]
    tasks = {"semantic": {"type": "segmentation", "num_classes": 4}, "depth": {"type": "depth"}}
    plan = compare.run_plan(args, tasks)
    assert [p["name"] for p in plan] == ["single_semantic", "single_depth", "method_equal", "method_pcgrad",
                                         "sharing_cross_stitch"]
    # A baseline trains its one task with the settings it has in the multi-task config.
    assert plan[0]["tasks"] == {"semantic": {"type": "segmentation", "num_classes": 4}}
    assert plan[0]["overrides"] == ["weighting.method=equal"]
    assert all("tasks" not in p for p in plan[2:])
    assert plan[-1]["overrides"] == ["weighting.method=equal", "model.sharing=cross_stitch"]


def test_gain_is_delta_m_and_leaves_out_a_zero_baseline():
    signs = {"detection/mAP": 1, "segmentation/mIoU": 1, "depth/abs_rel": -1, "depth/rmse": -1}
    baseline = {"detection/mAP": 0.0, "segmentation/mIoU": 0.5, "depth/abs_rel": 0.2, "depth/rmse": 4.0}
    multi = {"detection/mAP": 0.1, "segmentation/mIoU": 0.55, "depth/abs_rel": 0.25, "depth/rmse": 3.0}
    result, dropped = compare.gain(multi, baseline, signs)
    assert dropped == ["detection/mAP"]
    assert result["delta_m/segmentation"] == pytest.approx(10.0)
    assert result["delta_m/depth"] == pytest.approx((-25.0 + 25.0) / 2)
    assert result["delta_m"] == pytest.approx(5.0)


def test_seconds_per_step_skips_the_warm_up_window(tmp_path):
    log = tmp_path / "train_log.jsonl"
    log.write_text('{"step": 10, "steps_per_s": 0.5}\n{"step": 20, "steps_per_s": 2.0}\n'
                   '{"step": 20, "eval": {}}\n{"step": 30, "steps_per_s": 4.0}\n{"step": 40, "steps_per_s": 2.5}\n')
    assert compare.seconds_per_step(tmp_path) == pytest.approx(1 / 2.5)


def test_table_only_tabulates_finished_runs_with_their_own_budget(tmp_path, capsys):
    import json

    runs = {"single_segmentation": {"segmentation/mIoU": 0.5, "segmentation/pixel_acc": 0.8},
            "single_depth": {"depth/abs_rel": 0.2, "depth/rmse": 4.0},
            "method_equal": {"segmentation/mIoU": 0.55, "segmentation/pixel_acc": 0.8, "depth/abs_rel": 0.25,
                             "depth/rmse": 3.0}}
    for name, metrics in runs.items():
        run = tmp_path / "seed0" / name
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps({**metrics, "step": 50}))
        (run / "done").write_text("1.0\n")
        (run / "train_log.jsonl").write_text('{"step": 10, "steps_per_s": 1.0}\n{"step": 20, "steps_per_s": 4.0}\n')
    # method_pcgrad never finished: left out, not trained (--table-only), and --steps (default) is not the budget.
    assert compare.main(["--out", str(tmp_path), "--table-only", "--methods", "equal", "pcgrad", "--sharing",
                         "model.tasks=[segmentation, depth]"]) == 0
    table = (tmp_path / "comparison.md").read_text()
    assert table.startswith("Budget: 50 steps per run")
    row = next(line for line in table.splitlines() if line.startswith("| method_equal"))
    # segmentation: (+10 % mIoU + 0 % pixel acc) / 2 = +5; depth: (-25 % abs_rel + 25 % rmse) / 2 = 0.
    assert row.split(" | ")[3:6] == ["+2.50", "+5.00", "+0.00"]
    assert row.rstrip(" |").endswith("0.250")
    assert "method_pcgrad" not in table
    assert json.loads((tmp_path / "comparison.json").read_text())["rows"][-1]["run"] == "method_equal"


def test_a_baseline_trains_one_named_task_with_its_settings(tmp_path, monkeypatch):
    import perception.engine.trainer as trainer
    from perception.config import load_config
    from perception.tasks import tasks_to_spec

    trained = []

    def fake_train(cfg):
        trained.append(cfg)
        Path(cfg.output_dir).mkdir(parents=True)

    monkeypatch.setattr(trainer, "train", fake_train)
    args = compare.parse_args(["--out", str(tmp_path), "--steps", "3", "--methods", "equal", "--sharing",
                               "model.tasks={objects: {type: detection, num_classes: 3}, "
                               "semantic: {type: segmentation, num_classes: 4}}"])
    tasks = tasks_to_spec(load_config(args.config, args.overrides).model.build_tasks())
    plan = compare.run_plan(args, tasks)
    assert [p["name"] for p in plan] == ["single_objects", "single_semantic", "method_equal"]
    compare.train_run(args, plan[1], seed=0)
    compare.train_run(args, plan[2], seed=0)
    single, multi = (cfg.model.build_tasks() for cfg in trained)
    assert list(single) == ["semantic"] and single["semantic"].num_classes == 4
    assert list(multi) == ["objects", "semantic"] and trained[1].train.max_steps == 3
