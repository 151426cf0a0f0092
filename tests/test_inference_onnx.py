"""Predictor.from_onnx: the onnxruntime backend gives the PyTorch backend's Prediction (same tasks, class names,
shapes; boxes within a pixel, class maps and depth that agree), takes the same thresholds and task selection,
and tools/infer.py runs on an .onnx file; a missing or foreign file is a one-line error naming it."""
import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from _inference_utils import scene_image, tiny_config, tiny_model, write_checkpoint
from perception.inference.export import export_onnx
from perception.inference.predictor import Predictor

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One tiny network, its checkpoint and its ONNX file (exported once for the module)."""
    folder = tmp_path_factory.mktemp("onnx_predictor")
    cfg = tiny_config()
    model = tiny_model(cfg)
    checkpoint = write_checkpoint(folder / "tiny.pt", cfg, model)
    result = export_onnx(model, folder / "tiny.onnx", (64, 96), exporter="torchscript")
    return checkpoint, result.path


def _assert_agree(got, expected):
    """Same tasks and fields; confident boxes within 1 px with the same labels; class maps on >= 99 % of
    pixels; depth within a relative 1e-3."""
    assert got.tasks == expected.tasks and got.types == expected.types
    assert (got.height, got.width) == (expected.height, expected.width)
    for name, result in expected.results.items():
        other = got[name]
        assert set(other) == set(result), name
        if "boxes" in result:
            assert other["class_names"] == result["class_names"]
            assert len(result["boxes"]) > 0
            for a, b in ((result, other), (other, result)):   # every confident box of one is in the other
                confident = a["scores"] > 0.3
                assert confident.any()
                for box, label in zip(a["boxes"][confident], a["labels"][confident]):
                    close = (np.abs(b["boxes"] - box).max(1) <= 1.0) & (b["labels"] == label)
                    assert close.any(), (name, box, label)
        if "semantic" in result:
            assert other["semantic_names"] == result["semantic_names"]
            assert other["semantic"].dtype == result["semantic"].dtype
            assert (other["semantic"] == result["semantic"]).mean() >= 0.99, name
            assert len(np.unique(result["semantic"])) > 1    # not a constant map that agrees trivially
        if "depth" in result:
            assert other["depth"].dtype == np.float32
            relative = np.abs(other["depth"] - result["depth"]) / result["depth"]
            assert relative.max() < 1e-3, relative.max()


def test_both_backends_agree_on_every_task(exported):
    checkpoint, path = exported
    torch_predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    onnx_predictor = Predictor.from_onnx(path)
    assert onnx_predictor.image_size == (64, 96)        # from the file's metadata
    assert onnx_predictor.task_names == torch_predictor.task_names == ["detection", "segmentation", "depth"]
    images = [scene_image(5, 77, 131), scene_image(6, 200, 45), scene_image(7, 64, 96)]
    # Several sizes in one call: batches are cut by padded size, exactly as in the PyTorch backend.
    got, expected = onnx_predictor.predict_batch(images), torch_predictor.predict_batch(images)
    for image, g, e in zip(images, got, expected):
        assert g.semantic.shape == image.shape[:2] and g.depth.shape == image.shape[:2]
        assert set(g.class_names) <= {"red", "blue"}
        assert set(g.timings) == {"pre", "forward", "post", "total"}
        _assert_agree(g, e)
    # BGR arrays and paths as in the PyTorch backend.
    _assert_agree(onnx_predictor(cv2.cvtColor(images[0], cv2.COLOR_RGB2BGR), bgr=True), expected[0])


def test_thresholds_tasks_and_size_are_arguments(exported, tmp_path):
    checkpoint, path = exported
    image = scene_image(9, 90, 120)
    loose = Predictor.from_onnx(path)(image)
    strict = Predictor.from_onnx(path, score_thresh=0.6)(image)
    expected = Predictor.from_checkpoint(checkpoint, device="cpu", score_thresh=0.6)(image)
    assert len(strict.boxes) == len(expected.boxes) < len(loose.boxes)
    assert strict.scores.min(initial=1.0) >= 0.6
    options = Predictor.from_onnx(path, options={"detection": {"score_thresh": 0.6}})(image)
    assert len(options.boxes) == len(strict.boxes)
    subset = Predictor.from_onnx(path, tasks=["depth", "detection"])(image)
    assert subset.tasks == ["detection", "depth"] and subset.semantic is None
    # Another network size (the graph's height and width are dynamic): still the PyTorch backend's answer.
    _assert_agree(Predictor.from_onnx(path, image_size=(96, 128))(image),
                  Predictor.from_checkpoint(checkpoint, device="cpu", image_size=(96, 128))(image))
    with pytest.raises(ValueError, match="'normals'"):
        Predictor.from_onnx(path, tasks=["normals"])
    with pytest.raises(ValueError, match="options.detection"):
        Predictor.from_onnx(path, options={"detection": {"nope": 1}})


def _load_infer():
    spec = importlib.util.spec_from_file_location("infer_tool_onnx", ROOT / "tools" / "infer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_infer_tool_runs_on_an_onnx_file(exported, tmp_path):
    checkpoint, path = exported
    folder = tmp_path / "images"
    folder.mkdir()
    for seed in range(2):
        cv2.imwrite(str(folder / f"scene{seed}.png"), cv2.cvtColor(scene_image(seed, 70, 110), cv2.COLOR_RGB2BGR))
    tool = _load_infer()
    records = {}
    for name, model_file in (("onnx", path), ("torch", checkpoint)):
        out = tmp_path / name
        assert tool.main(["--checkpoint", str(model_file), "--source", str(folder), "--out", str(out), "--raw",
                          "--quiet"]) == 0
        records[name] = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
        assert (out / "raw" / "depth" / "scene0.png").is_file() and (out / "vis" / "scene1.jpg").is_file()
    assert len(records["onnx"]) == 2
    for got, expected in zip(records["onnx"], records["torch"]):
        assert (got["height"], got["width"], list(got["tasks"])) == (70, 110, ["detection", "segmentation", "depth"])
        assert got["tasks"]["depth"]["type"] == "depth"
        assert np.allclose(got["tasks"]["depth"]["depth_range_m"], expected["tasks"]["depth"]["depth_range_m"],
                           rtol=1e-3)


def _foreign_onnx(path: Path) -> Path:
    """A valid ONNX graph (Identity) without this toolkit's metadata."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "foreign", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_missing_foreign_and_broken_files_are_one_line_errors(tmp_path, capsys):
    missing = tmp_path / "missing.onnx"
    foreign = _foreign_onnx(tmp_path / "foreign.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf at all")
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        Predictor.from_onnx(missing)
    with pytest.raises(ValueError, match="foreign.onnx.*no 'perception' metadata"):
        Predictor.from_onnx(foreign)
    with pytest.raises(ValueError, match="broken.onnx.*not an ONNX graph"):
        Predictor.from_onnx(broken)
    tool = _load_infer()
    image = tmp_path / "scene.png"
    cv2.imwrite(str(image), scene_image(1, 40, 60))
    for bad in (missing, foreign, broken):
        assert tool.main(["--checkpoint", str(bad), "--source", str(image), "--out", str(tmp_path / "out"),
                          "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and bad.name in err[0], err
