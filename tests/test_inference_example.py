"""The embedding example: perception's dense heads on another network's features learn and post-process."""
import importlib.util
from pathlib import Path

import numpy as np
import torch

from scenes import toy_scene

ROOT = Path(__file__).resolve().parents[1]


def _load_example():
    spec = importlib.util.spec_from_file_location("embed_heads", ROOT / "examples" / "embed_heads.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_heads_embedded_in_another_network_learn_and_postprocess():
    example = _load_example()
    rng = np.random.default_rng(0)
    samples = [toy_scene(rng, 64, 64) for _ in range(2)]
    images = torch.stack([torch.from_numpy(s["image"]).permute(2, 0, 1) for s in samples])
    semantic = torch.stack([torch.from_numpy(s["semantic"]) for s in samples]).long()
    depth = torch.stack([torch.from_numpy(s["depth"]) for s in samples]).float()
    torch.manual_seed(0)
    model = example.MyNetwork(num_classes=4, width=32)
    history = example.train(model, images, semantic, depth, steps=40)  # 25 steps sit at 0.80, on the edge
    assert history[-1] < 0.5 * history[0]
    model.eval()
    ids, metres = model.predict(images)
    assert ids.shape == (2, 64, 64) and metres.shape == (2, 64, 64)
    assert (ids == semantic)[semantic != 255].float().mean() > 0.8   # it learnt the scenes' classes
    assert (metres > 0).all()
