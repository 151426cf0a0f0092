"""ONNX export of the network with named outputs per task, the metadata to decode them, and the check against
PyTorch with onnxruntime.

The graph takes ``images`` (float32 [B, 3, H, W], RGB 0..255, H and W multiples of 32; the network normalises
inside) and returns, for every task exported, the outputs of its type's ``Task.export_outputs``, named
``<task>__<output>``; for the shipped types:

- a detection task ``objects``: ``objects__boxes`` [B, A, 4] (the box of every location, xyxy network pixels,
  levels P3..P7 concatenated) and ``objects__scores`` [B, A, C] (sqrt(sigmoid(class logit) *
  sigmoid(centerness)));
- a segmentation task ``semantic``: ``semantic__logits`` [B, K, H/4, W/4];
- a depth task ``depth``: ``depth__depth`` [B, 1, H/4, W/4], metres.

Thresholding, top-k and NMS stay outside the graph (their output size depends on the data): each type's
``Task.decode_numpy`` is the numpy reference (:func:`perception.inference.postprocess_numpy.postprocess_numpy`
runs them all). The file carries what a caller needs to rebuild the tasks and decode without this package's
checkpoint: the metadata entry ``perception`` (JSON: every task's name, type, label and settings, class names
included; the output names of each task; what the decode needs of the built heads; the network size),
read back by :func:`read_metadata`. The batch, height and width axes are dynamic. The exporter tried first is
``torch.onnx.export(dynamo=True)`` (torch.export); the TorchScript-based exporter is the fallback.
"""
from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from perception.inference.loading import select_tasks
from perception.tasks import Task, build_tasks, tasks_to_spec

METADATA_KEY = "perception"
METADATA_FORMAT = 1
SEPARATOR = "__"  # between the task name and its output's name (task names are identifiers without "__")


def output_name(task: str, output: str) -> str:
    """The graph's name of output ``output`` of task ``task``."""
    return f"{task}{SEPARATOR}{output}"


class ExportModule(nn.Module):
    """The network with plain tensor outputs in a fixed order, as exported.

    Args:
        model: a MultiTaskModel.
        tasks: the names of the tasks to export (default: all of the model's), in the model's order.
    """

    def __init__(self, model: nn.Module, tasks: Sequence[str] | None = None) -> None:
        super().__init__()
        self.model = model.eval()
        specs: dict[str, Task] = dict(model.task_specs)
        names = list(specs) if tasks is None else select_tasks(tasks, list(specs), "this model")
        self.tasks: dict[str, Task] = {name: specs[name] for name in names}
        device = next(model.parameters()).device
        with torch.no_grad():  # the output names of each task, from one tiny forward pass
            probe = self._task_outputs(torch.zeros(1, 3, 64, 64, device=device))
        self.outputs: dict[str, list[str]] = {name: list(outs) for name, outs in probe.items()}

    @property
    def output_names(self) -> list[str]:
        return [output_name(task, out) for task, outs in self.outputs.items() for out in outs]

    def _task_outputs(self, images: Tensor) -> dict[str, dict[str, Tensor]]:
        outputs = self.model(images, tasks=list(self.tasks))
        return {name: task.export_outputs(self.model.heads[name], outputs[name]) for name, task in self.tasks.items()}

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        outputs = self._task_outputs(images)
        return tuple(outputs[task][out] for task, outs in self.outputs.items() for out in outs)

    def metadata(self, image_size: Sequence[int]) -> dict[str, Any]:
        """What :func:`read_metadata` gives back: enough to rebuild the tasks and decode every output."""
        return {"format": METADATA_FORMAT, "input": "images", "image_size": [int(s) for s in image_size],
                "size_divisor": 32, "tasks": tasks_to_spec(self.tasks),
                "outputs": {name: [output_name(name, o) for o in outs] for name, outs in self.outputs.items()},
                "decode": {name: task.export_metadata(self.model.heads[name]) for name, task in self.tasks.items()}}


@dataclass
class ExportResult:
    """What :func:`export_onnx` produced: the file, the exporter that worked, the output names and the metadata
    written into the file."""

    path: Path
    exporter: str
    output_names: list[str]
    dynamic: bool
    metadata: dict[str, Any]


def export_onnx(model: nn.Module, path: str | os.PathLike, image_size: Sequence[int] = (512, 1024),
                tasks: Sequence[str] | None = None, opset: int = 18, dynamic: bool = True,
                exporter: str = "auto") -> ExportResult:
    """Export the network to ONNX.

    Args:
        model: a MultiTaskModel (on the CPU).
        path: the ``.onnx`` file to write.
        image_size: (H, W) of the example input (multiples of 32).
        tasks: the names of the tasks to export (default all).
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
    metadata = module.metadata((height, width))
    for name in (["dynamo", "torchscript"] if exporter == "auto" else [exporter]):
        try:
            _export(module, example, path, names, opset, dynamic, name)
            write_metadata(path, metadata)
            return ExportResult(path, name, names, dynamic, metadata)
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


def write_metadata(path: str | os.PathLike, metadata: Mapping[str, Any]) -> None:
    """Store ``metadata`` (JSON) in the ONNX file's ``metadata_props`` under ``perception``."""
    import onnx

    graph = onnx.load(str(path))
    for prop in list(graph.metadata_props):
        if prop.key == METADATA_KEY:
            graph.metadata_props.remove(prop)
    entry = graph.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    onnx.save(graph, str(path))


def read_metadata(source: Any) -> dict[str, Any]:
    """The metadata :func:`export_onnx` wrote, from a path or an onnxruntime ``InferenceSession``.

    Raises:
        ValueError: the file has no such metadata (not exported by this toolkit), naming it.
    """
    if isinstance(source, (str, os.PathLike)):
        source = onnx_session(source)
    props = source.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in props:
        raise ValueError(f"ONNX file: no {METADATA_KEY!r} metadata; export it with tools/export.py (or "
                         "perception.inference.export.export_onnx) to decode its outputs")
    metadata = json.loads(props[METADATA_KEY])
    if metadata.get("format", 0) > METADATA_FORMAT:
        raise ValueError(f"ONNX file: metadata format {metadata.get('format')} is newer than this toolkit reads "
                         f"({METADATA_FORMAT}); upgrade perception")
    return metadata


def tasks_from_metadata(metadata: Mapping[str, Any]) -> dict[str, Task]:
    """The task instances of an exported file (names, types, labels, settings, class names)."""
    return build_tasks(metadata["tasks"])


def onnx_session(path: str | os.PathLike, threads: int | None = None):
    """An onnxruntime CPU session of an exported file (``threads``: intra-op threads; None: onnxruntime's
    default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def compare_with_torch(path: str | os.PathLike, model: nn.Module, images: np.ndarray,
                       tasks: Sequence[str] | None = None) -> dict[str, float]:
    """Run the ONNX file with onnxruntime and the network with PyTorch on the same batch.

    Args:
        path: the exported file.
        model: the network it was exported from.
        images (ndarray[B, 3, H, W]): float32 RGB 0..255 (H, W multiples of 32).
        tasks: the task names that were exported (default all).

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
