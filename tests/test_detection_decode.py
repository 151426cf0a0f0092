"""Detection decoding: only the candidates kept by the threshold and the top-k get boxes, with exactly the
answer of decoding every location first (the old path, re-implemented here as the reference), in PyTorch and
in the numpy path of ONNX callers."""
import numpy as np
import pytest
import torch

from perception.ops.boxes import ltrb_to_boxes
from perception.tasks.detection.decode import (fcos_postprocess, fcos_postprocess_numpy,
                                               topk_stable_numpy)
from perception.tasks.detection.head import make_points

SIZES = [(6, 8), (3, 4), (2, 2)]          # three levels of a 48x64 input
STRIDES = (8, 16, 32)
IMAGE = (48, 64)


def _outputs(seed: int, classes: int = 3, step: float = 0.0, silent_image: int | None = None) -> dict:
    """Head outputs of a batch of 2; ``step`` > 0 rounds the logits to create tied scores; ``silent_image``
    gets logits far below any threshold."""
    g = torch.Generator().manual_seed(seed)
    a = sum(h * w for h, w in SIZES)
    cls = torch.randn(2, a, classes, generator=g) * 2
    ctr = torch.randn(2, a, generator=g)
    if step:
        cls, ctr = (cls / step).round() * step, (ctr / step).round() * step
    if silent_image is not None:
        cls[silent_image] = -30.0
    points, _ = make_points(SIZES, STRIDES, torch.device("cpu"))
    ltrb = torch.rand(2, a, 4, generator=g) * 40 + 0.5
    return {"cls_logits": cls, "box_regression": ltrb, "centerness": ctr, "points": points,
            "num_per_level": tuple(h * w for h, w in SIZES)}


def _reference(out: dict, thresh: float, nms: float, topk: int, per_img: int) -> list[dict]:
    """Every location's box decoded first, then threshold, per-level top-k and NMS (the benchmark's baseline)."""
    from perception.benchmark.postprocess import detection_reference

    return detection_reference(out, IMAGE, thresh, topk, nms, per_img)


CASES = [  # (seed, thresh, topk, detections per image, step, silent image)
    (0, 0.3, 1000, 100, 0.0, None),   # fewer candidates than the top-k everywhere
    (1, 0.2, 4, 100, 0.0, None),      # more candidates than the top-k on every level
    (2, 0.2, 7, 5, 0.5, None),        # tied scores, top-k and detections per image both cut
    (3, 0.3, 5, 100, 0.0, 1),         # the second image has no candidate
    (4, 0.999, 5, 100, 0.0, None),    # no candidate in the batch
]


@pytest.mark.parametrize("seed,thresh,topk,per_img,step,silent", CASES)
def test_torch_decode_equals_decoding_every_location(seed, thresh, topk, per_img, step, silent):
    out = _outputs(seed, step=step, silent_image=silent)
    got = fcos_postprocess(out["cls_logits"], out["box_regression"], out["centerness"], out["points"],
                           out["num_per_level"], IMAGE, thresh, 0.5, topk, per_img)
    expected = _reference(out, thresh, 0.5, topk, per_img)
    assert len(got) == 2
    for g, e in zip(got, expected):
        for key in ("boxes", "scores", "labels"):
            assert g[key].dtype == e[key].dtype
            torch.testing.assert_close(g[key], e[key], rtol=0, atol=0)
    counts = [len(e["scores"]) for e in expected]
    if silent is not None:
        assert counts[silent] == 0 and counts[1 - silent] > 0
    if thresh > 0.99:
        assert counts == [0, 0] and got[0]["boxes"].shape == (0, 4)
    if topk < 10 and thresh < 0.99:
        assert max(counts) > 0


def test_torch_decode_under_bfloat16_outputs_equals_the_reference():
    out = _outputs(5)
    out = {**out, "cls_logits": out["cls_logits"].bfloat16(), "box_regression": out["box_regression"].bfloat16()}
    got = fcos_postprocess(out["cls_logits"], out["box_regression"], out["centerness"], out["points"],
                           out["num_per_level"], IMAGE, 0.25, 0.5, 6, 100)
    for g, e in zip(got, _reference(out, 0.25, 0.5, 6, 100)):
        torch.testing.assert_close(g["boxes"], e["boxes"], rtol=0, atol=0)
        torch.testing.assert_close(g["labels"], e["labels"], rtol=0, atol=0)


def _numpy_reference(boxes, scores, num_per_level, thresh, nms, topk, per_img):
    """The numpy decode with a full stable sort per level and a full NMS (the postprocess benchmark's baseline)."""
    from perception.benchmark.postprocess import detection_numpy_reference

    return detection_numpy_reference(boxes, scores, num_per_level, IMAGE, thresh, topk, nms, per_img)


@pytest.mark.parametrize("seed,thresh,topk,per_img,step,silent", CASES)
def test_numpy_decode_equals_full_sort_and_full_nms(seed, thresh, topk, per_img, step, silent):
    out = _outputs(seed, step=step, silent_image=silent)
    boxes = ltrb_to_boxes(out["points"].unsqueeze(0), out["box_regression"]).numpy()
    scores = torch.sqrt(out["cls_logits"].sigmoid() * out["centerness"].sigmoid()[..., None]).numpy()
    for i in range(2):
        got = fcos_postprocess_numpy(boxes[i], scores[i], out["num_per_level"], IMAGE, thresh, 0.5, topk, per_img)
        expected = _numpy_reference(boxes[i], scores[i], out["num_per_level"], thresh, 0.5, topk, per_img)
        for g, e in zip(got, expected):
            assert g.dtype == e.dtype
            np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize("k", [1, 3, 9, 10, 50])
def test_topk_stable_is_the_first_k_of_a_stable_sort(k):
    values = np.random.default_rng(k).integers(0, 4, 20).astype(np.float32)   # many ties
    np.testing.assert_array_equal(topk_stable_numpy(values, k), np.argsort(-values, kind="stable")[:k])
