"""Joint augmentation: image, mask, depth and boxes stay aligned through scale, crop, pad and flip."""
from __future__ import annotations

import cv2
import numpy as np
import torch

from perception.data import collate
from perception.data.batch import IGNORE_INDEX
from perception.data.config import AugmentConfig
from perception.data.transforms import JointTransform, fitted_size
from perception.tasks import build_tasks

OBJ_COLOUR, OBJ_CLASS, OBJ_DEPTH = (200, 30, 30), 13, 5.0


def _sample(height=96, width=160, box=(40, 30, 100, 70)):
    image = np.full((height, width, 3), 60, np.uint8)
    semantic = np.zeros((height, width), np.int64)
    depth = np.full((height, width), 10.0, np.float32)
    x0, y0, x1, y1 = box
    image[y0:y1, x0:x1] = OBJ_COLOUR
    semantic[y0:y1, x0:x1] = OBJ_CLASS
    depth[y0:y1, x0:x1] = OBJ_DEPTH
    semantic[:5] = IGNORE_INDEX  # an unlabelled band stays unlabelled
    return {"image": image, "semantic": semantic, "depth": depth, "boxes": np.array([box], np.float32),
            "labels": np.array([2]), "meta": {}}


def test_training_augmentation_keeps_targets_aligned():
    aug = AugmentConfig(scale=(0.6, 1.8), hflip=0.5, color_p=0.0, min_visibility=0.0, min_box_size=1.0)
    transform = JointTransform((64, 96), train=True, augment=aug)
    zooms, flips = set(), set()
    for seed in range(40):
        out = transform(_sample(), seed=seed)
        image, semantic, depth = out["image"].numpy().transpose(1, 2, 0), out["semantic"].numpy(), out["depth"].numpy()
        zoom = out["meta"]["zoom"]
        zooms.add(round(zoom, 3))
        flips.add(out["meta"]["flipped"])
        assert image.shape == (64, 96, 3) and semantic.shape == depth.shape == (64, 96)
        obj = semantic == OBJ_CLASS
        # Nearest interpolation: no blended labels or depths, and depth divided by the zoom (MTAN).
        assert set(np.unique(semantic)) <= {0, OBJ_CLASS, IGNORE_INDEX}
        np.testing.assert_allclose(depth[obj], OBJ_DEPTH / zoom, rtol=1e-6)
        np.testing.assert_allclose(depth[semantic == 0], 10.0 / zoom, rtol=1e-6)
        # Padding: image 0, semantic ignored, depth unmeasured.
        pad = (image == 0).all(2)
        assert (semantic[pad] == IGNORE_INDEX).all() and (depth[pad] == 0).all()
        # The image shows the object where the mask says so (interior pixels, away from interpolated edges).
        interior = cv2.erode(obj.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        assert (np.abs(image[interior].astype(int) - OBJ_COLOUR).max(initial=0) <= 1)
        # The box encloses every object pixel (and no more than a pixel of rounding around them).
        if obj.any():
            assert len(out["boxes"]) == 1
            x0, y0, x1, y1 = out["boxes"][0].tolist()
            rows, cols = np.nonzero(obj)
            # Pixel-centre (nearest-exact) sampling puts the mask edge within half a pixel of the box edge.
            tol = 0.5 + 1e-3
            assert abs(cols.min() - x0) <= tol and abs(cols.max() + 1 - x1) <= tol
            assert abs(rows.min() - y0) <= tol and abs(rows.max() + 1 - y1) <= tol
        else:
            assert len(out["boxes"]) == 0
    assert len(zooms) > 30 and flips == {True, False}


def test_flip_mirrors_every_target():
    base = JointTransform((96, 160), train=True, augment=AugmentConfig(scale=(1.0, 1.0), hflip=0.0, color_p=0.0))
    flip = JointTransform((96, 160), train=True, augment=AugmentConfig(scale=(1.0, 1.0), hflip=1.0, color_p=0.0))
    a, b = base(_sample(), seed=0), flip(_sample(), seed=0)
    assert torch.equal(b["image"], a["image"].flip(-1))
    assert torch.equal(b["semantic"], a["semantic"].flip(-1)) and torch.equal(b["depth"], a["depth"].flip(-1))
    assert b["boxes"].tolist() == [[160 - 100, 30, 160 - 40, 70]]


def test_same_seed_same_augmentation_and_scale_depth_off():
    aug = AugmentConfig(scale=(0.5, 2.0), scale_depth=False)
    transform = JointTransform((64, 96), train=True, augment=aug)
    a, b = transform(_sample(), seed=7), transform(_sample(), seed=7)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["depth"], b["depth"])
    assert a["meta"]["zoom"] != 1.0
    assert set(torch.unique(a["depth"]).tolist()) <= {0.0, 10.0, OBJ_DEPTH}  # metric depth kept


def test_boxes_cropped_away_are_dropped():
    aug = AugmentConfig(scale=(3.0, 3.0), hflip=0.0, color_p=0.0, min_visibility=0.5)
    transform = JointTransform((64, 64), train=True, augment=aug)
    kept = [len(transform(_sample(), seed=s)["boxes"]) for s in range(30)]
    assert 0 in kept and 1 in kept


def test_eval_fits_keeping_aspect_and_restores():
    sample = _sample(height=100, width=300, box=(30, 20, 150, 80))
    transform = JointTransform((128, 256), train=False)
    out = transform(sample)
    assert out["meta"]["input_size"] == fitted_size(100, 300, (128, 256)) == (85, 256)
    assert out["meta"]["orig_size"] == (100, 300)
    batch = collate([out])
    assert batch.images.shape[-2:] == (96, 256)  # padded to a multiple of 32
    boxes = batch.targets["detection"]["boxes"][0]
    np.testing.assert_allclose(boxes.numpy(), [[30 * 256 / 300, 20 * 85 / 100, 150 * 256 / 300, 80 * 85 / 100]],
                               rtol=1e-5)
    prediction = {"detection": {"boxes": boxes, "scores": torch.ones(1), "labels": torch.ones(1)},
                  "segmentation": batch.targets["segmentation"][0], "depth": batch.targets["depth"][0]}
    tasks = build_tasks(["detection", "segmentation", "depth"])
    restored = {name: tasks[name].restore(p, batch.meta[0]["input_size"], batch.meta[0]["orig_size"])
                for name, p in prediction.items()}
    np.testing.assert_allclose(restored["detection"]["boxes"].numpy(), [[30, 20, 150, 80]], atol=1e-3)
    seg = restored["segmentation"].numpy()
    assert seg.shape == (100, 300) and (seg == sample["semantic"]).mean() > 0.98
    assert restored["depth"].shape == (100, 300)
