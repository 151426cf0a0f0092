"""CPU bf16 autocast trains: P6/P7 in float32 (a oneDNN bf16 kernel leaves padding-only taps unwritten), and every
gradient of the tiny model is finite and of the size fp32 gives."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from _engine_utils import tiny_config
from perception.data.batch import collate
from perception.models import build_model
from scenes import toy_scene


def _model_and_batch(height: int = 64, width: int = 64):
    torch.manual_seed(0)
    model = build_model(tiny_config("unused").model)
    batch = collate([toy_scene(np.random.default_rng([3, i]), height, width) for i in range(2)])
    return model, batch


def _dirty_memory() -> None:
    # The allocator hands freed blocks out again: a buffer that a kernel forgets to write then holds these bytes.
    junk = torch.full((1 << 16,), 3e30, dtype=torch.bfloat16)
    del junk


def test_extra_levels_run_in_float32_under_cpu_bf16_autocast():
    model, batch = _model_and_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pyramid = model.forward_features(batch.images)
    assert [p.dtype for p in pyramid] == [torch.bfloat16] * 4 + [torch.float32] * 2
    assert [tuple(p.shape[-2:]) for p in pyramid[4:]] == [(1, 1), (1, 1)]   # the one-pixel maps of a 64x64 input
    # Same parameters and state-dict keys as torchvision's block: older checkpoints load unchanged.
    assert {"neck.fpn.extra_blocks.p6.weight", "neck.fpn.extra_blocks.p7.bias"} <= set(model.state_dict())
    # Without autocast nothing changes.
    assert all(p.dtype == torch.float32 for p in model.forward_features(batch.images))


@pytest.mark.parametrize("channels_last", [False, True])
def test_cpu_bf16_gradients_are_finite_and_as_large_as_fp32_ones(channels_last):
    """On AVX-512 CPUs (with or without avx512_bf16) P7's weight gradient was 1e30/inf/NaN without the float32
    levels; on other CPUs oneDNN takes another kernel and the test passes either way."""
    model, batch = _model_and_batch()
    images = batch.images
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    grads = {}
    for amp in (False, True, True):
        _dirty_memory()
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            task_losses, _ = model.compute_losses(model(images), batch)
        sum(task_losses.values()).backward()
        grads[amp] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert grads[True].keys() == grads[False].keys()
    for name, grad in grads[True].items():
        assert torch.isfinite(grad).all(), name
        # bf16 rounds, it does not make a gradient orders of magnitude larger.
        assert grad.abs().max() <= 4 * grads[False][name].abs().max() + 1e-4, name
