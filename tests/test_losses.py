"""Task losses and FCOS target assignment against hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from perception.data import collate
from perception.tasks.depth.loss import l1_log_loss, silog_loss
from perception.tasks.segmentation.loss import semantic_cross_entropy
from perception.ops.boxes import boxes_to_ltrb
from perception.tasks.detection.loss import centerness_target, fcos_losses
from perception.tasks.detection.head import fcos_assign, make_points, pad_targets


def test_silog_matches_hand_computation_and_ignores_invalid_pixels():
    gt = torch.tensor([[[1.0, 1.0, 0.0]]])                  # third pixel: no measurement
    pred_log = torch.log(torch.tensor([[[2.0, 4.0, 123.0]]]))
    d = [math.log(2.0), math.log(4.0)]
    mean_d, mean_d2 = sum(d) / 2, sum(x * x for x in d) / 2
    expected = 10 * math.sqrt(mean_d2 - 0.85 * mean_d ** 2)
    assert silog_loss(pred_log, gt, lam=0.85, scale=10.0).item() == pytest.approx(expected, rel=1e-6)
    assert l1_log_loss(pred_log, gt).item() == pytest.approx(sum(d) / 2, rel=1e-6)


def test_silog_is_scale_invariant_at_lambda_one_and_averages_per_image():
    torch.manual_seed(0)
    gt = torch.rand(2, 5, 7) * 20 + 1
    pred_log = torch.randn(2, 5, 7)
    base = silog_loss(pred_log, gt, lam=1.0)
    assert silog_loss(pred_log + 3.0, gt, lam=1.0).item() == pytest.approx(base.item(), rel=1e-4)
    per_image = [silog_loss(pred_log[i:i + 1], gt[i:i + 1]).item() for i in range(2)]
    assert silog_loss(pred_log, gt).item() == pytest.approx(sum(per_image) / 2, rel=1e-6)
    # An image without depth does not count in the mean.
    gt_partial = gt.clone()
    gt_partial[1] = 0
    assert silog_loss(pred_log, gt_partial).item() == pytest.approx(per_image[0], rel=1e-6)


@pytest.mark.parametrize("loss_fn", [silog_loss, l1_log_loss])
def test_depth_losses_without_valid_pixels_are_exactly_zero_with_finite_gradients(loss_fn):
    pred_log = torch.randn(2, 4, 4, requires_grad=True)
    loss = loss_fn(pred_log, torch.zeros(2, 4, 4))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(pred_log.grad).all() and (pred_log.grad == 0).all()


def test_semantic_cross_entropy_upsamples_ignores_255_and_is_zero_without_labels():
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 1] = 5.0                                        # class 1 everywhere
    target = torch.full((1, 4, 4), 1, dtype=torch.int64)
    target[0, 0, 0] = 255
    target[0, 3, 3] = 0
    p1 = math.exp(5) / (math.exp(5) + 2)
    p0 = 1 / (math.exp(5) + 2)
    expected = (14 * -math.log(p1) + -math.log(p0)) / 15
    assert semantic_cross_entropy(logits, target).item() == pytest.approx(expected, rel=1e-5)

    logits.requires_grad_(True)
    loss = semantic_cross_entropy(logits, torch.full((1, 4, 4), 255, dtype=torch.int64))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_centerness_target():
    ltrb = torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 5.0, 2.0, 5.0]])
    assert torch.allclose(centerness_target(ltrb), torch.tensor([1 / 3, 1.0]))


def _two_level_points():
    # Level 0: stride 8, 8x8 locations (range 0..64); level 1: stride 16, 4x4 locations (range 64..inf).
    points, strides = make_points([(8, 8), (4, 4)], [8, 16], torch.device("cpu"))
    return points, strides, (64, 16)


def test_fcos_assignment_inside_near_centre_in_range_and_smallest_box_wins():
    points, strides, num_per_level = _two_level_points()
    small = [0, 0, 20, 20]        # centre (10, 10): positives (4|12, 4|12) on level 0
    medium = [0, 0, 40, 40]       # centre (20, 20): positives (12|20|28, 12|20|28) on level 0
    large = [0, 0, 128, 128]      # centre (64, 64): too large for level 0 (max distance > 64), level 1 at (56, 56)
    boxes, labels, valid = pad_targets([torch.tensor([small, medium, large], dtype=torch.float32)],
                                       [torch.tensor([0, 1, 2])], torch.device("cpu"))
    matched, positive = fcos_assign(points, strides, num_per_level, boxes, valid, 1.5)

    got = {(tuple(points[a].tolist()), int(strides[a]), int(matched[0, a])) for a in torch.nonzero(positive[0])[:, 0]}
    expected = set()
    for x in (4, 12):
        for y in (4, 12):
            expected.add(((x, y), 8, 0))
    for x in (12, 20, 28):
        for y in (12, 20, 28):
            if (x, y) != (12, 12):    # (12, 12) is also inside the smaller box: the smallest wins
                expected.add(((x, y), 8, 1))
    expected.add(((56, 56), 16, 2))
    expected = {((float(p[0]), float(p[1])), s, m) for p, s, m in expected}
    assert got == expected


def test_fcos_assignment_respects_padding_and_unlabelled_images():
    points, strides, num_per_level = _two_level_points()
    boxes, labels, valid = pad_targets([torch.tensor([[0, 0, 20, 20]], dtype=torch.float32), torch.zeros(0, 4)],
                                       [torch.tensor([0]), torch.zeros(0, dtype=torch.int64)], torch.device("cpu"))
    assert boxes.shape == (2, 1, 4) and valid.tolist() == [[True], [False]]
    _, positive = fcos_assign(points, strides, num_per_level, boxes, valid, 1.5)
    assert positive[0].sum() == 4 and positive[1].sum() == 0


def test_fcos_losses_vanish_for_perfect_boxes_and_are_zero_without_labels():
    points, strides, num_per_level = _two_level_points()
    gt = torch.tensor([[0, 0, 20, 20]], dtype=torch.float32)
    boxes, labels, valid = pad_targets([gt], [torch.tensor([1])], torch.device("cpu"))
    matched, positive = fcos_assign(points, strides, num_per_level, boxes, valid, 1.5)
    gt_boxes = boxes[0, matched[0]].unsqueeze(0)
    perfect = boxes_to_ltrb(points, gt_boxes[0]).clamp(min=0).unsqueeze(0)
    cls_logits = torch.full((1, len(points), 3), -20.0)
    cls_logits[0, positive[0], 1] = 20.0
    ctr_target = centerness_target(boxes_to_ltrb(points, gt_boxes[0]))
    ctr_logits = torch.logit(ctr_target.clamp(1e-4, 1 - 1e-4)).unsqueeze(0)
    losses = fcos_losses(cls_logits, perfect, ctr_logits, points, labels[0, matched[0]].unsqueeze(0), gt_boxes,
                         positive, torch.tensor([True]))
    assert losses["cls"].item() < 1e-6
    assert losses["box"].item() < 1e-5
    # BCE at its optimum equals the entropy of the targets.
    entropy = -(ctr_target * ctr_target.log() + (1 - ctr_target) * (1 - ctr_target).clamp(min=1e-12).log())
    assert losses["ctr"].item() == pytest.approx(entropy[positive[0]].sum().item() / 4, abs=1e-3)

    logits = torch.randn(1, len(points), 3, requires_grad=True)
    losses = fcos_losses(logits, perfect, ctr_logits, points, torch.zeros(1, len(points), dtype=torch.int64),
                         gt_boxes, torch.zeros_like(positive), torch.tensor([False]))
    total = sum(losses.values())
    total.backward()
    assert total.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_collate_pads_to_stride_with_ignore_values_and_marks_labels():
    rng = np.random.default_rng(0)
    a = {"image": rng.integers(0, 255, (50, 70, 3), dtype=np.uint8), "semantic": np.ones((50, 70), np.int64),
         "depth": np.full((50, 70), 2.0, np.float32)}
    b = {"image": rng.integers(0, 255, (40, 90, 3), dtype=np.uint8),
         "boxes": np.array([[1, 2, 30, 20]], np.float32), "labels": np.array([3])}
    batch = collate([a, b])
    assert batch.images.shape == (2, 3, 64, 96) and batch.images.dtype == torch.uint8
    assert torch.equal(batch.images[0, :, :50, :70], torch.from_numpy(a["image"]).permute(2, 0, 1))
    assert (batch.images[0, :, 50:] == 0).all() and (batch.images[1, :, :, 90:] == 0).all()
    semantic, depth, det = batch.targets["segmentation"], batch.targets["depth"], batch.targets["detection"]
    assert (semantic[0, :50, :70] == 1).all() and (semantic[0, 50:] == 255).all()
    assert (semantic[1] == 255).all() and (depth[1] == 0).all()
    assert (depth[0, :50, :70] == 2).all() and (depth[0, :, 70:] == 0).all()
    assert batch.has["segmentation"].tolist() == [True, False]
    assert batch.has["detection"].tolist() == [False, True]
    assert batch.present() == {"detection": True, "segmentation": True, "depth": True}
    assert det["boxes"][0].shape == (0, 4) and det["labels"][1].tolist() == [3]


def test_box_regression_recovers_from_strongly_negative_outputs():
    """The regression is exp(x), not ReLU(x): pushed far below zero it still gets a gradient and grows back."""
    from perception.tasks.detection import FCOSHead

    torch.manual_seed(0)
    head = FCOSHead(8, num_classes=2, strides=(8, 16), num_convs=1)
    torch.nn.init.zeros_(head.box_pred.weight)
    torch.nn.init.constant_(head.box_pred.bias, -6.0)       # every distance e^-6 strides: a "dead" start
    features = [torch.randn(1, 8, 8, 8), torch.randn(1, 8, 4, 4)]
    boxes, labels = [torch.tensor([[8.0, 8.0, 40.0, 40.0]])], [torch.tensor([1])]
    optimizer = torch.optim.Adam([head.box_pred.bias], lr=0.2)
    first = None
    for _ in range(80):
        losses = head.compute_loss(head(features), boxes, labels, torch.tensor([True]))
        first = float(losses["box"]) if first is None else first
        optimizer.zero_grad()
        losses["box"].backward()
        assert head.box_pred.bias.grad.abs().sum() > 0
        optimizer.step()
    assert first > 0.9 and float(losses["box"]) < 0.5
