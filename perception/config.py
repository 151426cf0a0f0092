"""The toolkit's configuration: typed sections, YAML files with ``_base_`` inheritance, ``key=value`` overrides.

    cfg = load_config("configs/synthetic_driving.yaml", ["train.max_steps=200", "output_dir=runs/demo"])

Sections mirror the constructors they feed (``model`` -> ``build_model``, ``weighting`` -> ``build_weighting``,
...). An unknown key is an error naming the closest valid one; a wrong type names the key, the value and the
expected type.

This module only assembles the sections that each package defines next to the code it configures
(``perception.engine.config`` among them). Importing a section runs its package's ``__init__`` and the section's
module, and neither leads back here: the engine's ``__init__`` imports nothing because the trainer and evaluator,
which read a whole ``Config``, import this module (``tests/test_architecture.py`` checks that no import circles).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from perception.data.config import DataConfig
from perception.engine.config import EvalConfig, TrainConfig
from perception.models.config import ModelConfig
from perception.mtl.config import WeightingConfig
from perception.utils.configurable import ConfigError, deep_merge, from_dict, to_dict

__all__ = ["Config", "ConfigError", "config_from_dict", "load_config", "parse_overrides", "save_config",
           "config_to_dict"]


@dataclass
class Config:
    """The whole configuration of a run.

    Attributes:
        model: the network.
        weighting: how task losses are combined.
        data: datasets and loading.
        train: optimisation and the loop.
        eval: metrics and the multi-task gain.
        output_dir: run directory (config, checkpoints, logs, metrics).
        seed: global random seed.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    weighting: WeightingConfig = field(default_factory=WeightingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output_dir: str = "runs/default"
    seed: int = 0


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_yaml_with_bases(path: str | os.PathLike, _seen: tuple = ()) -> dict:
    """Read a YAML config, merging the files named by its ``_base_`` key (a path or list, relative to it) first."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"config file {str(path)!r}: circular _base_ chain {[str(p) for p in _seen]}")
    data = _read_yaml(path)
    bases = data.pop("_base_", [])
    bases = [bases] if isinstance(bases, str) else list(bases)
    merged: dict = {}
    for base in bases:
        merged = deep_merge(merged, load_yaml_with_bases(path.parent / base, _seen + (path,)))
    return deep_merge(merged, data)


def parse_overrides(overrides: Sequence[str]) -> dict:
    """``["a.b=1", "c=[1, 2]"]`` -> ``{"a": {"b": 1}, "c": [1, 2]}``; values are parsed as YAML."""
    out: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. train.max_steps=200")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r}: the key must be dotted names such as train.lr")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} was already given a value")
        node[parts[-1]] = value
    return out


def config_from_dict(data: Mapping[str, Any]) -> Config:
    """Validate a nested dict into a :class:`Config`."""
    return from_dict(Config, data)


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> Config:
    """Load a YAML config (with ``_base_`` inheritance) and apply dotted ``key=value`` overrides.

    Args:
        path: YAML file; ``None`` starts from the defaults.
        overrides: e.g. ``["train.max_steps=200", "model.tasks=[depth]"]``.
    """
    data = load_yaml_with_bases(path) if path is not None else {}
    data = deep_merge(data, parse_overrides(overrides))
    return config_from_dict(data)


def config_to_dict(cfg: Config) -> dict:
    """The config as plain data (for YAML files and checkpoints)."""
    return to_dict(cfg)


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), encoding="utf-8")
    os.replace(tmp, path)
