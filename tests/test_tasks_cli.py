"""Named tasks from the command line: four tasks of three types (two segmentation heads on one label) train,
evaluate, infer, draw and export through the tools, as a user runs them."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("model.tasks={objects: {type: detection, num_classes: 8, num_convs: 1}, "
         "semantic: {type: segmentation, num_classes: 19, channels: 16}, "
         "semantic_small: {type: segmentation, num_classes: 19, channels: 8}, "
         "depth: {type: depth, channels: 16, max_depth: 80.0}}")
DATA = ["data.train=[{type: synthetic, split: train, options: {num_samples: 4, height: 64, width: 128}}]",
        "data.val=[{type: synthetic, split: val, options: {num_samples: 2, height: 64, width: 128}}]",
        "data.image_size=[64, 128]", "data.batch_size=2", "data.num_workers=0"]


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_tool", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_four_named_tasks_train_evaluate_infer_draw_and_export(tmp_path):
    run = tmp_path / "run"
    overrides = ["model.backbone.name=test_resnet", "model.neck.channels=16", TASKS, *DATA, f"output_dir={run}",
                 "train.device=cpu", "train.progress=false", "train.tensorboard=false", "train.max_steps=2",
                 "train.warmup_steps=1", "train.eval_interval=0", "train.num_overlays=0", "train.log_interval=1",
                 "eval.detection_score_thresh=0.05"]
    config = ROOT / "configs" / "synthetic_driving.yaml"
    assert _tool("train").main(["--config", str(config), *overrides]) == 0
    names = ["objects", "semantic", "semantic_small", "depth"]
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert all(f"loss/{n}" in log[0] for n in names)
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"objects/mAP", "semantic/mIoU", "semantic_small/mIoU", "depth/abs_rel", "score"} <= set(metrics)

    # eval.py on the checkpoint: the same keys, written next to it.
    assert _tool("eval").main(["--config", str(config), "--checkpoint", str(run / "last.pt"), *DATA]) == 0
    evaluated = json.loads((run / "metrics.json").read_text())
    assert evaluated["semantic_small/mIoU"] == metrics["semantic_small/mIoU"]

    # infer.py: one panel per task (tile layout: an even count needs no input panel), records keyed by task name.
    image = np.random.default_rng(0).integers(0, 255, (64, 128, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "street.png"), image)
    out = tmp_path / "infer"
    assert _tool("infer").main(["--checkpoint", str(run / "last.pt"), "--source", str(tmp_path / "street.png"),
                                "--out", str(out), "--layout", "tile", "--quiet"]) == 0
    record = json.loads((out / "predictions.jsonl").read_text().splitlines()[0])
    assert list(record["tasks"]) == names
    assert [record["tasks"][n]["type"] for n in names] == ["detection", "segmentation", "segmentation", "depth"]
    picture = cv2.imread(str(next((out / "vis").glob("*.jpg"))))
    assert picture.shape == (2 * 64, 2 * 128, 3)  # 4 panels tiled 2 x 2

    # export.py: one ONNX output group per task, checked against PyTorch by the tool itself.
    onnx_path = tmp_path / "model.onnx"
    assert _tool("export").main(["--checkpoint", str(run / "last.pt"), "--out", str(onnx_path),
                                 "--tasks", "semantic_small", "depth"]) == 0
    import onnx

    outputs = [o.name for o in onnx.load(str(onnx_path)).graph.output]
    assert outputs and {o.split("__")[0] for o in outputs} == {"semantic_small", "depth"}
