"""Helpers of the command-line tests: a tiny on-disk dataset, a config file for it, the tools, a subprocess run."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from perception.data.datasets.nyuv2 import NYU13_CLASSES

ROOT = Path(__file__).resolve().parents[1]


def write_mtan(root: Path, count: int = 4, size: int = 32, bad: dict[int, str] | None = None) -> Path:
    """``count`` samples per split in the MTAN NYUv2 layout (``type: nyuv2_mtan``), labels ``i % 13``.

    Args:
        bad: sample index -> what to break in both splits: ``label`` (an id outside the 13 classes), ``depth``
            (a missing file) or ``image`` (a file that is not a .npy).
    """
    bad = bad or {}
    for split in ("train", "val"):
        for sub in ("image", "label", "depth"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            d = root / split
            image = np.zeros((size, size, 3), np.float32)
            image[: size // 2] = 0.8  # a bright top half, the label's class below
            np.save(d / "image" / f"{i}.npy", image)
            label = np.full((size, size), i % 13, np.float32)
            label[: size // 2] = 12
            np.save(d / "label" / f"{i}.npy", label)
            np.save(d / "depth" / f"{i}.npy", np.full((size, size, 1), 1.0 + i, np.float32))
            if bad.get(i) == "label":
                np.save(d / "label" / f"{i}.npy", np.full((size, size), 20, np.float32))
            elif bad.get(i) == "depth":
                (d / "depth" / f"{i}.npy").unlink()
            elif bad.get(i) == "image":
                (d / "image" / f"{i}.npy").write_bytes(b"not a numpy file")
    return root


def mtan_config(path: Path, data_root: Path, run_dir: Path, **sections) -> Path:
    """A YAML config of a tiny segmentation + depth network on :func:`write_mtan` data; ``sections`` update it
    (e.g. ``train={"max_steps": 3}``)."""
    cfg = {
        "model": {"tasks": ["segmentation", "depth"], "backbone": {"name": "test_resnet"}, "neck": {"channels": 16},
                  "segmentation": {"num_classes": 13, "channels": 16, "class_names": list(NYU13_CLASSES)},
                  "depth": {"channels": 16, "max_depth": 10.0}},
        "weighting": {"method": "equal"},
        "data": {"train": [{"type": "nyuv2_mtan", "root": str(data_root), "split": "train"}],
                 "val": [{"type": "nyuv2_mtan", "root": str(data_root), "split": "val"}],
                 "image_size": [32, 32], "batch_size": 2, "num_workers": 0, "augment": {"scale": [1.0, 1.0]}},
        "train": {"device": "cpu", "progress": False, "tensorboard": False, "max_steps": 2, "log_interval": 1,
                  "eval_interval": 0, "num_overlays": 0, "warmup_steps": 0},
        "output_dir": str(run_dir),
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def load_tool(relative: str):
    """The module of a script such as ``tools/train.py`` (its ``main(argv)`` returns the exit code)."""
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem + "_tool", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(relative: str, *args: str, env: dict | None = None, timeout: float = 300
               ) -> subprocess.CompletedProcess:
    """Run a script as a user does, in a fresh interpreter; returns the completed process (text output)."""
    full_env = {k: v for k, v in os.environ.items() if k != "PERCEPTION_DEBUG"}
    full_env.update({"PYTHONPATH": str(ROOT), **(env or {})})
    return subprocess.run([sys.executable, str(ROOT / relative), *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=ROOT)
