"""ONNX export: the graph matches PyTorch under onnxruntime, its metadata rebuilds the tasks, and the numpy
post-processing of every task gives the predictor's answer (detection's matches torchvision).

The torch.export-based ("dynamo") exporter takes about a minute on 2 CPU cores, so its test runs only with
PERCEPTION_SLOW_TESTS=1; the default tests export with the TorchScript-based ONNX exporter.
"""
import importlib.util
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torchvision.ops import batched_nms

from _inference_utils import FOUR_TASKS, scene_image, tiny_config, tiny_model, write_checkpoint
from perception.inference.export import ExportModule, compare_with_torch, export_onnx, onnx_session, read_metadata, \
    tasks_from_metadata
from perception.inference.postprocess_numpy import postprocess_numpy
from perception.inference.predictor import Predictor
from perception.ops.geometry import letterbox_image
from perception.tasks.detection.decode import batched_nms_numpy, fcos_postprocess_numpy, pyramid_sizes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model():
    return tiny_model(tiny_config())


@pytest.fixture(scope="module")
def onnx_file(model, tmp_path_factory):
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "tiny.onnx", (64, 96), exporter="torchscript")


def _batch(size, seeds=(0, 1)):
    images = [letterbox_image(scene_image(s, 100, 150), size)[0] for s in seeds]
    return np.stack([im.transpose(2, 0, 1) for im in images]).astype(np.float32)


def test_onnx_matches_pytorch_at_several_sizes_and_batches(model, onnx_file):
    assert onnx_file.output_names == ["detection__boxes", "detection__scores", "segmentation__logits",
                                      "depth__depth"]
    graph = onnx.load(str(onnx_file.path))
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [o.name for o in graph.graph.output] == onnx_file.output_names
    for size, seeds in (((64, 96), (0, 1)), ((128, 160), (2,))):   # dynamic batch, height and width
        diffs = compare_with_torch(onnx_file.path, model, _batch(size, seeds))
        assert set(diffs) == set(onnx_file.output_names)
        assert max(diffs.values()) < 1e-3, diffs


def test_pyramid_sizes_match_the_network(model):
    for size in ((64, 96), (96, 160), (160, 224)):
        with torch.no_grad():
            out = model(torch.zeros(1, 3, *size), tasks=["detection"])["detection"]
        assert [h * w for h, w in pyramid_sizes(*size)] == list(out["num_per_level"])


def test_numpy_nms_matches_torchvision():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 60, (300, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 30, (300, 2))], 1).astype(np.float32)
    scores = rng.uniform(0, 1, 300).astype(np.float32)
    labels = rng.integers(0, 3, 300)
    expected = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), 0.5)
    got = batched_nms_numpy(boxes, scores, labels, 0.5)
    assert 10 < len(got) < 300
    np.testing.assert_array_equal(got, expected.numpy())


def test_numpy_postprocess_matches_the_head(model):
    images = torch.from_numpy(_batch((96, 128), (3,)))
    head = model.heads["detection"]
    with torch.no_grad():
        raw = model(images, tasks=["detection"])["detection"]
        expected = head.postprocess(raw, (96, 128))[0]
        boxes, scores = ExportModule(model, ["detection"])(images)
    got = fcos_postprocess_numpy(boxes[0].numpy(), scores[0].numpy(), raw["num_per_level"], (96, 128),
                                 head.score_thresh, head.nms_thresh, head.topk_candidates, head.detections_per_img)
    assert len(expected["boxes"]) > 5
    np.testing.assert_allclose(got[0], expected["boxes"].numpy(), atol=1e-3)
    np.testing.assert_allclose(got[1], expected["scores"].numpy(), atol=1e-5)
    np.testing.assert_array_equal(got[2], expected["labels"].numpy())


def _onnx_prediction(path, image, options=None):
    """What an onnxruntime caller does with nothing but the file: rebuild the tasks, letterbox, run, decode."""
    session = onnx_session(path)
    metadata = read_metadata(session)
    tasks = tasks_from_metadata(metadata)
    padded, letterbox = letterbox_image(image, tuple(metadata["image_size"]))
    names = [o.name for o in session.get_outputs()]
    outputs = session.run(None, {"images": padded.transpose(2, 0, 1)[None].astype(np.float32)})
    return postprocess_numpy({n: o[0] for n, o in zip(names, outputs)}, letterbox, tasks, metadata, options)


def _assert_same_prediction(got, expected):
    assert got.tasks == expected.tasks and got.types == expected.types
    for name, result in expected.results.items():
        other = got[name]
        assert set(other) == set(result), name
        if "semantic" in result:
            assert other["semantic"].dtype == result["semantic"].dtype
            assert (other["semantic"] == result["semantic"]).mean() > 0.99, name
            assert other["semantic_names"] == result["semantic_names"]
        if "depth" in result:  # metres vs log-depth interpolation
            np.testing.assert_allclose(other["depth"], result["depth"], rtol=0.03)
        if "boxes" in result:
            assert len(result["boxes"]) > 0
            np.testing.assert_allclose(other["boxes"], result["boxes"], atol=0.05)
            np.testing.assert_allclose(other["scores"], result["scores"], atol=1e-4)
            np.testing.assert_array_equal(other["labels"], result["labels"])
            assert other["class_names"] == result["class_names"]


def test_onnx_and_numpy_give_the_predictors_answer(model, onnx_file):
    image = scene_image(5, 77, 131)
    expected = Predictor(model, (64, 96), device="cpu")(image)
    pred = _onnx_prediction(onnx_file.path, image)
    assert pred.semantic.shape == (77, 131) and pred.depth.shape == (77, 131)
    assert set(pred.class_names) <= {"red", "blue"}     # class names from the file's metadata
    _assert_same_prediction(pred, expected)
    # Thresholds are arguments of the decode, as of the predictor.
    strict = _onnx_prediction(onnx_file.path, image, {"detection": {"score_thresh": 0.6}})
    assert len(strict.boxes) == len(Predictor(model, (64, 96), device="cpu", score_thresh=0.6)(image).boxes) \
        < len(pred.boxes)


def test_four_named_tasks_export_and_decode_like_pytorch(tmp_path):
    """Two segmentation tasks side by side: per-task output names, metadata that rebuilds every task, and
    onnxruntime + numpy decode giving the PyTorch predictor's answer for each."""
    model = tiny_model(tiny_config(FOUR_TASKS))
    result = export_onnx(model, tmp_path / "four.onnx", (64, 96), exporter="torchscript")
    assert result.output_names == ["objects__boxes", "objects__scores", "semantic__logits", "coarse__logits",
                                   "depth__depth"]
    assert max(compare_with_torch(result.path, model, _batch((64, 96))).values()) < 1e-3
    metadata = read_metadata(result.path)
    assert metadata["image_size"] == [64, 96] and metadata["decode"]["objects"]["strides"] == [8, 16, 32, 64, 128]
    tasks = tasks_from_metadata(metadata)
    assert {n: (t.TYPE, t.label, t.class_names) for n, t in tasks.items()} == {
        n: (t.TYPE, t.label, t.class_names) for n, t in model.task_specs.items()}
    image = scene_image(8, 90, 120)
    _assert_same_prediction(_onnx_prediction(result.path, image), Predictor(model, (64, 96), device="cpu")(image))
    # A subset by name, in the network's order whatever the order asked.
    subset = export_onnx(model, tmp_path / "two.onnx", (64, 96), tasks=["coarse", "objects"], exporter="torchscript")
    assert subset.output_names == ["objects__boxes", "objects__scores", "coarse__logits"]
    assert list(tasks_from_metadata(read_metadata(subset.path))) == ["objects", "coarse"]
    _assert_same_prediction(_onnx_prediction(subset.path, image),
                            Predictor(model, (64, 96), tasks=["objects", "coarse"], device="cpu")(image))
    with pytest.raises(ValueError, match="'normal_maps'"):
        ExportModule(model, ["normal_maps"])


def _load_tool():
    spec = importlib.util.spec_from_file_location("export_tool", ROOT / "tools" / "export.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_export_tool_checks_and_fails_above_tolerance(model, tmp_path, capsys):
    tool = _load_tool()
    checkpoint = write_checkpoint(tmp_path / "tiny.pt", tiny_config(), model)
    image = tmp_path / "scene.png"
    import cv2

    cv2.imwrite(str(image), scene_image(6, 80, 120))
    args = ["--checkpoint", str(checkpoint), "--out", str(tmp_path / "m.onnx"), "--exporter", "torchscript",
            "--check-image", str(image)]
    assert tool.main(args) == 0
    report = capsys.readouterr().out
    assert "torchscript exporter" in report and report.count(" ok") == 4 and "segmentation__logits" in report
    assert tool.main(args + ["--atol", "-1"]) == 1      # any difference is above a negative tolerance
    assert tool.main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "m.ts"), "--format",
                      "torchscript", "--check-image", str(image)]) == 0
    traced = torch.jit.load(str(tmp_path / "m.ts"))
    with torch.no_grad():   # the trace is not tied to the example size
        out = traced(torch.zeros(1, 3, 128, 64))
    assert out[2].shape == (1, 4, 32, 16)


@pytest.mark.skipif(os.environ.get("PERCEPTION_SLOW_TESTS") != "1", reason="about a minute; PERCEPTION_SLOW_TESTS=1")
def test_dynamo_exporter_with_dynamic_shapes(model, tmp_path):
    result = export_onnx(model, tmp_path / "dynamo.onnx", (64, 96), exporter="dynamo")
    assert result.exporter == "dynamo"
    for size, seeds in (((64, 96), (0, 1)), ((160, 224), (2,))):
        assert max(compare_with_torch(result.path, model, _batch(size, seeds)).values()) < 1e-3
