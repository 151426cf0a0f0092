"""tools/benchmark.py scales and peers, without Ultralytics: the peers' answer parsed, the ratios on fixed
numbers, the one-line errors when the peers environment is missing, and a tiny end-to-end scales table."""
from __future__ import annotations

import importlib.util
import json
import re
import sys

import pytest
import torch
import yaml

from _tool_utils import load_tool
from perception.benchmark.peers import parse_peers_output, peer_totals, ratio_rows, target_lines
from perception.benchmark.scales import parse_variant, split_overrides

benchmark_tool = load_tool("tools/benchmark.py")

ANSWER = {"ultralytics": "8.4.0", "torch": "2.14.1", "threads": 2, "assets": "/x/assets", "missing": [],
          "rows": [{"model": "yolo26n.yaml", "task": "detect", "params": 2_500_000, "gflops_640": 6.0,
                    "median_ms": 100.0},
                   {"model": "yolo26n-sem.yaml", "task": "semantic", "params": 1_500_000, "gflops_640": 4.0,
                    "median_ms": 150.0},
                   {"model": "yolo26n-depth.yaml", "task": "depth", "params": 5_000_000, "gflops_640": 30.0,
                    "median_ms": 350.0}]}


def test_peers_answer_is_the_last_json_line_after_any_chatter():
    stdout = "Ultralytics settings updated\n{not json\n" + json.dumps(ANSWER) + "\n"
    assert parse_peers_output(stdout) == ANSWER


@pytest.mark.parametrize("stdout,words", [
    ("", "no JSON answer"),
    ("Traceback ...\nImportError: boom\n", "no JSON answer"),
    (json.dumps({"error": "/venv/bin/python: cannot import ultralytics (No module named 'ultralytics')"}),
     "bash tools/peers_venv.sh"),
    (json.dumps({"ultralytics": "8.4.0", "missing": []}), "'rows'"),
])
def test_a_bad_peers_answer_is_one_line_naming_the_problem(stdout, words):
    with pytest.raises(ValueError) as err:
        parse_peers_output(stdout, "/venv/bin/python")
    assert words in str(err.value) and "\n" not in str(err.value)


def test_ratios_against_the_detector_and_the_three_models():
    ours = [{"variant": "n", "params_M": 1.0, "gflops_640": 3.0, "eager_ms": 80.0, "onnx_ms": 50.0},
            {"variant": "s", "params_M": 4.0, "gflops_640": 9.0, "eager_ms": 330.0}]
    assert peer_totals(ANSWER["rows"]) == {"detect": 100.0, "all": 600.0}
    rows = ratio_rows(ours, ANSWER["rows"], ["eager", "onnx"])
    # Three peer rows, their sum, then n eager, n onnx, s eager (s has no onnx time: no row).
    assert [r["ms"] for r in rows] == [100.0, 150.0, 350.0, 600.0, 80.0, 50.0, 330.0]
    assert rows[3]["params_M"] == pytest.approx(9.0) and rows[3]["gflops_640"] == pytest.approx(40.0)
    n_eager, n_onnx, s_eager = rows[4:]
    assert n_eager["vs_detect"] == pytest.approx(0.8) and n_eager["vs_all"] == pytest.approx(80 / 600)
    assert n_onnx["vs_detect"] == pytest.approx(0.5)
    assert s_eager["vs_all"] == pytest.approx(0.55)
    lines = target_lines(rows)
    assert len(lines) == 3
    assert lines[0].startswith("ours n, PyTorch eager: 0.80x YOLO26n detect alone") and lines[0].endswith(" met")
    assert lines[1].startswith("ours n, onnxruntime: 0.50x") and lines[1].endswith(" met")
    assert lines[2].startswith("ours s, PyTorch eager: 0.55x the YOLO26n models together")
    assert lines[2].endswith("NOT met")


def test_without_a_detector_among_the_peers_there_is_no_detector_ratio():
    rows = ratio_rows([{"variant": "n", "params_M": 1.0, "gflops_640": 3.0, "eager_ms": 60.0}],
                      ANSWER["rows"][1:], ["eager"])
    assert "vs_detect" not in rows[-1] and rows[-1]["vs_all"] == pytest.approx(0.12)
    assert target_lines(rows) == []


def test_variants_split_on_commas_outside_brackets():
    assert split_overrides("a.b=1, c=[x,y],d={e: 1, f: 2}") == ["a.b=1", "c=[x,y]", "d={e: 1, f: 2}"]
    v = parse_variant("light:model.neck.channels=64,model.tasks=[detection,depth]")
    assert v.name == "light" and v.overrides == ["model.neck.channels=64", "model.tasks=[detection,depth]"]
    assert parse_variant("demo").overrides == [] and parse_variant("demo:").overrides == []
    for bad in (":a=1", "x:a"):
        with pytest.raises(ValueError, match="variant"):
            parse_variant(bad)


def test_peers_without_its_environment_is_one_line_with_the_command(tmp_path, capsys):
    assert benchmark_tool.main(["peers", "--peers-python", str(tmp_path / "nope" / "python")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "bash tools/peers_venv.sh" in err


@pytest.mark.skipif(importlib.util.find_spec("ultralytics") is not None, reason="this Python has Ultralytics")
def test_peers_with_a_python_lacking_ultralytics_is_one_line_with_the_command(capsys):
    # The real worker subprocess, run by this test's own Python, which has no Ultralytics.
    assert benchmark_tool.main(["peers", "--peers-python", sys.executable]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert "cannot import ultralytics" in err and "bash tools/peers_venv.sh" in err


TINY = {"model": {"backbone": {"name": "test_resnet"}, "neck": {"channels": 16},
                  "detection": {"num_classes": 2, "num_convs": 1}, "segmentation": {"num_classes": 3, "channels": 8},
                  "depth": {"channels": 8}},
        "data": {"image_size": [64, 64]}}


def test_a_tiny_scales_table_has_its_columns_and_the_real_parameter_count(tmp_path, capsys, one_thread):
    from perception.config import load_config
    from perception.models import build_model

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY), encoding="utf-8")
    out_json, out_md = tmp_path / "scales.json", tmp_path / "scales.md"
    assert benchmark_tool.main(["scales", "--config", str(config), "--variants", "tiny:model.neck.channels=8",
                                "--image-size", "64", "64", "--photo", "48x40", "--repeats", "1", "--warmup", "0",
                                "--ratio-rounds", "1", "--backends", "eager", "--json", str(out_json),
                                "--markdown", str(out_md)]) == 0
    result = json.loads(out_json.read_text())
    (row,) = result["rows"]
    model = build_model(load_config(config, ["model.neck.channels=8"]).model)
    assert row["variant"] == "tiny" and row["params"] == sum(p.numel() for p in model.parameters())
    assert row["params_M"] == pytest.approx(row["params"] / 1e6)
    assert row["gflops_640"] > 0 and row["eager_ms"] > 0 and "onnx_ms" not in row
    assert row["eager_pre_ms"] > 0 and row["eager_post_ms"] > 0
    # The forward ratio: the multi-task forward over its three single-task models', at the padded photo size.
    assert row["forward_size"] == "64x64"
    # one round (--ratio-rounds 1): the median of the rounds' ratios is that round's ratio of the two times
    assert row["multi_vs_single"] == pytest.approx(row["multi_ms"] / row["single_total_ms"])
    assert "(forward ratio: median of 1 rounds)" in result["conditions"]
    header, rule, line = out_md.read_text().splitlines()[:3]
    assert header == "| model | backbone | params (M) | GFLOPs 640 | CPU eager (ms) | multi / 3 single |"
    assert rule == "|---|---|---|---|---|---|"
    assert line.startswith(f"| tiny | test_resnet | {row['params_M']:.2f} | ")
    assert "1 thread," in result["conditions"] and "48x40 fitted into 64x64" in result["conditions"]
    assert header in capsys.readouterr().out


def test_weights_name_a_variant_or_stop_with_one_line():
    from perception.benchmark.scales import parse_variant, parse_weights

    variants = [parse_variant("n:model.scale=n"), parse_variant("s:model.scale=s")]
    assert parse_weights(["n=runs/n/best.pt"], variants) == {"n": "runs/n/best.pt"}
    for bad in ("x=runs/x.pt", "n", "n="):
        with pytest.raises(ValueError, match=r"--weights .*expected NAME=CHECKPOINT with NAME one of n, s"):
            parse_weights([bad], variants)


def test_a_variant_runs_with_the_weights_of_its_checkpoint(tmp_path, capsys, one_thread):
    from _inference_utils import tiny_config, tiny_model, write_checkpoint
    from perception.benchmark import scales
    from perception.config import config_to_dict

    cfg = tiny_config(image_size=(64, 64))
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(config_to_dict(cfg)), encoding="utf-8")
    trained = tiny_model(cfg, seed=5)
    checkpoint = write_checkpoint(tmp_path / "tiny.pt", cfg, trained)
    seen = []
    real = scales.time_predictors

    def spy(model, *args, **kwargs):
        seen.append(model)
        return real(model, *args, **kwargs)

    args = ["--config", str(config), "--variants", "tiny:", "--image-size", "64", "64", "--photo", "48x40",
            "--repeats", "1", "--warmup", "0", "--backends", "eager", "--no-ratio"]
    import unittest.mock

    with unittest.mock.patch.object(scales, "time_predictors", spy):
        result = benchmark_tool.main(["scales", *args, "--weights", f"tiny={checkpoint}"])
    assert result == 0
    state = seen[0].state_dict()
    assert all(torch.equal(state[k], v) for k, v in trained.state_dict().items())
    # A checkpoint of another network is refused with one line naming both sizes.
    other = write_checkpoint(tmp_path / "other.pt", cfg, trained)
    assert benchmark_tool.main(["scales", *args, "--variants", "wide:model.neck.channels=64",
                                "--weights", f"wide={other}"]) == 2
    assert re.search(r"the checkpoint's network has \d+ parameters, variant 'wide' \d+", capsys.readouterr().err)


def test_round_robin_calls_every_function_once_per_round_and_the_ratio_pairs_the_rounds():
    from perception.benchmark.common import paired_ratio, time_round_robin

    calls = []
    times = time_round_robin([lambda: calls.append("a"), lambda: calls.append("b")], torch.device("cpu"),
                             warmup=1, repeats=3)
    assert calls == ["a", "b"] * 4  # one warm-up round, then three timed ones, in turn
    assert [len(t) for t in times] == [3, 3] and all(v >= 0 for t in times for v in t)
    # Round 2 ran on a machine twice as loaded: paired, its ratio stays 0.4; the medians of blocks would not.
    multi = [4.0, 8.0, 4.0]
    singles = [[3.0, 6.0, 3.0], [7.0, 14.0, 7.0]]
    assert paired_ratio(multi, singles) == pytest.approx(0.4)
    assert paired_ratio([1.0, 5.0, 2.0], [[2.0, 10.0, 10.0]]) == pytest.approx(0.5)  # median of 0.5, 0.5, 0.2


def test_train_benchmark_reports_the_model_flop_rate_and_mfu():
    import argparse

    from perception.benchmark import train
    from perception.benchmark.scales import gflops
    from perception.config import load_config
    from perception.models import build_model

    overrides = ["model.backbone.name=test_resnet", "model.neck.channels=16"]
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    args = parser.parse_args(["--variants", "fp32", "channels_last", "--batch", "2", "--size", "64", "96",
                              "--repeats", "1", "--warmup", "1", "--device", "cpu", "--peak-tflops", "2.5",
                              *overrides])
    result = train.run(args)
    # 3 forwards' worth per step (forward + backward), 2 images: the FLOP counter on one 64x96 image, x 6
    cfg = load_config(args.config, ["model.backbone.pretrained=false", *overrides])
    assert result["step_gflops"] == pytest.approx(6 * gflops(build_model(cfg.model), (64, 96)), rel=1e-6)
    for row in result["rows"]:
        assert row["model_tflops"] == pytest.approx(result["step_gflops"] / row["step_ms"])
        assert row["mfu"] == pytest.approx(row["model_tflops"] / 2.5)
    with pytest.raises(ValueError, match="--peak-tflops: got -1.0"):
        train.run(parser.parse_args(["--peak-tflops", "-1", *overrides]))
