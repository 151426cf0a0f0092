"""ONNX export of the network with one named output per head, and its check against PyTorch with onnxruntime.

The graph takes ``images`` (float32 [B, 3, H, W], RGB 0..255, H and W multiples of 32; the network normalises
inside) and returns, for the tasks exported:

- ``detection_boxes`` [B, A, 4]: the box of every location (xyxy, network pixels), levels P3..P7 concatenated;
- ``detection_scores`` [B, A, C]: sqrt(sigmoid(class logit) * sigmoid(centerness));
- ``segmentation`` [B, K, H/4, W/4]: class logits;
- ``depth`` [B, 1, H/4, W/4]: metres.

Thresholding, top-k and NMS stay outside the graph (their output size depends on the data): the caller runs
:func:`perception.inference.postprocess_numpy.postprocess_numpy`, a numpy reference that matches torchvision.
The batch, height and width axes are dynamic. The exporter tried first is ``torch.onnx.export(dynamo=True)``
(torch.export); the TorchScript-based exporter is the fallback.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from perception.ops.boxes import ltrb_to_boxes


class ExportModule(nn.Module):
    """The network with plain tensor outputs in a fixed order, as exported.

    Args:
        model: a MultiTaskModel.
        tasks: the heads to export (default: all of the model's), in the model's order.
    """

    def __init__(self, model: nn.Module, tasks: Sequence[str] | None = None) -> None:
        super().__init__()
        self.model = model.eval()
        self.tasks = [t for t in model.tasks if tasks is None or t in tasks]
        if not self.tasks:
            raise ValueError(f"tasks: got {list(tasks or [])}, none of which the model has ({model.tasks})")

    @property
    def output_names(self) -> list[str]:
        names = []
        for task in self.tasks:
            names += ["detection_boxes", "detection_scores"] if task == "detection" else [task]
        return names

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        outputs = self.model(images, tasks=self.tasks)
        results = []
        for task in self.tasks:
            out = outputs[task]
            if task == "detection":
                results.append(ltrb_to_boxes(out["points"].unsqueeze(0), out["box_regression"]))
                results.append(torch.sqrt(torch.sigmoid(out["cls_logits"])
                                          * torch.sigmoid(out["centerness"]).unsqueeze(-1)))
            elif task == "segmentation":
                results.append(out)
            else:
                head = self.model.heads["depth"]
                results.append(torch.exp(head.log_depth(out)).clamp(head.min_depth, head.max_depth))
        return tuple(results)


@dataclass
class ExportResult:
    """What :func:`export_onnx` produced: the file, the exporter that worked and the output names."""

    path: Path
    exporter: str
    output_names: list[str]
    dynamic: bool


def export_onnx(model: nn.Module, path: str | os.PathLike, image_size: Sequence[int] = (512, 1024),
                tasks: Sequence[str] | None = None, opset: int = 18, dynamic: bool = True,
                exporter: str = "auto") -> ExportResult:
    """Export the network to ONNX.

    Args:
        model: a MultiTaskModel (on the CPU).
        path: the ``.onnx`` file to write.
        image_size: (H, W) of the example input (multiples of 32).
        tasks: the heads to export (default all).
        opset: ONNX opset (>= 17).
        dynamic: dynamic batch, height and width axes.
        exporter: ``dynamo`` (torch.export), ``torchscript``, or ``auto`` (dynamo, then torchscript).

    Returns:
        :class:`ExportResult`.
    """
    if opset < 17:
        raise ValueError(f"opset: got {opset}, expected >= 17")
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise ValueError(f"exporter: got {exporter!r}, expected auto, dynamo or torchscript")
    height, width = (int(s) for s in image_size)
    if height % 32 or width % 32:
        raise ValueError(f"image_size: got {height}x{width}, expected multiples of 32")
    module = ExportModule(model.cpu().eval(), tasks)
    # A batch of 2 and at least 256 x 256, so that no axis is traced at size 1 (torch.export would fix it).
    example = torch.full((2, 3, max(height, 256), max(width, 256)), 128.0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = module.output_names
    errors = []
    for name in (["dynamo", "torchscript"] if exporter == "auto" else [exporter]):
        try:
            _export(module, example, path, names, opset, dynamic, name)
            return ExportResult(path, name, names, dynamic)
        except Exception as err:  # the exporters raise many types; the next one may still work
            errors.append(f"{name}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    raise RuntimeError("ONNX export failed: " + " | ".join(errors))


def _export(module: nn.Module, example: Tensor, path: Path, names: list[str], opset: int, dynamic: bool,
            exporter: str) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            shapes = None
            if dynamic:
                # H and W are multiples of 32 (the pyramid needs them): declare them as 32 * k.
                batch = torch.export.Dim("batch", min=1, max=256)
                rows, cols = torch.export.Dim("rows", min=1, max=128), torch.export.Dim("cols", min=1, max=128)
                shapes = {"images": {0: batch, 2: 32 * rows, 3: 32 * cols}}
            program = torch.onnx.export(module, (example,), dynamic_shapes=shapes, input_names=["images"],
                                        output_names=names, opset_version=opset, dynamo=True, external_data=False,
                                        verbose=False)
            program.save(str(path))
        else:
            axes = None
            if dynamic:
                axes = {"images": {0: "batch", 2: "height", 3: "width"}}
                axes.update({n: {0: "batch"} for n in names})
            torch.onnx.export(module, (example,), str(path), input_names=["images"], output_names=names,
                              opset_version=opset, dynamic_axes=axes, dynamo=False)


def onnx_session(path: str | os.PathLike):
    """An onnxruntime CPU session of an exported file."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def compare_with_torch(path: str | os.PathLike, model: nn.Module, images: np.ndarray,
                       tasks: Sequence[str] | None = None) -> dict[str, float]:
    """Run the ONNX file with onnxruntime and the network with PyTorch on the same batch.

    Args:
        images (ndarray[B, 3, H, W]): float32 RGB 0..255 (H, W multiples of 32).

    Returns:
        output name -> max abs difference.
    """
    module = ExportModule(model.cpu().eval(), tasks)
    session = onnx_session(path)
    names = [o.name for o in session.get_outputs()]
    ort_out = dict(zip(names, session.run(None, {"images": images.astype(np.float32)})))
    with torch.no_grad():
        torch_out = dict(zip(module.output_names, module(torch.from_numpy(images.astype(np.float32)))))
    missing = set(torch_out) ^ set(ort_out)
    if missing:
        raise ValueError(f"{path}: outputs {sorted(ort_out)} do not match the network's {sorted(torch_out)}")
    return {name: float(np.abs(ort_out[name] - torch_out[name].numpy()).max()) for name in torch_out}


def export_torchscript(model: nn.Module, path: str | os.PathLike, image_size: Sequence[int] = (512, 1024),
                       tasks: Sequence[str] | None = None) -> Path:
    """Trace the network (the same outputs as the ONNX graph, in the same order) to a TorchScript file.

    The trace keeps the input size symbolic, so the file runs at any size that is a multiple of 32; load it with
    ``torch.jit.load(path)`` (no Python source of this package needed).
    """
    height, width = (int(s) for s in image_size)
    module = ExportModule(model.cpu().eval(), tasks)
    example = torch.full((2, 3, max(height, 256), max(width, 256)), 128.0)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, (example,), check_trace=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    traced.save(str(path))
    return path
