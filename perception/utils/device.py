"""The one place a device name becomes a ``torch.device``: training, evaluation, inference and the benchmarks."""
from __future__ import annotations

import torch


def resolve_device(device: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` when CUDA is available, else the CPU; ``cuda`` -> ``cuda:<local_rank>``;
    ``cpu``, ``cuda:N``, ``mps`` or a ``torch.device`` as given.

    Args:
        device: the name (``train.device``, ``--device``) or a device.
        local_rank: the GPU of this process under torchrun (``LOCAL_RANK``); 0 for a single process.

    Raises:
        ValueError: a name torch does not know, or CUDA asked for on a machine without it.
    """
    if isinstance(device, torch.device):
        return device
    name = str(device).strip()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"device {device!r}: expected auto, cpu, cuda or cuda:N ({err})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: CUDA is not available on this machine; use cpu or auto")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    return dev
