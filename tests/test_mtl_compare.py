"""The comparison tool's bookkeeping: the run plan, delta_m against the mean baseline with its spread and ranking,
the header read from the runs' saved configs, missing runs, the plots, the method and mode registries, --jobs."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
_SPEC = importlib.util.spec_from_file_location("compare_methods", ROOT / "tools" / "compare_methods.py")
compare = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(compare)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_overrides_may_follow_the_lists_and_the_plan_has_baselines_first():
    args = compare.parse_args(["--methods", "equal", "pcgrad", "model.backbone.name=resnet18", "--sharing",
                               "cross_stitch", "data.batch_size=4"])
    assert args.methods == ["equal", "pcgrad"] and args.sharing == ["cross_stitch"]
    assert args.overrides == ["model.backbone.name=resnet18", "data.batch_size=4"]
    assert args.seeds == [0, 1, 2]
    tasks = {"semantic": {"type": "segmentation", "num_classes": 4}, "depth": {"type": "depth"}}
    plan = compare.run_plan(args, tasks)
    assert [p["name"] for p in plan] == ["single_semantic", "single_depth", "method_equal", "method_pcgrad",
                                         "sharing_cross_stitch"]
    # A baseline trains its one task with the settings it has in the multi-task config.
    assert plan[0]["tasks"] == {"semantic": {"type": "segmentation", "num_classes": 4}}
    assert plan[0]["overrides"] == ["weighting.method=equal"]
    assert all("tasks" not in p for p in plan[2:])
    assert plan[-1]["overrides"] == ["weighting.method=equal", "model.sharing=cross_stitch"]


def test_the_default_lists_are_the_registries_so_a_new_method_joins_without_editing_the_tool(monkeypatch):
    import perception.mtl
    import perception.models.config as model_config

    args = compare.parse_args([])
    assert args.methods == [m for m in perception.mtl.WEIGHTING_METHODS if m != "fixed"]
    assert {"famo", "nash_mtl"} <= set(args.methods)
    assert args.sharing == [s for s in compare.known_sharing() if s != "hard"]
    assert {"soft", "cross_stitch"} <= set(args.sharing)
    monkeypatch.setattr(perception.mtl, "WEIGHTING_METHODS", (*perception.mtl.WEIGHTING_METHODS, "upgrad"))
    assert "upgrad" in compare.parse_args([]).methods
    assert compare.parse_args(["--methods", "upgrad"]).methods == ["upgrad"]
    # The sharing modes are the ModelConfig.sharing Literal's values.
    from typing import Literal

    monkeypatch.setitem(model_config.ModelConfig.__annotations__, "sharing",
                        Literal["hard", "soft", "cross_stitch", "mtan"])
    assert compare.parse_args([]).sharing == ["soft", "cross_stitch", "mtan"]


@pytest.mark.parametrize("words, message", [
    (["--methods", "equal", "bogus"], "error: --methods: unknown 'bogus'; known: equal, fixed,"),
    (["--sharing", "tree"], "error: --sharing: unknown 'tree'; known: hard, soft,"),
    (["--sharing-method", "nope"], "error: --sharing-method: unknown 'nope'"),
    (["--seeds", "0", "0"], "error: --seeds: [0, 0] repeats a seed"),
])
def test_an_unknown_name_is_a_one_line_error_and_exit_code_2(tmp_path, capsys, words, message):
    assert compare.main(["--out", str(tmp_path), "--table-only", *words]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
    assert not any(tmp_path.iterdir())  # nothing trained, nothing written


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


def test_mean_std_against_the_mean_baseline_and_the_ranking_on_fixed_numbers():
    args = compare.parse_args(["--methods", "equal", "pcgrad", "dwa", "--sharing"])
    plan = compare.run_plan(args, {"segmentation": {"type": "segmentation"}, "depth": {"type": "depth"}})
    metrics = {  # (row, seed) -> metrics; the baselines average to mIoU 0.5 and RMSE 4
        ("single_segmentation", 0): {"segmentation/mIoU": 0.4}, ("single_segmentation", 1): {"segmentation/mIoU": 0.5},
        ("single_segmentation", 2): {"segmentation/mIoU": 0.6},
        **{("single_depth", s): {"depth/rmse": 4.0} for s in range(3)},
        ("method_equal", 0): {"segmentation/mIoU": 0.55, "depth/rmse": 3.0},
        ("method_equal", 1): {"segmentation/mIoU": 0.5, "depth/rmse": 4.0},
        ("method_equal", 2): {"segmentation/mIoU": 0.6, "depth/rmse": 5.0},
        **{("method_pcgrad", s): {"segmentation/mIoU": 0.6, "depth/rmse": 4.0} for s in range(3)},
        ("method_dwa", 0): {"segmentation/mIoU": 0.45, "depth/rmse": 4.0},
    }
    runs = {key: {"metrics": m, "s_per_step": 0.1 * (key[1] + 1), "done": {"wall_s": 10.0 + key[1]}}
            for key, m in metrics.items()}
    headline = {"segmentation": "segmentation/mIoU", "depth": "depth/rmse"}
    rows = {r["run"]: r for r in compare.table_rows(plan, runs, headline, {"segmentation/mIoU": 1, "depth/rmse": -1})}
    # Ranked by mean delta_m after the baselines: pcgrad (+10), equal (+5), dwa (-5).
    assert list(rows) == ["single_segmentation", "single_depth", "method_pcgrad", "method_equal", "method_dwa"]
    assert [rows[n]["rank"] for n in list(rows)[2:]] == [1, 2, 3]
    equal = rows["method_equal"]
    # Each seed against the MEAN baseline (0.5, 4): segmentation +10, 0, +20 %; depth +25, 0, -25 %.
    # Against each seed's own baseline segmentation would be +37.5, 0, 0 instead.
    assert equal["per_seed"]["delta_m/segmentation"] == pytest.approx([10.0, 0.0, 20.0])
    assert equal["per_seed"]["delta_m"] == pytest.approx([17.5, 0.0, -2.5])
    assert equal["delta_m"] == pytest.approx((5.0, math.sqrt(((12.5 ** 2) + 5 ** 2 + 7.5 ** 2) / 2)))
    assert equal["delta_m/segmentation"] == pytest.approx((10.0, 10.0))
    assert equal["delta_m/depth"] == pytest.approx((0.0, 25.0))
    assert equal["segmentation/mIoU"] == pytest.approx((0.55, 0.05))
    assert equal["s_per_step"] == pytest.approx(0.2) and equal["wall_s"] == pytest.approx(11.0)
    assert rows["method_pcgrad"]["delta_m"] == pytest.approx((10.0, 0.0))
    # One seed: a mean, no spread.
    assert rows["method_dwa"]["seeds"] == [0] and rows["method_dwa"]["delta_m"][0] == pytest.approx(-5.0)
    assert math.isnan(rows["method_dwa"]["delta_m"][1])
    # A baseline row: its seeds around their mean (the noise floor), -20, 0, +20 %.
    assert rows["single_segmentation"]["delta_m/segmentation"] == pytest.approx((0.0, 20.0))
    assert "delta_m" not in rows["single_segmentation"]


def test_without_a_baseline_of_every_task_there_is_no_delta_m():
    args = compare.parse_args(["--methods", "equal", "--sharing"])
    plan = compare.run_plan(args, {"segmentation": {"type": "segmentation"}, "depth": {"type": "depth"}})
    runs = {("single_segmentation", 0): {"metrics": {"segmentation/mIoU": 0.5}, "s_per_step": 1.0, "done": {}},
            ("method_equal", 0): {"metrics": {"segmentation/mIoU": 0.6, "depth/rmse": 3.0}, "s_per_step": 1.0,
                                  "done": {}}}
    rows = compare.table_rows(plan, runs, {"segmentation": "segmentation/mIoU", "depth": "depth/rmse"},
                              {"segmentation/mIoU": 1, "depth/rmse": -1})
    assert math.isnan(rows[-1]["delta_m"][0]) and "rank" not in rows[-1]


def _fake_run(out: Path, name: str, seed: int, metrics: dict, image_size=(96, 192), steps: int = 50,
              weights: dict | None = None) -> None:
    """A finished run directory as the trainer leaves it: config.yaml, metrics.json, train_log.jsonl, done."""
    run = out / f"seed{seed}" / name
    run.mkdir(parents=True)
    config = {"model": {"backbone": {"name": "resnet10t", "pretrained": False}},
              "data": {"image_size": list(image_size), "batch_size": 4,
                       "val": [{"type": "synthetic", "options": {"num_samples": 32}}]},
              "train": {"max_steps": steps, "lr": 0.002, "optimizer": "adamw", "schedule": "cosine"},
              "seed": seed}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "metrics.json").write_text(json.dumps({**metrics, "step": steps}))
    lines = []
    for step in (10, 20, 30):
        record = {"step": step, "steps_per_s": 4.0 if step > 10 else 1.0}
        record.update({f"weight/{t}": w * step for t, w in (weights or {}).items()})
        lines.append(json.dumps(record))
    (run / "train_log.jsonl").write_text("\n".join(lines) + "\n")
    (run / "done").write_text(json.dumps({"wall_s": 60.0, "cpu_s": 55.0, "threads": 1, "jobs": 2,
                                          "machine": "Test CPU, 2 logical CPUs", "device": "cpu"}) + "\n")


TASKS = "model.tasks=[segmentation, depth]"
SEG = {"segmentation/mIoU": 0.5, "segmentation/pixel_acc": 0.8}
DEPTH = {"depth/abs_rel": 0.2, "depth/rmse": 4.0}


def test_table_only_reads_the_budget_from_the_runs_and_names_the_missing(tmp_path, capsys):
    for seed in (0, 1):
        _fake_run(tmp_path, "single_segmentation", seed, SEG)
        _fake_run(tmp_path, "single_depth", seed, DEPTH)
        _fake_run(tmp_path, "method_equal", seed, {"segmentation/mIoU": 0.55, "segmentation/pixel_acc": 0.8,
                                                   "depth/abs_rel": 0.25, "depth/rmse": 3.0},
                  weights={"segmentation": 0.1, "depth": 0.2})
    # configs/synthetic_driving.yaml says 128x256 and 1000 steps; the runs were trained at 96x192 for 50.
    assert compare.main(["--config", "configs/synthetic_driving.yaml", "--out", str(tmp_path), "--table-only",
                         "--methods", "equal", "pcgrad", "--sharing", "cross_stitch", TASKS]) == 0
    table = (tmp_path / "comparison.md").read_text()
    head = table.splitlines()[0]
    assert head.startswith("Trained with (read from the runs' config.yaml): backbone resnet10t (from scratch), "
                           "image 96x192, 50 steps, batch 4, adamw lr 0.002 (cosine), 32 val images; seeds 0, 1;")
    assert "128x256" not in table and "disagree" not in table
    assert "1 torch thread(s) per run, 2 run(s) at a time, Test CPU, 2 logical CPUs" in table
    row = next(line for line in table.splitlines() if "| method_equal |" in line)
    # segmentation: (+10 % mIoU + 0 % pixel acc) / 2 = +5; depth: (-25 % abs_rel + 25 % rmse) / 2 = 0; the same
    # for both seeds: std 0.
    assert row.split(" | ")[4:8] == ["2", "+2.50 ± 0.00", "+5.00 ± 0.00", "+0.00 ± 0.00"]
    assert row.split(" | ")[-2:] == ["0.250", "60 |"]
    assert table.rstrip().endswith("Missing (not finished): single_segmentation (seed 2), single_depth (seed 2), "
                                   "method_equal (seed 2), method_pcgrad (seeds 0, 1, 2), "
                                   "sharing_cross_stitch (seeds 0, 1, 2).")
    saved = json.loads((tmp_path / "comparison.json").read_text())
    assert saved["rows"][-1]["run"] == "method_equal" and saved["header"]["missing"]["method_pcgrad"] == [0, 1, 2]
    assert saved["rows"][-1]["delta_m"] == pytest.approx([2.5, 0.0])
    assert saved["rows"][-1]["per_seed"]["delta_m"] == pytest.approx([2.5, 2.5])
    for name in ("comparison_delta_m.png", "comparison_weights.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
    assert compare.weight_curves(tmp_path / "seed0" / "method_equal") == {
        "segmentation": [(10, 1.0), (20, 2.0), (30, 3.0)], "depth": [(10, 2.0), (20, 4.0), (30, 6.0)]}


def test_the_header_says_where_the_runs_disagree(tmp_path):
    _fake_run(tmp_path, "single_segmentation", 0, SEG)
    _fake_run(tmp_path, "single_depth", 0, DEPTH)
    _fake_run(tmp_path, "method_equal", 0, {**SEG, **DEPTH}, image_size=(128, 256))
    assert compare.main(["--out", str(tmp_path), "--table-only", "--seeds", "0", "--methods", "equal",
                         "--sharing", TASKS]) == 0
    table = (tmp_path / "comparison.md").read_text()
    assert ("image 96x192 (2 runs: seed0/single_depth, seed0/single_segmentation) / "
            "128x256 (1 run: seed0/method_equal)") in table
    assert "**The runs disagree on: image size**" in table
    # One seed: no spread, written as null (the file is strict JSON).
    assert json.loads((tmp_path / "comparison.json").read_text())["rows"][-1]["delta_m"][1] is None


def test_the_plots_are_written_with_nothing_finished(tmp_path):
    assert compare.main(["--out", str(tmp_path), "--table-only", "--seeds", "0", "--methods", "equal",
                         "--sharing", TASKS]) == 0
    assert (tmp_path / "comparison_delta_m.png").read_bytes()[:8] == PNG_MAGIC
    assert (tmp_path / "comparison_weights.png").read_bytes()[:8] == PNG_MAGIC
    table = (tmp_path / "comparison.md").read_text()
    assert "Missing (not finished): single_segmentation (seed 0)" in table
    assert "No delta_m: no finished single-task baseline of segmentation, depth." in table


def test_a_worker_runs_the_same_invocation_for_one_run():
    args = compare.parse_args(["--out", "o", "--jobs", "2", "--threads=3", "--methods", "equal", TASKS])
    command = compare.worker_command(args, "method_equal", 1, threads=1)
    assert command[1].endswith("compare_methods.py")
    assert command[2:] == ["--out", "o", "--methods", "equal", TASKS, "--threads", "1", "--run", "method_equal:1"]


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
    compare.train_run(args, plan[2], seed=2)
    single, multi = (cfg.model.build_tasks() for cfg in trained)
    assert list(single) == ["semantic"] and single["semantic"].num_classes == 4
    assert list(multi) == ["objects", "semantic"] and trained[1].train.max_steps == 3
    assert trained[1].seed == 2 and trained[1].train.eval_interval == 0
    assert Path(trained[1].output_dir) == tmp_path / "seed2" / "method_equal"
    done = json.loads((tmp_path / "seed2" / "method_equal" / "done").read_text())
    assert set(done) == {"wall_s", "cpu_s", "threads", "jobs", "machine", "device"}


def test_a_worker_process_trains_the_missing_run_and_the_table_follows(tmp_path):
    """End to end with a real (two-step) training of one task in a --jobs worker process of one thread; the
    finished baseline is reused, not trained again."""
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"tasks": ["depth"], "backbone": {"name": "test_resnet"}, "neck": {"channels": 16},
                  "depth": {"channels": 16}},
        "data": {"train": [{"type": "synthetic", "split": "train", "options": {"num_samples": 8, "height": 32,
                                                                             "width": 64}}],
                 "val": [{"type": "synthetic", "split": "val", "options": {"num_samples": 2, "height": 32,
                                                                         "width": 64}}],
                 "image_size": [32, 64], "batch_size": 2, "num_workers": 0},
        "train": {"device": "cpu", "progress": False, "tensorboard": False, "max_steps": 2, "log_interval": 1,
                  "warmup_steps": 0, "num_overlays": 0}}))
    out = tmp_path / "out"
    _fake_run(out, "single_depth", 0, DEPTH, image_size=(32, 64), steps=2)
    assert compare.main(["--config", str(config), "--out", str(out), "--seeds", "0", "--methods", "equal",
                         "--sharing", "--jobs", "2", "--threads", "1"]) == 0
    done = json.loads((out / "seed0" / "method_equal" / "done").read_text())
    assert (done["threads"], done["jobs"]) == (1, 2)
    assert json.loads((out / "seed0" / "single_depth" / "done").read_text())["machine"] == "Test CPU, 2 logical CPUs"
    assert (out / "seed0" / "method_equal" / "metrics.json").is_file()
    assert not (out / "seed0" / "method_equal" / "last.pt").exists()  # checkpoints go once the metrics are written
    table = (out / "comparison.md").read_text()
    assert "| method_equal |" in table and "Missing" not in table
    assert "image 32x64, 2 steps" in table


def test_groups_are_rows_over_their_tasks_and_the_groupings_are_scored_per_seed(capsys, tmp_path):
    tasks = {"det": {"type": "detection"}, "seg": {"type": "segmentation"}, "dep": {"type": "depth"}}
    args = compare.parse_args(["--methods", "equal", "--sharing", "--groups", "dep+seg", "--seeds", "0", "1"])
    plan = compare.run_plan(args, tasks)
    group = plan[-1]
    assert group["name"] == "group_seg+dep" and group["kind"] == "group"        # the config's order
    assert group["tasks"] == {"seg": {"type": "segmentation"}, "dep": {"type": "depth"}}
    assert group["overrides"] == ["weighting.method=equal"]
    for bad in ("seg", "seg+seg", "seg+nope", "det+seg+dep"):
        with pytest.raises(ValueError, match="--groups: .* is not two or more"):
            compare.run_plan(compare.parse_args(["--groups", bad]), tasks)
    # Baselines average to det 0.1, seg 0.5, dep (abs_rel, lower is better) 0.2.
    metrics = {**{("single_det", s): {"det/mAP50": 0.1} for s in (0, 1)},
               ("single_seg", 0): {"seg/mIoU": 0.45}, ("single_seg", 1): {"seg/mIoU": 0.55},
               **{("single_dep", s): {"dep/abs_rel": 0.2} for s in (0, 1)},
               ("method_equal", 0): {"det/mAP50": 0.08, "seg/mIoU": 0.5, "dep/abs_rel": 0.2},
               ("method_equal", 1): {"det/mAP50": 0.09, "seg/mIoU": 0.5, "dep/abs_rel": 0.2},
               ("group_seg+dep", 0): {"seg/mIoU": 0.55, "dep/abs_rel": 0.18},
               ("group_seg+dep", 1): {"seg/mIoU": 0.6, "dep/abs_rel": 0.2}}
    runs = {key: {"metrics": m, "s_per_step": 0.1, "done": {"wall_s": 1.0}} for key, m in metrics.items()}
    headline = {"det": "det/mAP50", "seg": "seg/mIoU", "dep": "dep/abs_rel"}
    signs = {"det/mAP50": 1, "seg/mIoU": 1, "dep/abs_rel": -1}
    rows = compare.table_rows(plan, runs, headline, signs)
    by = {r["run"]: r for r in rows}
    assert [r["run"] for r in rows] == ["single_det", "single_seg", "single_dep", "group_seg+dep", "method_equal"]
    assert "rank" not in by["group_seg+dep"] and by["method_equal"]["rank"] == 1
    # The group against the baselines of its own tasks: seg +10 / +20 %, dep +10 / 0 %.
    assert by["group_seg+dep"]["per_seed"]["delta_m"] == pytest.approx([10.0, 10.0])
    assert by["group_seg+dep"]["per_seed"]["delta_m/seg"] == pytest.approx([10.0, 20.0])
    splits = {r["split"]: r for r in compare.grouping_rows(rows, list(headline), "method_equal")}
    # {det} alone: its seeds' spread around the mean (0, 0); seg and dep from the group.
    assert splits["{det} + {seg, dep}"]["per_seed"] == pytest.approx([(0 + 10 + 10) / 3, (0 + 20 + 0) / 3])
    assert splits["{det} + {seg, dep}"]["networks"] == 2
    assert splits["{det} + {seg, dep}"]["runs"] == ["single_det", "group_seg+dep"]
    # One network: equal's det -20 / -10 %, seg 0 / 0, dep 0 / 0; three networks: the baselines' spread.
    assert splits["{det, seg, dep}"]["per_seed"] == pytest.approx([-20 / 3, -10 / 3])
    assert splits["{det} + {seg} + {dep}"]["per_seed"] == pytest.approx([(0 - 10 + 0) / 3, (0 + 10 + 0) / 3])
    assert len(splits) == 3                                        # {det, seg} + {dep} etc. have no rows
    ranked = list(splits)
    assert ranked[0] == "{det} + {seg, dep}" and ranked[-1] == "{det, seg, dep}"
    text = compare.format_groupings(list(splits.values()))
    assert "| {det} + {seg, dep} | 2 | single_det, group_seg+dep | 2 | +6.67 ± 0.00 |" in text
