"""Properties of the letterbox geometry (hypothesis): evaluation and inference fit an image into the network the
same way, and image -> network -> original-size round trips of boxes and dense maps land within a pixel.

Dense maps are checked with coordinate ramps: a map whose value is its own column (or row) index. A nearest
round trip can move a value by at most half a pixel of the coarser grid plus half a pixel (``a / 2 + 1 / 2`` with
``a`` original pixels per network pixel); the predictor's bilinear map from the stride-4 grid is exact (a linear
ramp stays the identity) wherever the original pixel lies between two valid cell centres, and within one cell at
the borders, where the last valid cell is repeated.
"""
from __future__ import annotations

import numpy as np
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from perception.data import collate
from perception.data.transforms import JointTransform, fitted_size
from perception.ops.geometry import crop_resize_linear, crop_resize_nearest, scale_boxes
from perception.ops.geometry import (SIZE_DIVISOR, boxes_to_original, dense_to_original,
                                           dense_to_original_numpy, fit_letterbox, letterbox_image)

sizes = st.integers(1, 400)
MIN_SIDE = 1.0  # pixels: the smallest box an annotation tool draws
network_sizes = st.tuples(st.integers(8, 320), st.integers(8, 320))


@st.composite
def boxes_in(draw, height: int, width: int) -> np.ndarray:
    """Up to five float boxes inside a height x width image (at least MIN_SIDE wide and high), often touching its
    borders."""
    out = []
    for _ in range(draw(st.integers(1, 5))):
        x0 = draw(st.one_of(st.just(0.0), st.floats(0, width - MIN_SIDE)))
        x1 = draw(st.one_of(st.just(float(width)), st.floats(x0 + MIN_SIDE, width)))
        y0 = draw(st.one_of(st.just(0.0), st.floats(0, height - MIN_SIDE)))
        y1 = draw(st.one_of(st.just(float(height)), st.floats(y0 + MIN_SIDE, height)))
        out.append((x0, y0, x1, y1))
    return np.array(out, np.float32)


@given(height=sizes, width=sizes, network=network_sizes)
def test_evaluation_and_inference_fit_the_same_letterbox(height, width, network):
    box = fit_letterbox(height, width, network)
    assert fitted_size(height, width, network) == box.resized_size
    assert box.resized_height <= network[0] and box.resized_width <= network[1]
    assert box.resized_height == network[0] or box.resized_width == network[1]  # it fits one side exactly
    for resized, padded in zip(box.resized_size, box.padded_size):
        assert padded % SIZE_DIVISOR == 0 and resized <= padded < resized + SIZE_DIVISOR
    image = np.full((height, width, 3), 7, np.uint8)
    padded, same = letterbox_image(image, network)
    assert same == box and padded.shape == (*box.padded_size, 3)
    assert (padded[:box.resized_height, :box.resized_width] == 7).all()
    assert padded.sum() == 7 * 3 * box.resized_height * box.resized_width  # zero padding
    out = JointTransform(network, train=False)({"image": image})
    assert tuple(out["image"].shape[1:]) == out["meta"]["input_size"] == box.resized_size


@given(data=st.data(), height=sizes, width=sizes, network=network_sizes)
def test_boxes_round_trip_to_the_original_image(data, height, width, network):
    boxes = data.draw(boxes_in(height, width))
    out = JointTransform(network, train=False)({"image": np.zeros((height, width, 3), np.uint8), "boxes": boxes,
                                                 "labels": np.zeros(len(boxes), np.int64)})
    assert len(out["boxes"]) == len(boxes)
    tol = 1e-3 * max(1.0, height / out["meta"]["input_size"][0], width / out["meta"]["input_size"][1])
    back = scale_boxes(out["boxes"], out["meta"]["input_size"], (height, width))  # the evaluator's way back
    np.testing.assert_allclose(back.numpy(), boxes, atol=tol)
    box = fit_letterbox(height, width, network)  # the predictor's way back, from network pixels
    net = boxes * np.array(box.scale_xy * 2, np.float32)
    np.testing.assert_allclose(boxes_to_original(torch.from_numpy(net), box).numpy(), boxes, atol=tol)
    np.testing.assert_allclose(boxes_to_original(net, box), boxes, atol=tol)


@given(height=st.integers(1, 200), width=st.integers(1, 200), network=network_sizes)
def test_label_maps_round_trip_within_a_pixel(height, width, network):
    cols = np.broadcast_to(np.arange(width), (height, width)).astype(np.int64)   # < 254: a valid class id
    rows = np.broadcast_to(np.arange(height)[:, None] + 1.0, (height, width)).astype(np.float32)  # > 0: measured
    out = JointTransform(network, train=False)({"image": np.zeros((height, width, 3), np.uint8),
                                                 "semantic": cols.copy(), "depth": rows.copy()})
    batch = collate([out])  # padded to a multiple of 32, as the evaluator sees it
    meta = batch.meta[0]
    h, w = meta["input_size"]
    a_y, a_x = height / h, width / w
    semantic = crop_resize_nearest(batch.targets["segmentation"][0], meta["input_size"], meta["orig_size"]).numpy()
    assert semantic.shape == (height, width)
    assert np.abs(semantic - cols).max() <= a_x / 2 + 0.5 + 1e-6
    for mode, restore in (("nearest-exact", crop_resize_nearest), ("bilinear", crop_resize_linear)):
        depth = restore(batch.targets["depth"][0], meta["input_size"], meta["orig_size"]).numpy()
        assert depth.shape == (height, width)
        assert np.abs(depth - rows).max() <= a_y / 2 + 0.5 + 1e-4, mode


@given(height=sizes, width=sizes, network=network_sizes, stride=st.sampled_from([4, 8, 32]))
# Letterboxes whose valid grid has the original image's own size along an axis at a scale just above 1, where
# F.interpolate copies instead of resampling (a quarter-pixel drift across the first one before the fix).
@example(height=2, width=59, network=(31, 235), stride=4)
@example(height=1, width=2, network=(8, 11), stride=8)
def test_predictor_dense_maps_round_trip_exactly(height, width, network, stride):
    box = fit_letterbox(height, width, network)
    grid_h, grid_w = box.padded_height // stride, box.padded_width // stride
    a_y, a_x = height / box.resized_height, width / box.resized_width
    # Each cell holds the original-pixel coordinate of its centre: (i + 1/2) * stride network px -> original px.
    xs = (np.arange(grid_w) + 0.5) * stride * a_x - 0.5
    ys = (np.arange(grid_h) + 0.5) * stride * a_y - 0.5
    grid = np.stack([np.broadcast_to(xs, (grid_h, grid_w)), np.broadcast_to(ys[:, None], (grid_h, grid_w))])
    grid = grid.astype(np.float32)
    out = dense_to_original(torch.from_numpy(grid)[None], box)[0].numpy()
    assert out.shape == (2, height, width)
    np.testing.assert_allclose(dense_to_original_numpy(grid, box), out, atol=1e-3 * max(1.0, a_x, a_y))
    # Valid cells hold image pixels; beyond the last one only padding, which must not be sampled.
    valid_w = -(-box.resized_width // stride)
    valid_h = -(-box.resized_height // stride)
    col, row = np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64)
    err_x, err_y = np.abs(out[0] - col[None]), np.abs(out[1] - row[:, None])
    inner_x = (col >= xs[0]) & (col <= xs[valid_w - 1])
    inner_y = (row >= ys[0]) & (row <= ys[valid_h - 1])
    assert err_x[:, inner_x].max(initial=0) <= 1e-3 * max(1.0, width / 100)
    assert err_y[inner_y].max(initial=0) <= 1e-3 * max(1.0, height / 100)
    assert err_x.max() <= stride * a_x / 2 + 1e-3 and err_y.max() <= stride * a_y / 2 + 1e-3
