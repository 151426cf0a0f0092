"""Properties of the joint augmentation (hypothesis): whatever the image size, network size, zoom, crop, pad and
flip, and boxes anywhere (at the borders too), every box still covers the pixels painted with its id in the mask
and the depth, and the mask, the depth and the image stay aligned.

Each box k (a crowd region or not) is painted with id k + 1 in the semantic mask, depth 2 (k + 1) metres and
colour COLOURS[k]; later boxes paint over earlier ones. Masks and depth are resized with pixel-centre nearest
neighbour, so a pixel carries id k + 1 exactly when its centre falls inside box k (where box k is visible): the
box edges are exact to float rounding (EPS), not to a pixel.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from perception.data.batch import IGNORE_INDEX
from perception.data.config import AugmentConfig
from perception.data.transforms import JointTransform

EPS = 1e-3  # pixels: float rounding of box coordinates (albumentations normalises them to [0, 1] and back)
BACKGROUND_DEPTH, BACKGROUND_COLOUR = 50.0, (40, 80, 120)
COLOURS = [(200, 20, 20), (20, 200, 20), (20, 20, 200), (200, 200, 20), (200, 20, 200), (20, 200, 200)]


@st.composite
def scenes(draw) -> dict:
    """An image of random size with up to six boxes, biased towards the image borders."""
    height, width = draw(st.integers(4, 96)), draw(st.integers(4, 96))
    boxes = []
    for _ in range(draw(st.integers(0, len(COLOURS)))):
        x0 = draw(st.one_of(st.just(0), st.integers(0, width - 1)))
        x1 = draw(st.one_of(st.just(width), st.integers(x0 + 1, width)))
        y0 = draw(st.one_of(st.just(0), st.integers(0, height - 1)))
        y1 = draw(st.one_of(st.just(height), st.integers(y0 + 1, height)))
        boxes.append((x0, y0, x1, y1))
    scene = paint(height, width, boxes)
    scene["crowd"] = np.array([draw(st.booleans()) for _ in boxes], bool)
    return scene


def paint(height: int, width: int, boxes: list[tuple[int, int, int, int]]) -> dict:
    image = np.empty((height, width, 3), np.uint8)
    image[:] = BACKGROUND_COLOUR
    semantic = np.zeros((height, width), np.int64)
    depth = np.full((height, width), BACKGROUND_DEPTH, np.float32)
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        image[y0:y1, x0:x1] = COLOURS[k]
        semantic[y0:y1, x0:x1] = k + 1
        depth[y0:y1, x0:x1] = 2.0 * (k + 1)
    # A box is fully visible when no later box paints over any of its pixels.
    visible = [bool((semantic[y0:y1, x0:x1] == k + 1).all()) for k, (x0, y0, x1, y1) in enumerate(boxes)]
    return {"image": image, "semantic": semantic, "depth": depth, "boxes": np.array(boxes, np.float32).reshape(-1, 4),
            "labels": np.arange(len(boxes)), "visible": visible, "meta": {}}


@given(scene=scenes(), net_h=st.integers(8, 96), net_w=st.integers(8, 96),
       zoom=st.tuples(st.floats(0.25, 3.0), st.floats(0.0, 1.0)), hflip=st.sampled_from([0.0, 0.5, 1.0]),
       filters=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_boxes_masks_depth_and_image_stay_aligned(scene, net_h, net_w, zoom, hflip, filters, seed):
    low = zoom[0]
    high = low + zoom[1] * (3.0 - low)
    aug = AugmentConfig(scale=(low, high), hflip=hflip, color_p=0.0, min_visibility=0.25 if filters else 0.0,
                        min_box_size=2.0 if filters else 0.0)
    sample = {k: v for k, v in scene.items() if k != "visible"}
    out = JointTransform((net_h, net_w), train=True, augment=aug)(sample, seed=seed)
    image = out["image"].numpy().transpose(1, 2, 0)
    semantic, depth = out["semantic"].numpy(), out["depth"].numpy()
    zoom_used = out["meta"]["zoom"]
    assert low - 1e-9 <= zoom_used <= high + 1e-9
    assert image.shape == (net_h, net_w, 3) and semantic.shape == depth.shape == (net_h, net_w)

    # Padding: semantic ignore exactly where depth is unmeasured and the image black.
    pad = semantic == IGNORE_INDEX
    np.testing.assert_array_equal(pad, depth == 0)
    assert (image[pad] == 0).all() and (image[~pad] != 0).any(axis=-1).all()
    # Mask and depth aligned pixel for pixel (depth divided by the zoom).
    n = len(scene["boxes"])
    assert set(np.unique(semantic[~pad]).tolist()) <= set(range(n + 1))
    depth_of = np.array([BACKGROUND_DEPTH] + [2.0 * (k + 1) for k in range(n)], np.float32)
    np.testing.assert_allclose(depth[~pad] * zoom_used, depth_of[semantic[~pad]], rtol=1e-6)

    kept = out["labels"].tolist()
    assert kept == sorted(set(kept)) and len(out["boxes"]) == len(kept)  # order and labels preserved
    assert out["crowd"].tolist() == scene["crowd"][kept].tolist()  # crowd flags stay with their boxes
    rows, cols = np.mgrid[0:net_h, 0:net_w] + 0.5  # pixel centres
    # Nearest-neighbour resizing by s blends the image up to about s / 2 pixels on either side of an edge.
    resize = max(net_h / scene["image"].shape[0], net_w / scene["image"].shape[1]) * zoom_used
    radius = int(math.ceil(resize / 2)) + 1
    kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    for k in range(n):
        painted = semantic == k + 1
        if k not in kept:
            if not filters:  # without the visibility filters a box is dropped only when nothing of it is left
                assert not painted.any(), f"box {k} dropped but {int(painted.sum())} of its pixels remain"
            continue
        x0, y0, x1, y1 = out["boxes"][kept.index(k)].tolist()
        assert 0 <= x0 < x1 <= net_w and 0 <= y0 < y1 <= net_h
        inside = (cols >= x0 - EPS) & (cols <= x1 + EPS) & (rows >= y0 - EPS) & (rows <= y1 + EPS)
        assert not (painted & ~inside).any(), f"box {k} does not cover its painted pixels"
        if scene["visible"][k]:
            strictly = (cols > x0 + EPS) & (cols < x1 - EPS) & (rows > y0 + EPS) & (rows < y1 - EPS)
            assert painted[strictly].all(), f"box {k} is larger than its painted region"
            # The image shows the box's colour inside its painted region (away from blended edges).
            interior = cv2.erode(painted.astype(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT,
                                 borderValue=0).astype(bool)
            assert np.abs(image[interior].astype(int) - COLOURS[k]).max(initial=0) <= 1
        if filters:
            assert x1 - x0 >= 2.0 - EPS and y1 - y0 >= 2.0 - EPS


@given(scene=scenes(), net_h=st.integers(8, 96), net_w=st.integers(8, 96))
def test_evaluation_resize_keeps_every_box_and_its_pixels(scene, net_h, net_w):
    sample = {k: v for k, v in scene.items() if k != "visible"}
    out = JointTransform((net_h, net_w), train=False)(sample)
    height, width = scene["image"].shape[:2]
    h, w = out["meta"]["input_size"]
    assert h <= net_h and w <= net_w and (h == net_h or w == net_w)
    semantic = out["semantic"].numpy()
    assert (semantic != IGNORE_INDEX).all()  # no padding before collate
    # Every box survives, scaled per axis by the resize ratio.
    scale = np.array([w / width, h / height] * 2, np.float32)
    np.testing.assert_allclose(out["boxes"].numpy(), scene["boxes"] * scale, atol=EPS)
    assert out["labels"].tolist() == list(range(len(scene["boxes"])))
    assert out["crowd"].tolist() == scene["crowd"].tolist()
    rows, cols = np.mgrid[0:h, 0:w] + 0.5
    for k, (x0, y0, x1, y1) in enumerate(out["boxes"].tolist()):
        painted = semantic == k + 1
        inside = (cols >= x0 - EPS) & (cols <= x1 + EPS) & (rows >= y0 - EPS) & (rows <= y1 + EPS)
        assert not (painted & ~inside).any()
        if scene["visible"][k]:
            strictly = (cols > x0 + EPS) & (cols < x1 - EPS) & (rows > y0 + EPS) & (rows < y1 - EPS)
            assert painted[strictly].all()
