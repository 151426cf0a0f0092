"""Post-processing at a photo's size: segmentation ids, depth and detection boxes, today's path against the
reference it replaces, in one run (PyTorch and the numpy path of ONNX callers).

    python tools/benchmark.py postprocess --photo 480x640 --network 480x640 --classes 19

- segmentation, reference: the K logits resized to the photo (``dense_to_original``), arg-max there;
  ours, ``bilinear``: ``argmax_to_original`` (arg-max on the head's grid, K logits blended only at class
  boundaries); ours, ``nearest`` (the Predictor's default): the grid's arg-max resized by nearest neighbour
  (``ids_to_original``);
- depth, reference: the raw map resized, then log-depth, exp and clamp at full size; ours: clamped on the grid in
  log space, resized once (OpenCV's bilinear resize with the exact scales, on the host for both backends),
  exponentiated in place.

- detection, reference: every location's box decoded, then threshold, per-level top-k (numpy: a full sort) and
  NMS to the end; ours: threshold and top-k first (numpy: a partial selection), boxes of the kept candidates
  only, NMS stopped at ``detections_per_img``. Two regimes of generated head outputs: ``random`` (an untrained
  head, every score just above ``--score-thresh`` 0.05, so the top-k and NMS are full) and ``peaked`` (a few
  hundred locations above the 0.3 threshold, like a trained one).

With ``--checkpoint`` (repeatable: one per seed), the two class-id decodes are also scored against the truth:
``--scenes`` validation scenes of the synthetic benchmark drawn at ``--photo`` size go through the Predictor of
each checkpoint (at its trained network size unless ``--network`` is given) with ``upsample`` nearest and
bilinear, and the mIoU and pixel accuracy of each at the photo's own pixels are reported per checkpoint and as
mean +- std over the checkpoints, with the share of pixels where the two decodes agree:

    python tools/benchmark.py postprocess --photo 320x640 --checkpoint runs/n0/last.pt --checkpoint runs/n1/last.pt

The logits are those of a generated street scene (soft one-hot of its classes per stride-4 cell, plus noise), so
the share of boundary pixels is a real picture's; ``agreement`` is the share of pixels where ours equals the
reference.
"""
from __future__ import annotations

import argparse
import math

import numpy as np
import torch
import torch.nn.functional as F

from perception.benchmark.common import machine_info, print_table, time_fn, write_json
from perception.benchmark.predictor import parse_size
from perception.ops.boxes import ltrb_to_boxes
from perception.ops.geometry import (argmax_to_original, argmax_to_original_numpy, dense_to_original,
                                     dense_to_original_numpy, fit_letterbox, ids_to_original)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--photo", default="480x640", help="photo size HxW")
    parser.add_argument("--network", default="",
                        help="network size HxW (default: 480x640 for the timings, a checkpoint's own size for "
                             "the accuracy)")
    parser.add_argument("--classes", type=int, default=19)
    parser.add_argument("--det-classes", type=int, default=8, help="detection classes")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    parser.add_argument("--json", default="", help="write the results here")
    parser.add_argument("--checkpoint", action="append", default=[],
                        help="score both class-id decodes of this trained model against the truth (repeatable)")
    parser.add_argument("--scenes", type=int, default=32, help="validation scenes scored per checkpoint")


def scene_logits(photo: tuple[int, int], box, classes: int) -> torch.Tensor:
    """Tensor[K, h, w] stride-4 logits of a generated street scene fitted into ``box``."""
    from perception.data.synthetic import generate_scene

    semantic = generate_scene(index=0, split="val", height=photo[0], width=photo[1])["semantic"]
    ids = torch.from_numpy(semantic.astype(np.int64)).clamp(max=classes - 1)
    one_hot = F.one_hot(ids, classes).permute(2, 0, 1)[None].float()
    padded = torch.zeros(1, classes, *box.padded_size)
    padded[..., :box.resized_height, :box.resized_width] = F.interpolate(one_hot, size=box.resized_size,
                                                                         mode="nearest")
    logits = F.avg_pool2d(padded, 4) * 4
    return (logits + 0.3 * torch.randn(logits.shape, generator=torch.Generator().manual_seed(0)))[0]


def head_outputs(padded: tuple[int, int], classes: int, regime: str) -> dict:
    """Generated FCOS head outputs (batch 1) of a ``padded`` input: ``random`` (an untrained head's scores,
    sqrt(0.01 * 0.5) ~ 0.07 everywhere) or ``peaked`` (background with a few hundred confident locations)."""
    from perception.tasks.detection.decode import pyramid_sizes
    from perception.tasks.detection.head import make_points

    sizes = pyramid_sizes(*padded)
    strides = (8, 16, 32, 64, 128)
    g = torch.Generator().manual_seed(2)
    a = sum(h * w for h, w in sizes)
    if regime == "random":
        cls = -4.6 + 0.05 * torch.randn(1, a, classes, generator=g)
        ctr = 0.05 * torch.randn(1, a, generator=g)
    else:
        cls = -6.0 + torch.randn(1, a, classes, generator=g)
        cls[0, torch.randint(0, a, (300,), generator=g), torch.randint(0, classes, (300,), generator=g)] = 3.0
        ctr = torch.randn(1, a, generator=g)
    points, point_strides = make_points(sizes, strides, torch.device("cpu"))
    ltrb = torch.rand(1, a, 4, generator=g) * 4 * point_strides[:, None]
    return {"cls_logits": cls, "box_regression": ltrb, "centerness": ctr, "points": points,
            "num_per_level": tuple(h * w for h, w in sizes)}


def detection_reference(out: dict, size: tuple[int, int], thresh: float, topk: int = 1000, nms: float = 0.6,
                        per_img: int = 100) -> list[dict]:
    """The decode this benchmark compares against: every location's box first, then threshold and top-k."""
    from torchvision.ops import batched_nms, clip_boxes_to_image

    scores_all = torch.sqrt(out["cls_logits"].float().sigmoid() * out["centerness"].float().sigmoid()[..., None])
    boxes_all = ltrb_to_boxes(out["points"].unsqueeze(0), out["box_regression"].float())
    classes = out["cls_logits"].shape[-1]
    results = []
    for scores_img, boxes_img in zip(scores_all, boxes_all):
        kb, ks, kl, start = [], [], [], 0
        for n in out["num_per_level"]:
            s, b = scores_img[start:start + n].flatten(), boxes_img[start:start + n]
            start += n
            keep = torch.nonzero(s > thresh).squeeze(1)
            kept = s[keep]
            if len(keep) > topk:
                kept, order = kept.topk(topk)
                keep = keep[order]
            ks.append(kept)
            kb.append(b[keep // classes])
            kl.append(keep % classes)
        boxes, scores, labels = clip_boxes_to_image(torch.cat(kb), size), torch.cat(ks), torch.cat(kl)
        keep = batched_nms(boxes, scores, labels, nms)[:per_img]
        results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
    return results


def detection_numpy_reference(boxes: np.ndarray, scores: np.ndarray, num_per_level, size, thresh: float,
                              topk: int = 1000, nms: float = 0.6, per_img: int = 100):
    """The numpy decode this benchmark compares against: a full stable sort per level and NMS to the end."""
    from perception.tasks.detection.decode import batched_nms_numpy

    classes = scores.shape[1]
    kb, ks, kl, start = [], [], [], 0
    for n in num_per_level:
        flat = scores[start:start + n].reshape(-1)
        keep = np.flatnonzero(flat > thresh)
        if len(keep) > topk:
            keep = keep[np.argsort(-flat[keep], kind="stable")[:topk]]
        ks.append(flat[keep])
        kb.append(boxes[start:start + n][keep // classes])
        kl.append(keep % classes)
        start += n
    b = np.concatenate(kb).astype(np.float32)
    b[:, 0::2] = b[:, 0::2].clip(0, size[1])
    b[:, 1::2] = b[:, 1::2].clip(0, size[0])
    s, lab = np.concatenate(ks).astype(np.float32), np.concatenate(kl).astype(np.int64)
    keep = batched_nms_numpy(b, s, lab, nms)[:per_img]
    return b[keep], s[keep], lab[keep]


def detection_cases(padded: tuple[int, int], classes: int) -> list[tuple]:
    """(output, backend, reference, ours, same) per regime and backend; ``same()`` says the answers are equal."""
    from perception.tasks.detection.decode import fcos_postprocess, fcos_postprocess_numpy

    cases = []
    for regime, thresh in (("random", 0.05), ("peaked", 0.3)):
        out = head_outputs(padded, classes, regime)
        args = (out["cls_logits"], out["box_regression"], out["centerness"], out["points"], out["num_per_level"])

        def ours(args=args, thresh=thresh):
            return fcos_postprocess(*args, padded, thresh, 0.6, 1000, 100)

        def reference(out=out, thresh=thresh):
            return detection_reference(out, padded, thresh)

        def same(ours=ours, reference=reference) -> float:
            a, b = ours()[0], reference()[0]
            return float(all(torch.equal(a[k], b[k]) for k in ("boxes", "scores", "labels")))

        boxes = ltrb_to_boxes(out["points"], out["box_regression"][0]).numpy()
        scores = torch.sqrt(out["cls_logits"][0].sigmoid() * out["centerness"][0].sigmoid()[:, None]).numpy()
        np_args = (boxes, scores, out["num_per_level"], padded, thresh)

        def np_ours(np_args=np_args):
            return fcos_postprocess_numpy(*np_args[:4], np_args[4], 0.6, 1000, 100)

        def np_reference(np_args=np_args):
            return detection_numpy_reference(*np_args)

        def np_same(np_ours=np_ours, np_reference=np_reference) -> float:
            return float(all(np.array_equal(a, b) for a, b in zip(np_ours(), np_reference())))

        cases.append((f"boxes ({regime})", "torch", reference, ours, same))
        cases.append((f"boxes ({regime})", "numpy", np_reference, np_ours, np_same))
    return cases


def run(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    photo, network = parse_size(args.photo), parse_size(args.network or "480x640")
    box = fit_letterbox(*photo, network)
    logits = scene_logits(photo, box, args.classes)
    logits_np = logits.numpy()
    raw = torch.randn(1, 1, *logits.shape[-2:], generator=torch.Generator().manual_seed(1)) + 2.0
    raw_np = np.exp(raw[0].numpy())
    log_min, log_max = math.log(1e-3), math.log(250.0)

    def depth_reference() -> torch.Tensor:
        return torch.exp(dense_to_original(raw, box)).clamp(1e-3, 250.0)

    def depth_ours() -> np.ndarray:  # the Predictor's: clamped on the grid, fetched, resized on the host
        depth = dense_to_original_numpy(raw.clamp(log_min, log_max)[0].numpy(), box)[0]
        return np.exp(depth, out=depth)

    def depth_numpy_reference() -> np.ndarray:
        return np.exp(dense_to_original_numpy(np.log(np.maximum(raw_np, 1e-6)), box)[0]).astype(np.float32)

    def depth_numpy_ours() -> np.ndarray:
        depth = dense_to_original_numpy(np.log(np.maximum(raw_np, 1e-6, dtype=np.float32)), box)[0]
        return np.exp(depth, out=depth)

    cases = [
        ("class ids", "torch", lambda: dense_to_original(logits[None], box)[0].argmax(0),
         lambda: argmax_to_original(logits, box)),
        ("class ids", "numpy", lambda: dense_to_original_numpy(logits_np, box).argmax(0),
         lambda: argmax_to_original_numpy(logits_np, box)),
        ("class ids, nearest", "torch", lambda: dense_to_original(logits[None], box)[0].argmax(0),
         lambda: ids_to_original(logits.argmax(0).to(torch.uint8).numpy(), box)),
        ("class ids, nearest", "numpy", lambda: dense_to_original_numpy(logits_np, box).argmax(0),
         lambda: ids_to_original(logits_np.argmax(0).astype(np.uint8), box)),
        ("metres", "torch", depth_reference, depth_ours),
        ("metres", "numpy", depth_numpy_reference, depth_numpy_ours),
    ]
    def dense_agreement(reference, ours, ids: bool):
        def agreement() -> float:
            a, b = np.asarray(reference()), np.asarray(ours())
            return float((a == b).mean()) if ids else float(np.isclose(a, b, rtol=1e-4).mean())
        return agreement

    cases = [(*case, dense_agreement(case[2], case[3], case[0].startswith("class ids"))) for case in cases]
    cases += detection_cases(box.padded_size, args.det_classes)
    rows = []
    for output, backend, reference, ours, agreement in cases:
        # Interleaved, so that a change of load on a shared machine hits both alike.
        ref_ms, our_ms = [], []
        for _ in range(3):
            ref_ms.append(time_fn(reference, device, 1, args.repeats)["median_ms"])
            our_ms.append(time_fn(ours, device, 1, args.repeats)["median_ms"])
        rows.append({"output": output, "backend": backend, "reference_ms": float(np.median(ref_ms)),
                     "ours_ms": float(np.median(our_ms)), "ratio": float(np.median(our_ms) / np.median(ref_ms)),
                     "agreement": agreement()})
    print(f"post-processing, photo {args.photo}, network {network[0]}x{network[1]}, {args.classes} classes, "
          f"{args.det_classes} detection classes, ms (median of 3 x {args.repeats}); ratio = ours / reference; "
          "agreement: share of equal pixels (boxes: 1 = identical detections)")
    print_table(rows, ["output", "backend", "reference_ms", "ours_ms", "ratio", "agreement"])
    result = {"benchmark": "postprocess", "machine": machine_info(device),
              "settings": {k: v for k, v in vars(args).items() if not k.startswith("_")}, "rows": rows}
    if args.checkpoint:
        result["accuracy"] = decode_accuracy(args.checkpoint, photo, args.network or None, args.scenes)
    write_json(result, args.json)
    return result


def _confusion(truth: np.ndarray, pred: np.ndarray, classes: int, ignore: int) -> np.ndarray:
    keep = truth != ignore
    if keep.any() and truth[keep].max() >= classes:
        raise ValueError(f"class id {truth[keep].max()} in the truth, the model has {classes} classes: a checkpoint "
                         "of the synthetic benchmark's 19 classes is needed")
    return np.bincount(truth[keep].astype(np.int64) * classes + pred[keep].astype(np.int64),
                       minlength=classes * classes).reshape(classes, classes)


def _scores(confusion: np.ndarray) -> tuple[float, float]:
    """mIoU over the classes present in truth or prediction, and pixel accuracy."""
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - tp
    return float((tp[union > 0] / union[union > 0]).mean()), float(tp.sum() / max(confusion.sum(), 1))


def decode_accuracy(checkpoints, photo: tuple[int, int], network: str | None, scenes: int) -> dict:
    """mIoU and pixel accuracy against the truth of the nearest and bilinear class-id decodes, per checkpoint."""
    from perception.data.synthetic import generate_scene
    from perception.inference.predictor import Predictor

    modes = ("nearest", "bilinear")
    per_checkpoint = []
    for path in checkpoints:
        predictors = {mode: Predictor.from_checkpoint(path, device="cpu",
                                                      image_size=parse_size(network) if network else None)
                      for mode in modes}
        for mode, predictor in predictors.items():  # the tasks that take the option: the class maps
            try:
                names = predictor.set_option("upsample", mode)
            except ValueError as err:
                raise ValueError(f"{path}: no class-map task to score ({err})") from None
        task = predictors["nearest"].tasks[names[0]]
        classes, ignore = task.cfg.num_classes, task.cfg.ignore_index
        confusion = {mode: np.zeros((classes, classes), np.int64) for mode in modes}
        same = total = 0
        for index in range(scenes):
            scene = generate_scene(index, split="val", height=photo[0], width=photo[1])
            ids = {mode: predictors[mode](scene["image"])[names[0]]["semantic"] for mode in modes}
            for mode in modes:
                confusion[mode] += _confusion(scene["semantic"], ids[mode], classes, ignore)
            same += int((ids["nearest"] == ids["bilinear"]).sum())
            total += ids["nearest"].size
        row = {"checkpoint": str(path), "agreement": same / total}
        for mode in modes:
            row[f"{mode}_mIoU"], row[f"{mode}_pixel_acc"] = _scores(confusion[mode])
        per_checkpoint.append(row)
    print(f"\nclass ids against the truth: {scenes} synthetic validation scenes at {photo[0]}x{photo[1]}, "
          f"task {names[0]!r}")
    print_table(per_checkpoint, ["checkpoint", "nearest_mIoU", "bilinear_mIoU", "nearest_pixel_acc",
                                 "bilinear_pixel_acc", "agreement"])
    summary = {}
    for key in ("nearest_mIoU", "bilinear_mIoU", "nearest_pixel_acc", "bilinear_pixel_acc", "agreement"):
        values = np.array([row[key] for row in per_checkpoint])
        summary[key] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0}
    diff = np.array([row["nearest_mIoU"] - row["bilinear_mIoU"] for row in per_checkpoint])
    summary["mIoU_difference"] = {"mean": float(diff.mean()),
                                  "std": float(diff.std(ddof=1)) if len(diff) > 1 else 0.0}
    print("mean +- std over the checkpoints: " + "; ".join(
        f"{k} {v['mean']:.4f} +- {v['std']:.4f}" for k, v in summary.items()))
    return {"scenes": scenes, "photo": list(photo), "per_checkpoint": per_checkpoint, "summary": summary}
