"""Checkpoints: one file per state, written atomically and read without executing pickled code.

A checkpoint is a dict with ``format`` = ``"perception-checkpoint"``, ``version``, ``config`` (the resolved config
as plain data) and ``model`` (a state dict), plus whatever the trainer adds (optimizer, scheduler, scaler, EMA,
weighting, step, RNG states, metrics). Everything in it must be tensors and plain Python containers/scalars so
that ``torch.load(..., weights_only=True)`` reads it.

This module imports nothing else of the toolkit, so that both the engine (which writes checkpoints) and the
inference side (which reads them, :mod:`perception.inference.loading`) use it without importing each other.
"""
from __future__ import annotations

import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

FORMAT = "perception-checkpoint"
VERSION = 1
# save_checkpoint's temporary file: ".<name>.<8 random characters of tempfile>.tmp" next to <name>.
_TEMPORARY = re.compile(r"^\.(?P<name>.+\.pt)\.[a-z0-9_]{8}\.tmp$")


class CheckpointError(RuntimeError):
    """A file that is not a readable checkpoint of this toolkit."""


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, fsync'd, then renamed.

    A crash while writing leaves the previous file at ``path`` intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": FORMAT, "version": VERSION, **state}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # see _TEMPORARY
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def _unpickling_message(path: Path, err: Exception) -> str:
    """What torch's weights-only unpickler refused, without its advice to load with ``weights_only=False``
    (that would run whatever code the file carries)."""
    text = str(err)
    reason = text.split("WeightsUnpickler error:", 1)[1] if "WeightsUnpickler error:" in text else ""
    reason = next((line.strip() for line in reason.splitlines() if line.strip()), "")
    found = re.match(r"Unsupported global: GLOBAL (\S+)", reason)
    if found:
        return (f"checkpoint {str(path)!r} was refused: it holds a pickled Python object ({found.group(1)}) "
                "besides tensors and plain data, and unpickling such objects could run code; a checkpoint "
                "written by tools/train.py holds none")
    return (f"checkpoint {str(path)!r} could not be read: the file is corrupt or not a PyTorch checkpoint "
            f"(unpickling failed{': ' + reason if reason else ''})")


def remove_temporary_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that :func:`save_checkpoint` leaves in ``folder`` when the process is killed
    while writing (``.last.pt.k3j_x9a2.tmp``); the checkpoints themselves are never touched.

    Returns:
        the files removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.iterdir()):
        if _TEMPORARY.match(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (no pickled code runs) and check it is one of ours.

    Raises:
        FileNotFoundError: the file does not exist.
        CheckpointError: the file is truncated or corrupt, holds pickled objects other than tensors and plain
            data, or is not a checkpoint written by this toolkit.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(_unpickling_message(path, err)) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        raise CheckpointError(f"checkpoint {str(path)!r} could not be read: the file is truncated or corrupt "
                              f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a perception checkpoint (no 'format': {FORMAT!r} "
                              "key); for plain backbone weights use model.backbone.pretrained instead")
    if state.get("version", 0) > VERSION:
        raise CheckpointError(f"checkpoint {str(path)!r} has format version {state['version']}, newer than this "
                              f"toolkit reads ({VERSION}); upgrade perception")
    for key in ("config", "model"):
        if key not in state:
            raise CheckpointError(f"checkpoint {str(path)!r} has no {key!r} entry")
    return state


def rng_state() -> dict[str, Any]:
    """This process's random generators (Python, NumPy, torch CPU and CUDA) as plain data and tensors."""
    import random

    import numpy as np

    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    import random

    import numpy as np

    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
