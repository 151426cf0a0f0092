"""Post-processing of the exported network's outputs in plain numpy: what an onnxruntime caller runs.

The ONNX graph (:mod:`perception.inference.export`) ends at each task's ``export_outputs``; each task type's
``decode_numpy`` does the rest in numpy (for detection: threshold, per-level top-k, class-wise NMS, with the same
answer as torchvision; for dense maps: the resize to the original image) and maps everything back to the
original image through its letterbox (:mod:`perception.ops.geometry`). The tasks are rebuilt from the metadata the
export wrote into the file, so only the ``.onnx`` file is needed:

    session = onnx_session("model.onnx")
    metadata = read_metadata(session)
    tasks = tasks_from_metadata(metadata)
    padded, letterbox = letterbox_image(image, metadata["image_size"])
    outputs = session.run(None, {"images": padded.transpose(2, 0, 1)[None].astype(np.float32)})
    names = [o.name for o in session.get_outputs()]
    pred = postprocess_numpy({n: o[0] for n, o in zip(names, outputs)}, letterbox, tasks, metadata)
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from perception.inference.export import SEPARATOR
from perception.inference.prediction import Prediction
from perception.ops.geometry import Letterbox


def split_outputs(outputs: Mapping[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """``{"<task>__<output>": array}`` -> ``{task: {output: array}}``."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, value in outputs.items():
        task, sep, short = name.partition(SEPARATOR)
        if not sep:
            raise ValueError(f"output {name!r}: expected <task>{SEPARATOR}<output> (a file exported by this toolkit)")
        out.setdefault(task, {})[short] = value
    return out


def postprocess_numpy(outputs: Mapping[str, np.ndarray], letterbox: Letterbox, tasks: Mapping[str, Any],
                      metadata: Mapping[str, Any] | None = None,
                      options: Mapping[str, Mapping[str, Any]] | None = None) -> Prediction:
    """A :class:`Prediction` at the original image's size from one image's exported outputs.

    Args:
        outputs: one image's slice of the ONNX outputs (no batch axis), by their graph names
            (``<task>__<output>``).
        letterbox: how the image was fitted into the network input (``geometry.letterbox_image``).
        tasks: task name -> :class:`perception.tasks.Task` (``export.tasks_from_metadata``); tasks without
            outputs are skipped.
        metadata: the file's metadata (``export.read_metadata``): what each task's decode needs of the built heads.
        options: task name -> post-processing options (its ``OPTIONS``, e.g. ``{"objects": {"score_thresh":
            0.3}}``).
    """
    per_task = split_outputs(outputs)
    unknown = sorted(set(per_task) - set(tasks))
    if unknown:
        raise ValueError(f"outputs of tasks {unknown}: not among the tasks given ({', '.join(tasks)})")
    decode = dict((metadata or {}).get("decode", {}))
    results, types = {}, {}
    for name, task in tasks.items():
        if name not in per_task:
            continue
        kwargs = {**decode.get(name, {}), **(options or {}).get(name, {})}
        results[name] = task.decode_numpy(per_task[name], letterbox, **kwargs)
        types[name] = task.TYPE
    return Prediction(letterbox.height, letterbox.width, results, types)
