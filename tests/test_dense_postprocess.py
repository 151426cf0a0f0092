"""Cheap dense post-processing: segmentation ids without full-size K-channel logits, depth resized once in log
space; both equal to the full-size bilinear reference, in PyTorch and in numpy."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _inference_utils import scene_image, tiny_config, tiny_model, write_checkpoint
from perception.data.synthetic import generate_scene
from perception.inference.predictor import Predictor
from perception.ops.geometry import (argmax_to_original, argmax_to_original_numpy, dense_to_original,
                                     dense_to_original_numpy, fit_letterbox, ids_to_original)
from perception.tasks import build_tasks

BOXES = [((120, 160), (128, 160)), ((94, 72), (64, 96)), ((75, 100), (64, 128)), ((30, 50), (64, 96))]


def scene_logits(height: int, width: int, box, classes: int = 19, seed: int = 0) -> torch.Tensor:
    """Logits a trained head could give on a generated street scene: the true classes' one-hot at the network
    input, averaged over stride-4 cells (soft boundaries), plus noise (no exact ties)."""
    semantic = generate_scene(index=seed, split="val", height=height, width=width)["semantic"]
    ids = torch.from_numpy(semantic.astype(np.int64)).clamp(max=classes - 1)
    one_hot = F.one_hot(ids, classes).permute(2, 0, 1)[None].float()
    padded = torch.zeros(1, classes, *box.padded_size)
    padded[..., :box.resized_height, :box.resized_width] = F.interpolate(one_hot, size=box.resized_size,
                                                                         mode="nearest")
    generator = torch.Generator().manual_seed(seed)
    logits = F.avg_pool2d(padded, 4) * 4
    return (logits + 0.3 * torch.randn(logits.shape, generator=generator))[0]


@pytest.mark.parametrize("size, network", [((96, 128), (96, 128)), ((135, 101), (80, 80)), ((75, 100), (64, 128))])
def test_ids_agree_with_the_full_size_logits_on_generated_scenes(size, network):
    box = fit_letterbox(*size, network)
    for seed in range(2):
        logits = scene_logits(*size, box, seed=seed)
        reference = dense_to_original(logits[None], box)[0].argmax(0)
        ids = argmax_to_original(logits, box)
        assert ids.shape == size and ids.dtype == torch.int64
        # Equal but for near-ties at boundaries (the reference's scale carries a 1e-7 margin).
        assert (ids == reference).float().mean().item() >= 0.999


def test_ids_equal_the_grid_argmax_exactly_at_cell_centres():
    # 192x288 into 256x384: 3 original pixels per stride-4 cell, so pixels 3k + 1 sit on cell centres.
    box = fit_letterbox(192, 288, (256, 384))
    logits = torch.randn(7, 64, 96, generator=torch.Generator().manual_seed(0))
    ids = argmax_to_original(logits, box)
    centres = ids[1::3, 1::3]
    assert centres.shape == (64, 96)
    assert torch.equal(centres, logits.argmax(0))
    assert torch.equal(centres, dense_to_original(logits[None], box)[0].argmax(0)[1::3, 1::3])


@pytest.mark.parametrize("size, network", BOXES)
def test_torch_and_numpy_ids_are_identical(size, network):
    box = fit_letterbox(*size, network)
    logits = torch.randn(5, box.padded_height // 4, box.padded_width // 4, generator=torch.Generator().manual_seed(1))
    ids = argmax_to_original(logits, box)
    np.testing.assert_array_equal(ids.numpy(), argmax_to_original_numpy(logits.numpy(), box))
    reference = dense_to_original(logits[None], box)[0].argmax(0)
    assert (ids == reference).float().mean().item() >= 0.999


@pytest.mark.parametrize("size, network", BOXES)
def test_nearest_ids_take_the_cell_under_each_pixel_centre(size, network):
    box = fit_letterbox(*size, network)
    grid = torch.randint(0, 200, (box.padded_height // 4, box.padded_width // 4), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(2))
    ids = ids_to_original(grid.numpy(), box)
    assert ids.shape == size and ids.dtype == np.uint8
    # Pixel centre (y + 1/2) original px -> (y + 1/2) * resized / height network px -> that // 4 cell, clipped to
    # the cells holding image pixels (the rest saw only padding).
    rows = np.minimum(((np.arange(size[0]) + 0.5) * box.resized_height / size[0]) // 4, -(-box.resized_height // 4) - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * box.resized_width / size[1]) // 4, -(-box.resized_width // 4) - 1)
    np.testing.assert_array_equal(ids, grid.numpy()[rows.astype(int)][:, cols.astype(int)])


def test_nearest_ids_equal_torch_nearest_exact_without_padding():
    # A 96x144 photo into 128x192: no padding, 3 original pixels per stride-4 cell (an exact factor).
    box = fit_letterbox(96, 144, (128, 192))
    grid = torch.randint(0, 19, (32, 48), generator=torch.Generator().manual_seed(3))
    reference = F.interpolate(grid[None, None].float(), size=(96, 144), mode="nearest-exact")[0, 0].long()
    np.testing.assert_array_equal(ids_to_original(grid.numpy(), box), reference.numpy())


def test_segmentation_upsample_option_picks_the_decode_and_rejects_unknown_values():
    task = build_tasks({"seg": {"type": "segmentation", "num_classes": 5}})["seg"]
    box = fit_letterbox(75, 100, (64, 128))
    logits = scene_logits(75, 100, box, classes=5)
    near = task.predict(None, logits[None], [box])[0]["semantic"]
    smooth = task.predict(None, logits[None], [box], upsample="bilinear")[0]["semantic"]
    assert near.dtype == np.uint8 and near.shape == (75, 100)
    np.testing.assert_array_equal(near, ids_to_original(logits.argmax(0).numpy().astype(np.uint8), box))
    np.testing.assert_array_equal(smooth, argmax_to_original(logits, box).numpy())
    assert (near != smooth).any() and (near == smooth).mean() > 0.9   # they differ at boundaries only
    outputs = {"logits": logits.numpy()}
    np.testing.assert_array_equal(task.decode_numpy(outputs, box)["semantic"], near)
    np.testing.assert_array_equal(task.decode_numpy(outputs, box, upsample="bilinear")["semantic"], smooth)
    with pytest.raises(ValueError, match="upsample: got 'cubic', expected one of nearest, bilinear"):
        task.predict(None, logits[None], [box], upsample="cubic")


def test_predictor_resizes_only_single_channel_maps_to_the_photo(monkeypatch):
    import perception.ops.geometry as geometry

    cfg = tiny_config(["segmentation", "depth"], image_size=(64, 96))
    predictor = Predictor(tiny_model(cfg), (64, 96))
    photo = scene_image(0, 100, 150)
    channels = []
    interpolate, resize = F.interpolate, geometry.cv2.resize

    def spy(x, *args, **kwargs):
        out = interpolate(x, *args, **kwargs)
        if tuple(out.shape[-2:]) == photo.shape[:2]:
            channels.append(out.shape[1])
        return out

    def cv_spy(x, *args, **kwargs):
        out = resize(x, *args, **kwargs)
        if out.shape[0] >= photo.shape[0] and out.shape[1] >= photo.shape[1]:
            channels.append(1 if out.ndim == 2 else out.shape[2])
        return out

    monkeypatch.setattr(F, "interpolate", spy)
    monkeypatch.setattr(geometry.cv2, "resize", cv_spy)
    for upsample in ("nearest", "bilinear"):
        channels.clear()
        predictor.set_option("upsample", upsample)
        pred = predictor(photo)
        assert pred.semantic.shape == photo.shape[:2] and pred.depth.shape == photo.shape[:2]
        assert channels == [1]    # the depth map; segmentation resizes no float map at all


def test_depth_is_the_clamped_log_depth_resized_once():
    cfg = tiny_config(["depth"], image_size=(64, 96))
    model = tiny_model(cfg)
    box = fit_letterbox(75, 131, (64, 96))
    head = model.heads["depth"]
    raw = torch.randn(1, 1, box.padded_height // 4, box.padded_width // 4, generator=torch.Generator().manual_seed(2))
    raw[0, 0, 0, :3] = torch.tensor([-50.0, 50.0, 0.0])   # beyond both clamps
    task = model.task_specs["depth"]
    depth = task.predict(head, raw, [box])[0]["depth"]
    expected = torch.exp(dense_to_original(head.log_depth(raw).clamp(math.log(head.min_depth),
                                                                     math.log(head.max_depth)), box))[0, 0]
    # OpenCV computes the taps in float32: a weight off by ~1e-6 times a log-depth step of up to 12 (the clamps).
    np.testing.assert_allclose(depth, expected.numpy(), rtol=1e-4)
    assert depth.min() >= head.min_depth * (1 - 1e-6) and depth.max() <= head.max_depth * (1 + 1e-6)
    # The ONNX path decodes the exported (clamped) depth the same way.
    exported = torch.exp(head.log_depth(raw)).clamp(head.min_depth, head.max_depth)[0].numpy()
    numpy_depth = task.decode_numpy({"depth": exported}, box)["depth"]
    np.testing.assert_allclose(numpy_depth, depth, rtol=1e-4)   # log and exp of float32 on the way
    assert depth.shape == (75, 131)


def test_postprocess_benchmark_runs_and_agrees(capsys):
    import argparse

    from perception.benchmark import postprocess

    parser = argparse.ArgumentParser()
    postprocess.add_arguments(parser)
    result = postprocess.run(parser.parse_args(["--photo", "45x61", "--network", "64x96", "--repeats", "1"]))
    exact = [row for row in result["rows"] if row["output"] != "class ids, nearest"]
    assert len(result["rows"]) == 10 and all(row["agreement"] >= 0.99 for row in exact)
    # Nearest ids differ from the bilinear reference only near class boundaries.
    assert all(0.8 < row["agreement"] < 1.0 for row in result["rows"] if row["output"] == "class ids, nearest")
    # The detection rows: the kept-candidates decode gives exactly the every-location decode's detections.
    boxes = [row for row in result["rows"] if row["output"].startswith("boxes")]
    assert len(boxes) == 4 and all(row["agreement"] == 1.0 for row in boxes)
    assert "ratio" in capsys.readouterr().out


def test_decode_accuracy_scores_both_decodes_against_the_truth(tmp_path, capsys):
    from perception.benchmark import postprocess

    truth, pred = np.array([0, 0, 1, 255]), np.array([0, 1, 1, 0])
    confusion = postprocess._confusion(truth, pred, 2, 255)
    np.testing.assert_array_equal(confusion, [[1, 1], [0, 1]])
    assert postprocess._scores(confusion) == (0.5, 2 / 3)     # IoU 1/2 for both classes; 2 of 3 labelled pixels
    with pytest.raises(ValueError, match="class id 3 in the truth, the model has 2 classes"):
        postprocess._confusion(np.array([3]), np.array([0]), 2, 255)
    cfg = tiny_config({"segmentation": {"type": "segmentation", "num_classes": 19, "channels": 16}})
    paths = [write_checkpoint(tmp_path / f"s{seed}.pt", cfg, tiny_model(cfg, seed=seed)) for seed in (0, 1)]
    result = postprocess.decode_accuracy(paths, (45, 61), None, scenes=2)
    assert len(result["per_checkpoint"]) == 2
    for row in result["per_checkpoint"]:
        assert 0 <= row["nearest_mIoU"] <= 1 and 0 <= row["bilinear_pixel_acc"] <= 1 and 0 < row["agreement"] <= 1
    diff = [r["nearest_mIoU"] - r["bilinear_mIoU"] for r in result["per_checkpoint"]]
    assert result["summary"]["mIoU_difference"]["mean"] == pytest.approx(np.mean(diff))
    assert "mean +- std over the checkpoints" in capsys.readouterr().out
    depth_cfg = tiny_config(["depth"])
    depth_only = write_checkpoint(tmp_path / "depth.pt", depth_cfg, tiny_model(depth_cfg))
    with pytest.raises(ValueError, match=r"depth\.pt: no class-map task to score"):
        postprocess.decode_accuracy([depth_only], (45, 61), None, scenes=1)


@pytest.mark.parametrize("size, network", [((810, 1080), (160, 160)), ((75, 100), (64, 128))])
def test_noisy_maps_blend_every_pixel_with_the_same_ids(size, network):
    # Random logits (an untrained head): nearly every pixel sits between cells of different arg-max, so the
    # separable blend of all pixels is taken; it must give exactly the ids of the per-pixel gathered blend.
    box = fit_letterbox(*size, network)
    logits = torch.randn(19, box.padded_height // 4, box.padded_width // 4, generator=torch.Generator().manual_seed(3))
    whole = argmax_to_original(logits, box)                      # default share: the separable path
    gathered = argmax_to_original(logits, box, max_gather_share=1.0)
    assert torch.equal(whole, gathered)
    np.testing.assert_array_equal(argmax_to_original_numpy(logits.numpy(), box), whole.numpy())
    np.testing.assert_array_equal(argmax_to_original_numpy(logits.numpy(), box, max_gather_share=1.0), whole.numpy())
    reference = dense_to_original(logits[None], box)[0].argmax(0)
    assert (whole == reference).float().mean().item() >= 0.999
