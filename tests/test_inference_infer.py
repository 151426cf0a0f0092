"""tools/infer.py end to end: videos, folders with bad files, raw outputs, predictions.jsonl schema, Ctrl-C, named
tasks."""
import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from _inference_utils import FOUR_TASKS, scene_image, tiny_config, tiny_model, write_checkpoint, write_video
from perception.inference.predictor import Predictor
from perception.inference.runner import run_inference
from perception.inference.sources import SourceError, VideoSource, open_source

ROOT = Path(__file__).resolve().parents[1]


def _load_tool():
    spec = importlib.util.spec_from_file_location("infer_tool", ROOT / "tools" / "infer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


infer_tool = _load_tool()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cfg = tiny_config()
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", cfg, tiny_model(cfg))


def _check_record(record: dict, height: int, width: int, names=("detection", "segmentation", "depth")) -> None:
    """The predictions.jsonl schema (docs/inference.md): results keyed by task name, each with its type."""
    assert record["height"] == height and record["width"] == width
    assert list(record["tasks"]) == list(names)
    for name, entry in record["tasks"].items():
        if entry["type"] == "detection":
            for det in entry["detections"]:
                assert set(det) == {"bbox", "category_id", "category_name", "score"}
                x, y, w, h = det["bbox"]
                assert 0 <= x and 0 <= y and w >= 0 and h >= 0 and x + w <= width + 0.01 and y + h <= height + 0.01
                assert det["category_name"] == ["red", "blue"][det["category_id"]]
                assert 0 < det["score"] <= 1
            scores = [d["score"] for d in entry["detections"]]
            assert scores == sorted(scores, reverse=True)
        elif entry["type"] == "segmentation":
            fractions = [c["fraction"] for c in entry["semantic_classes"]]
            assert abs(sum(fractions) - 1) < 1e-3
            assert {c["name"] for c in entry["semantic_classes"]} <= {"sky", "ground", "red", "blue", "road", "car"}
        else:
            assert entry["type"] == "depth"
            near, far = entry["depth_range_m"]
            assert 0 < near <= far
    assert set(record["timings_ms"]) == {"pre", "forward", "post", "total"}


def test_video_gives_a_video_with_the_same_frames_and_rate(checkpoint, tmp_path):
    video = write_video(tmp_path / "drive.mp4", 9, size=(72, 120), fps=12.0)
    out = tmp_path / "out"
    rc = infer_tool.main(["--checkpoint", str(checkpoint), "--source", str(video), "--out", str(out), "--raw",
                          "--batch-size", "4", "--quiet"])
    assert rc == 0
    result = cv2.VideoCapture(str(out / "drive_pred.mp4"))
    count = 0
    while result.read()[0]:
        count += 1
    assert count == 9 and result.get(cv2.CAP_PROP_FPS) == pytest.approx(12.0)
    assert int(result.get(cv2.CAP_PROP_FRAME_WIDTH)) == 3 * 120   # three panels side by side
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in records] == list(range(9))
    for record in records:
        _check_record(record, 72, 120)
    # Raw outputs: ids as 8-bit PNG and depth in 16-bit millimetres equal what the predictor returns.
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    first = next(iter(open_source(str(video))))
    pred = predictor(first.image)
    semantic = cv2.imread(str(out / "raw" / "segmentation" / "frame_000000.png"), cv2.IMREAD_UNCHANGED)
    depth = cv2.imread(str(out / "raw" / "depth" / "frame_000000.png"), cv2.IMREAD_UNCHANGED)
    assert sorted(p.name for p in (out / "raw").iterdir()) == ["depth", "segmentation"]  # no raw map of boxes
    assert semantic.dtype == np.uint8 and depth.dtype == np.uint16
    np.testing.assert_array_equal(semantic, pred.semantic)
    np.testing.assert_allclose(depth / 1000.0, pred.depth, atol=0.0006)


def test_folder_skips_bad_files_and_reports_them(checkpoint, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    sizes = [(70, 101), (64, 64), (90, 50)]
    for i, (h, w) in enumerate(sizes):
        cv2.imwrite(str(folder / f"im{i}.png"), cv2.cvtColor(scene_image(i, h, w), cv2.COLOR_RGB2BGR))
    (folder / "broken.png").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("not an image either, and not an image extension")
    out = tmp_path / "out"
    rc = infer_tool.main(["--checkpoint", str(checkpoint), "--source", str(folder), "--out", str(out),
                          "--layout", "tile", "--quiet"])
    assert rc == 0
    assert "broken.png" in capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processed"] == 3 and summary["skipped"] == 1 and "broken.png" in summary["skipped_files"][0]
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [Path(r["path"]).name for r in records] == ["im0.png", "im1.png", "im2.png"]
    for record, (h, w) in zip(records, sizes):
        _check_record(record, h, w)
        picture = cv2.imread(str(out / "vis" / f"{Path(record['path']).stem}.jpg"))
        assert picture.shape == (2 * h, 2 * w, 3)   # 2 x 2 tiles


def test_bad_sources_are_named(checkpoint, tmp_path, capsys):
    assert infer_tool.main(["--checkpoint", str(checkpoint), "--source", str(tmp_path / "missing.png"),
                            "--out", str(tmp_path / "o")]) == 2
    assert "missing.png" in capsys.readouterr().err
    broken_video = tmp_path / "broken.mp4"
    broken_video.write_bytes(b"\x00" * 1000)
    with pytest.raises(SourceError, match="broken.mp4"):
        open_source(str(broken_video))
    with pytest.raises(SourceError, match="camera 97"):
        VideoSource(97)
    with pytest.raises(SourceError, match="matches no image"):
        open_source(str(tmp_path / "*.png"))
    image = tmp_path / "one.png"
    image.write_bytes(b"truncated")
    assert infer_tool.main(["--checkpoint", str(checkpoint), "--source", str(image), "--out",
                            str(tmp_path / "o2")]) == 2
    assert "one.png" in capsys.readouterr().err
    assert infer_tool.main(["--checkpoint", str(tmp_path / "nope.pt"), "--source", str(tmp_path),
                            "--out", str(tmp_path / "o3")]) == 2


def test_ctrl_c_leaves_a_playable_partial_video(checkpoint, tmp_path):
    video = write_video(tmp_path / "long.mp4", 12, size=(64, 96))
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu", tasks=["depth"])
    stream = predictor.stream

    def interrupted(frames, **kwargs):
        for i, pred in enumerate(stream(frames, **kwargs)):
            if i == 5:
                raise KeyboardInterrupt
            yield pred

    predictor.stream = interrupted
    summary = run_inference(predictor, open_source(str(video)), tmp_path / "out", progress=False)
    assert summary.interrupted and summary.processed == 5
    capture = cv2.VideoCapture(summary.video)
    frames = 0
    while capture.read()[0]:
        frames += 1
    assert frames == 5
    assert len((tmp_path / "out" / "predictions.jsonl").read_text().splitlines()) == 5
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["interrupted"] is True


def test_named_tasks_from_the_command_line(tmp_path):
    """A checkpoint with four named tasks (two segmentation tasks): a panel per task, records keyed by name, raw maps
    per task, and --tasks selecting by name."""
    cfg = tiny_config(FOUR_TASKS)
    checkpoint = write_checkpoint(tmp_path / "four.pt", cfg, tiny_model(cfg))
    folder = tmp_path / "images"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), cv2.cvtColor(scene_image(0, 70, 100), cv2.COLOR_RGB2BGR))
    for layout, shape in (("tile", (140, 200)), ("side", (70, 400))):
        out = tmp_path / layout
        assert infer_tool.main(["--checkpoint", str(checkpoint), "--source", str(folder), "--out", str(out),
                                "--layout", layout, "--raw", "--quiet"]) == 0
        assert cv2.imread(str(out / "vis" / "a.jpg")).shape[:2] == shape      # 4 panels: 2 x 2, or 1 x 4
    record = json.loads((tmp_path / "side" / "predictions.jsonl").read_text())
    _check_record(record, 70, 100, ("objects", "semantic", "coarse", "depth"))
    assert record["tasks"]["coarse"]["type"] == "segmentation"
    assert sorted(p.name for p in (tmp_path / "side" / "raw").iterdir()) == ["coarse", "depth", "semantic"]
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    pred = predictor(scene_image(0, 70, 100))
    coarse = cv2.imread(str(tmp_path / "side" / "raw" / "coarse" / "a.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(coarse, pred["coarse"]["semantic"])
    # --tasks by name: two of the four, in the network's order; the picture has their two panels.
    out = tmp_path / "two"
    assert infer_tool.main(["--checkpoint", str(checkpoint), "--source", str(folder), "--out", str(out),
                            "--tasks", "coarse", "objects", "--quiet"]) == 0
    assert list(json.loads((out / "predictions.jsonl").read_text())["tasks"]) == ["objects", "coarse"]
    assert cv2.imread(str(out / "vis" / "a.jpg")).shape[:2] == (70, 200)
    assert infer_tool.main(["--checkpoint", str(checkpoint), "--source", str(folder), "--out", str(out),
                            "--tasks", "segmentation", "--quiet"]) == 2          # a type is not a task name here


def test_upsample_option_from_the_command_line(checkpoint, tmp_path, capsys):
    """--upsample bilinear gives the raw class ids of the bilinear decode; on tasks without the option, exit 2."""
    folder = tmp_path / "images"
    folder.mkdir()
    image = scene_image(1, 90, 130)
    cv2.imwrite(str(folder / "a.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    for mode in ("nearest", "bilinear"):
        assert infer_tool.main(["--checkpoint", str(checkpoint), "--source", str(folder), "--out",
                                str(tmp_path / mode), "--raw", "--no-vis", "--quiet", "--upsample", mode]) == 0
        raw = cv2.imread(str(tmp_path / mode / "raw" / "segmentation" / "a.png"), cv2.IMREAD_UNCHANGED)
        predictor = Predictor.from_checkpoint(checkpoint, device="cpu", options={"segmentation": {"upsample": mode}})
        np.testing.assert_array_equal(raw, predictor(image).semantic)
    near, smooth = (cv2.imread(str(tmp_path / m / "raw" / "segmentation" / "a.png"), cv2.IMREAD_UNCHANGED)
                    for m in ("nearest", "bilinear"))
    assert (near != smooth).any()        # the option reached the decode
    capsys.readouterr()
    assert infer_tool.main(["--checkpoint", str(checkpoint), "--source", str(folder), "--out", str(tmp_path / "x"),
                            "--tasks", "detection", "--upsample", "bilinear", "--quiet"]) == 2
    assert "option 'upsample': no running task takes it" in capsys.readouterr().err
