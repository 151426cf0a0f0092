"""The Python API: geometry of the letterbox and back, only the asked-for heads, batching, input checks, checkpoints,
named tasks and the legacy attributes of a Prediction."""
import json
import pickle
import threading

import numpy as np
import pytest
import torch

from _inference_utils import FOUR_TASKS, EchoModel, echo_image, scene_image, tiny_config, tiny_model, \
    write_checkpoint
from perception.engine.checkpoint import CheckpointError
from perception.ops.geometry import dense_to_original, dense_to_original_numpy, fit_letterbox
from perception.inference.images import ImageReadError
from perception.inference.predictor import Predictor


@pytest.mark.parametrize("size, network, resized, padded", [
    ((77, 131), (64, 96), (56, 96), (64, 96)),      # width-bound
    ((200, 45), (64, 96), (64, 14), (64, 32)),      # height-bound, tall and thin
    ((33, 33), (64, 96), (64, 64), (64, 64)),       # upscaled
    ((480, 640), (512, 1024), (512, 683), (512, 704)),
])
def test_letterbox_fits_inside_and_pads_to_32(size, network, resized, padded):
    box = fit_letterbox(*size, network)
    assert box.resized_size == resized and box.padded_size == padded
    assert box.resized_height <= network[0] and box.resized_width <= network[1]


@pytest.mark.parametrize("size, rect", [((77, 131), (40, 20, 90, 50)), ((200, 45), (3, 40, 42, 170)),
                                        ((33, 47), (10, 8, 30, 25))])
def test_predictions_map_back_to_the_original_size(size, rect):
    h, w = size
    image = echo_image(h, w, rect)
    predictor = Predictor(EchoModel(), (64, 96), device="cpu")
    pred = predictor(image)
    assert (pred.height, pred.width) == (h, w)
    assert pred.semantic.shape == (h, w) and pred.depth.shape == (h, w)
    # The box found in the network input, scaled back, is the rectangle within one network pixel.
    tol = max(w / fit_letterbox(h, w, (64, 96)).resized_width, 1.0) + 0.5
    np.testing.assert_allclose(pred.boxes[0], rect, atol=tol)
    # The class map is the rectangle. By default (nearest ids from the stride-4 grid) every pixel farther than
    # one cell from the rectangle's edge has its class; the boundary moves by at most that much.
    truth = np.zeros((h, w), bool)
    truth[rect[1]:rect[3], rect[0]:rect[2]] = True
    box = fit_letterbox(h, w, (64, 96))
    cell_y, cell_x = 4 * h / box.resized_height, 4 * w / box.resized_width
    ys, xs = np.arange(h)[:, None] + 0.5, np.arange(w)[None, :] + 0.5
    inside = (ys > rect[1] + cell_y) & (ys < rect[3] - cell_y) & (xs > rect[0] + cell_x) & (xs < rect[2] - cell_x)
    outside = (ys < rect[1] - cell_y) | (ys > rect[3] + cell_y) | (xs < rect[0] - cell_x) | (xs > rect[2] + cell_x)
    assert inside.any() and (pred.semantic[inside] == 1).all() and (pred.semantic[outside] == 0).all()
    # The bilinear option blends the logits at every pixel: IoU close to 1 (blurred by the stride-4 map only).
    smooth = Predictor(EchoModel(), (64, 96), device="cpu", options={"segmentation": {"upsample": "bilinear"}})
    semantic = smooth(image).semantic
    iou = (truth & (semantic == 1)).sum() / (truth | (semantic == 1)).sum()
    assert iou > 0.85
    # ... and it is not shifted: the centroids agree within one network pixel.
    ys, xs = np.nonzero(semantic == 1)
    ty, tx = np.nonzero(truth)
    assert abs(ys.mean() - ty.mean()) < tol and abs(xs.mean() - tx.mean()) < tol
    # Depth is the green ramp / 10 away from the rectangle, up to the image's last row and column, wherever the
    # stride-4 cell is whole (a cell cut by the resized image's edge also sees padding inside the network):
    # no shift, and no zeros of the padding pulled in by the resize back.
    whole_y = (np.arange(h) + 0.5) * box.resized_height / h < 4 * (box.resized_height // 4) - 2
    whole_x = (np.arange(w) + 0.5) * box.resized_width / w < 4 * (box.resized_width // 4) - 2
    far = whole_y[:, None] & whole_x[None, :]
    far[max(0, rect[1] - 8):rect[3] + 8, max(0, rect[0] - 8):rect[2] + 8] = False
    green = image[:, :, 1].astype(np.float32) / 10.0
    # A stride-4 cell averages the ramp over 4 network pixels: allow 2.5 network pixels of its slope.
    allowed = 16.0 / (w - 1) * w / box.resized_width * 2.5 + 0.2
    error = np.abs(pred.depth - green)[far]
    assert error.max() < allowed
    if box.resized_height % 4 == 0:  # the last row borders the padding directly
        assert np.abs(pred.depth[-1] - green[-1])[whole_x].max() < allowed


def test_dense_resize_torch_matches_numpy_reference():
    box = fit_letterbox(77, 131, (64, 96))
    x = torch.randn(1, 3, box.padded_height // 4, box.padded_width // 4)
    out = dense_to_original(x, box)
    assert out.shape == (1, 3, 77, 131)
    np.testing.assert_allclose(out[0].numpy(), dense_to_original_numpy(x[0].numpy(), box), atol=1e-4)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cfg = tiny_config()
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", cfg, tiny_model(cfg)), cfg


def test_checkpoint_predictor_outputs_at_input_size(checkpoint):
    path, cfg = checkpoint
    predictor = Predictor.from_checkpoint(path, device="cpu")
    pred = predictor(scene_image(0, 77, 131))
    assert pred.tasks == ["detection", "segmentation", "depth"]
    assert pred.boxes.shape[1] == 4 and len(pred.boxes) == len(pred.scores) == len(pred.labels) > 0
    assert pred.boxes[:, 2].max() <= 131 and pred.boxes[:, 3].max() <= 77
    assert set(pred.class_names) <= {"red", "blue"}
    assert pred.semantic.shape == (77, 131) and pred.semantic.dtype == np.uint8 and pred.semantic.max() < 4
    assert pred.depth.shape == (77, 131) and pred.depth.dtype == np.float32 and (pred.depth > 0).all()
    assert set(pred.timings) == {"pre", "forward", "post", "total"}
    for value in (pred.boxes, pred.semantic, pred.depth):
        assert type(value) is np.ndarray


def test_only_the_asked_for_heads_run(checkpoint, monkeypatch):
    path, _ = checkpoint
    predictor = Predictor.from_checkpoint(path, device="cpu", tasks=["depth"])
    assert list(predictor.model.heads) == ["depth"]   # detection and segmentation heads are not even built
    pred = predictor(scene_image(1, 64, 64))
    assert pred.tasks == ["depth"] and pred.boxes is None and pred.semantic is None
    # With a full network, tasks=["depth"] runs no detection head and no detection post-processing.
    full = Predictor.from_checkpoint(path, device="cpu")
    echo = EchoModel()
    monkeypatch.setattr(full.model.heads["detection"], "postprocess", lambda *a: pytest.fail("detection ran"))
    only_depth = Predictor(full.model, (64, 96), tasks=["depth"], device="cpu")
    assert only_depth(scene_image(1, 64, 64)).tasks == ["depth"]
    Predictor(echo, (64, 96), tasks=["segmentation"], device="cpu")(scene_image(2, 50, 70))
    assert echo.calls == [["segmentation"]]


def test_batched_stream_equals_one_by_one_and_reuses_buffers(checkpoint):
    path, _ = checkpoint
    predictor = Predictor.from_checkpoint(path, device="cpu")
    frames = [scene_image(i, 72, 120) for i in range(5)]
    singles = [predictor(f) for f in frames]
    buffer = next(iter(predictor._buffers.values()))[0]
    batched = list(predictor.stream(frames, batch_size=5))
    predictor(frames[0])
    assert next(iter(predictor._buffers.values()))[0].data_ptr() == buffer.data_ptr()  # same frame size: reused
    for a, b in zip(singles, batched):
        np.testing.assert_array_equal(a.semantic, b.semantic)
        np.testing.assert_allclose(a.depth, b.depth, rtol=1e-4)
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)


def test_colour_conventions_and_channel_counts(checkpoint):
    path, _ = checkpoint
    predictor = Predictor.from_checkpoint(path, device="cpu", tasks=["segmentation"])
    rgb = scene_image(3, 64, 96)
    expected = predictor(rgb).semantic
    np.testing.assert_array_equal(predictor(rgb[:, :, ::-1].copy(), bgr=True).semantic, expected)
    rgba = np.concatenate([rgb, np.full((64, 96, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(predictor(rgba).semantic, expected)        # alpha dropped
    gray = rgb[:, :, 1]
    assert predictor(gray).semantic.shape == (64, 96)
    assert predictor(gray[:, :, None]).semantic.shape == (64, 96)
    with pytest.raises(ValueError, match="H x W x 3"):
        predictor(np.zeros((8, 8, 2), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        predictor(np.zeros((0, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        predictor(rgb.astype(np.float32))


def test_missing_and_unreadable_image_files_are_named(checkpoint, tmp_path):
    path, _ = checkpoint
    predictor = Predictor.from_checkpoint(path, device="cpu", tasks=["depth"])
    with pytest.raises(ImageReadError, match="nope.png"):
        predictor(tmp_path / "nope.png")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(ImageReadError, match="bad.jpg"):
        predictor(bad)


def test_ema_weights_are_preferred(tmp_path):
    cfg = tiny_config(tasks=["depth"])
    raw, ema = tiny_model(cfg, seed=0), tiny_model(cfg, seed=1)
    with torch.no_grad():
        ema.heads["depth"].predictor.bias.add_(1.0)  # e^1 times deeper: unmistakable
    path = write_checkpoint(tmp_path / "ema.pt", cfg, raw,
                            ema={f"module.{k}": v for k, v in ema.state_dict().items()})
    image = scene_image(4, 64, 96)
    with_ema = Predictor.from_checkpoint(path, device="cpu")(image).depth
    without = Predictor.from_checkpoint(path, device="cpu", prefer_ema=False)(image).depth
    np.testing.assert_allclose(with_ema, Predictor(ema, (64, 96), device="cpu")(image).depth, rtol=1e-5)
    np.testing.assert_allclose(without, Predictor(raw, (64, 96), device="cpu")(image).depth, rtol=1e-5)


class _RunsCode:
    def __reduce__(self):
        import os
        return os.system, (f"touch {_RunsCode.marker}",)


def test_malicious_truncated_and_foreign_checkpoints_are_refused(checkpoint, tmp_path):
    path, cfg = checkpoint
    _RunsCode.marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "perception", "version": 1, "config": {}, "model": _RunsCode()}, evil)
    with pytest.raises(CheckpointError):
        Predictor.from_checkpoint(evil, device="cpu")
    assert not _RunsCode.marker.exists()   # the pickle's code never ran
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps(_RunsCode()))
    with pytest.raises(CheckpointError):
        Predictor.from_checkpoint(plain, device="cpu")
    assert not _RunsCode.marker.exists()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(CheckpointError):
        Predictor.from_checkpoint(truncated, device="cpu")
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, foreign)
    with pytest.raises(CheckpointError):
        Predictor.from_checkpoint(foreign, device="cpu")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        Predictor.from_checkpoint(tmp_path / "missing.pt", device="cpu")
    with pytest.raises(ValueError, match="segmentation"):
        Predictor.from_checkpoint(write_checkpoint(tmp_path / "d.pt", tiny_config(["depth"]),
                                                   tiny_model(tiny_config(["depth"]))), tasks=["segmentation"])


def test_one_predictor_from_several_threads(checkpoint):
    path, _ = checkpoint
    predictor = Predictor.from_checkpoint(path, device="cpu", tasks=["segmentation", "depth"])
    images = [scene_image(i, 64, 96) for i in range(4)]
    expected = [predictor(im).depth for im in images]
    results = [None] * 4

    def work(i):
        results[i] = predictor(images[i]).depth

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(expected, results):
        np.testing.assert_allclose(a, b, rtol=1e-5)


def test_half_precision_agrees_with_float32():
    cfg = tiny_config(tasks=["segmentation", "depth"])
    model = tiny_model(cfg)
    image = scene_image(7, 77, 131)
    full = Predictor(model, (64, 96), device="cpu")(image)
    half = Predictor(model, (64, 96), device="cpu", half=True)(image)   # bfloat16 autocast on the CPU
    assert half.depth.dtype == np.float32 and half.semantic.dtype == np.uint8
    assert (half.semantic == full.semantic).mean() > 0.97
    np.testing.assert_allclose(half.depth, full.depth, rtol=0.05)


def test_stream_is_lazy_and_keeps_nothing():
    predictor = Predictor(EchoModel(), (64, 96), device="cpu")
    image = echo_image(48, 80, (10, 10, 30, 30))
    pulled = []

    def frames():
        for i in range(40):
            pulled.append(i)
            yield image

    stream = predictor.stream(frames(), batch_size=4)
    first = next(stream)
    assert len(pulled) == 4 and first.semantic.shape == (48, 80)   # one batch read ahead, no more
    assert sum(1 for _ in stream) == 39 and len(pulled) == 40
    assert len(predictor._buffers) == 1                              # one input buffer for the whole stream


def test_four_named_tasks_and_the_legacy_attributes(tmp_path):
    cfg = tiny_config(FOUR_TASKS)
    path = write_checkpoint(tmp_path / "four.pt", cfg, tiny_model(cfg))
    predictor = Predictor.from_checkpoint(path, device="cpu")
    pred = predictor(scene_image(9, 77, 131))
    assert pred.tasks == ["objects", "semantic", "coarse", "depth"] and "coarse" in pred
    assert pred.types == {"objects": "detection", "semantic": "segmentation", "coarse": "segmentation",
                          "depth": "depth"}
    for name, classes in (("semantic", 4), ("coarse", 2)):
        ids = pred[name]["semantic"]
        assert ids.shape == (77, 131) and ids.dtype == np.uint8 and ids.max() < classes
    assert pred["coarse"]["semantic_names"] == ["road", "car"]
    # A field of the one task that has it; None when no task has it; an error naming both when two have it.
    assert pred.boxes is pred["objects"]["boxes"] and len(pred.boxes) == len(pred.scores) == len(pred.labels) > 0
    assert set(pred.class_names) <= {"red", "blue"} and pred.depth is pred["depth"]["depth"]
    for field in ("semantic", "semantic_names"):
        with pytest.raises(AttributeError, match="semantic, coarse.*pred\\['semantic'\\]"):
            getattr(pred, field)
    with pytest.raises(AttributeError, match="no attribute 'boxs'"):
        pred.boxs
    with pytest.raises(KeyError, match="objects, semantic, coarse, depth"):
        pred["drivable"]
    # The record is keyed by task name; a Prediction pickles (nothing but plain data in it).
    record = json.loads(json.dumps(pred.to_record()))
    assert list(record["tasks"]) == pred.tasks and record["tasks"]["coarse"]["type"] == "segmentation"
    assert len(record["tasks"]["objects"]["detections"]) == len(pred.boxes) == len(pred.detections_coco())
    assert pred.detections_coco(category_offset=1)[0]["category_id"] == int(pred.labels[0]) + 1
    again = pickle.loads(pickle.dumps(pred))
    np.testing.assert_array_equal(again["coarse"]["semantic"], pred["coarse"]["semantic"])
    # Running two of the tasks (by name, any order): the network's order, and the others' fields are None.
    two = Predictor.from_checkpoint(path, device="cpu", tasks=["coarse", "objects"])
    assert list(two.model.heads) == ["objects", "coarse"]
    small = two(scene_image(9, 77, 131))
    assert small.tasks == ["objects", "coarse"] and small.depth is None
    assert small.semantic is small["coarse"]["semantic"]      # one segmentation task now: no ambiguity
    np.testing.assert_array_equal(small.semantic, pred["coarse"]["semantic"])
    with pytest.raises(ValueError, match="'segmentation'.*objects, semantic, coarse, depth"):
        Predictor.from_checkpoint(path, device="cpu", tasks=["segmentation"])


def test_thresholds_are_call_arguments_not_head_attributes():
    model = tiny_model(tiny_config())
    head = model.heads["detection"]
    image = scene_image(10, 64, 96)
    default = Predictor(model, (64, 96), device="cpu")(image)
    strict = Predictor(model, (64, 96), device="cpu", score_thresh=0.6)(image)
    assert head.score_thresh == 0.2                        # the network is left as it was trained
    assert 0 < len(strict.boxes) < len(default.boxes) and strict.scores.min() > 0.6
    via_options = Predictor(model, (64, 96), device="cpu", options={"detection": {"score_thresh": 0.6}})(image)
    np.testing.assert_array_equal(via_options.boxes, strict.boxes)
    np.testing.assert_array_equal(Predictor(model, (64, 96), device="cpu")(image).boxes, default.boxes)
    with pytest.raises(ValueError, match="nms_iou.*score_thresh"):
        Predictor(model, (64, 96), device="cpu", options={"detection": {"nms_iou": 0.5}})
    with pytest.raises(ValueError, match="'objects' does not run"):
        Predictor(model, (64, 96), device="cpu", options={"objects": {"score_thresh": 0.5}})
    # A threshold given to a network without a task that takes it changes nothing.
    depth_only = tiny_model(tiny_config(["depth"]))
    assert Predictor(depth_only, (64, 96), device="cpu", score_thresh=0.5)(image).tasks == ["depth"]


def test_class_names_fall_back_to_class_i_and_ids_widen_above_256_classes():
    cfg = tiny_config({"wide": {"type": "segmentation", "num_classes": 257, "channels": 8},
                       "narrow": {"type": "segmentation", "num_classes": 256, "channels": 8},
                       "objects": {"type": "detection", "num_classes": 3, "num_convs": 1}})
    model = tiny_model(cfg)
    pred = Predictor(model, (64, 96), device="cpu")(scene_image(11, 40, 60))
    assert pred["wide"]["semantic"].dtype == np.int32 and pred["narrow"]["semantic"].dtype == np.uint8
    assert pred["wide"]["semantic_names"][256] == "class_256"
    assert len(pred.boxes) > 0 and set(pred.class_names) <= {"class_0", "class_1", "class_2"}
    named = Predictor(model, (64, 96), device="cpu", class_names={"objects": ["car", "bus", "van"]})
    assert set(named(scene_image(11, 40, 60)).class_names) <= {"car", "bus", "van"}
    with pytest.raises(ValueError, match="2 names for num_classes=257"):
        Predictor(model, (64, 96), device="cpu", class_names={"wide": ["a", "b"]})


@pytest.mark.parametrize("conv", ["conv", "dwsep"])
def test_a_subset_without_p2_loads_from_a_checkpoint_whose_pyramid_has_it(tmp_path, conv):
    """With neck.prune, detection alone of a network with stride-4 dense heads has no P2: its FPN blocks are
    the checkpoint's second and later ones, renumbered; its outputs equal the whole network's detection."""
    cfg = tiny_config()
    cfg.model.neck.prune = True
    cfg.model.neck.conv = conv
    model = tiny_model(cfg)
    assert model.neck.strides[0] == 4
    path = write_checkpoint(tmp_path / "full.pt", cfg, model)
    only = Predictor.from_checkpoint(path, device="cpu", tasks=["detection"])
    assert only.model.neck.strides[0] == 8 and len(only.model.heads) == 1
    images = torch.rand(1, 3, 64, 96) * 255
    with torch.no_grad():
        ours = only.model(images)["detection"]
        reference = model(images, tasks=["detection"])["detection"]
    for key in ("cls_logits", "box_regression", "centerness"):
        torch.testing.assert_close(ours[key], reference[key])
