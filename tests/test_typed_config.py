"""Typed configuration: nested dataclasses from dicts, YAML inheritance, overrides and their errors."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from perception.config import ConfigError, load_config, parse_overrides, save_config
from perception.utils.configurable import from_dict, to_dict


@dataclass
class Inner:
    size: tuple[int, int] = (2, 3)
    names: list[str] = field(default_factory=list)
    mode: Literal["a", "b"] = "a"


@dataclass
class Outer:
    lr: float = 0.1
    steps: int = 10
    flag: bool = False
    path: bool | str = False
    inner: Inner = field(default_factory=Inner)
    weights: dict[str, float] = field(default_factory=dict)


def test_nested_values_are_converted_and_round_trip():
    cfg = from_dict(Outer, {"lr": 1, "inner": {"size": [4, 5], "names": ["x"]}, "weights": {"a": 2}, "path": "w.pth"})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.inner.size == (4, 5) and cfg.inner.names == ["x"] and cfg.weights == {"a": 2.0}
    assert cfg.path == "w.pth" and from_dict(Outer, {"path": True}).path is True
    assert from_dict(Outer, to_dict(cfg)) == cfg


@pytest.mark.parametrize("data, message", [
    ({"stesp": 3}, "unknown key 'stesp'. Did you mean 'steps'"),
    ({"inner": {"nmes": []}}, "unknown key inner.'nmes'. Did you mean 'names'"),
    ({"steps": "ten"}, "steps: got 'ten' \\(str\\), expected int"),
    ({"steps": 2.5}, "steps: got 2.5 \\(float\\), expected int"),
    ({"flag": 1}, "flag: got 1 \\(int\\), expected bool"),
    ({"lr": True}, "lr: got True \\(bool\\), expected float"),
    ({"inner": {"size": [1, 2, 3]}}, "inner.size: expected 2 items"),
    ({"inner": {"mode": "c"}}, "inner.mode: got 'c', expected one of 'a', 'b'"),
    ({"inner": 3}, "inner: expected a mapping for Inner"),
    ({"weights": {"a": "heavy"}}, "weights.a: got 'heavy' \\(str\\), expected float"),
    ({"path": 3}, "path: got 3 \\(int\\), expected bool \\| str"),
])
def test_errors_name_the_key_the_value_and_what_was_expected(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Outer, data)


def test_yaml_inheritance_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("model:\n  tasks: [detection, depth]\n  neck: {channels: 64}\nseed: 3\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\nmodel:\n  neck: {channels: 96}\n")
    cfg = load_config(tmp_path / "child.yaml", ["model.depth.loss=l1_log", "seed=7"])
    assert cfg.model.tasks == ["detection", "depth"]          # inherited
    assert cfg.model.neck.channels == 96                      # child wins over base
    assert cfg.model.depth.loss == "l1_log" and cfg.seed == 7  # overrides win over files
    save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(tmp_path / "run" / "config.yaml") == cfg

    (tmp_path / "loop.yaml").write_text("_base_: loop.yaml\n")
    with pytest.raises(ConfigError, match="circular _base_"):
        load_config(tmp_path / "loop.yaml")
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="unknown key model.neck.'chanels'. Did you mean 'channels'"):
        load_config(tmp_path / "child.yaml", ["model.neck.chanels=3"])


def test_parse_overrides():
    assert parse_overrides(["a.b=1", "a.c=[1, 2]", "d=text", "e=true"]) == {
        "a": {"b": 1, "c": [1, 2]}, "d": "text", "e": True}
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["train.lr"])


def test_class_names_default_to_the_cityscapes_table_when_the_count_matches():
    from cityscapesscripts.helpers.labels import labels

    from perception.tasks.detection.config import DetectionConfig
    from perception.tasks.segmentation.config import SegmentationConfig

    train_ids = sorted((l.trainId, l.name) for l in labels if 0 <= l.trainId < 255 and l.id >= 0)
    things = [name for train_id, name in train_ids if next(l for l in labels if l.name == name).hasInstances]
    assert SegmentationConfig().class_names == [name for _, name in train_ids] and len(train_ids) == 19
    assert DetectionConfig().class_names == things == ["person", "rider", "car", "truck", "bus", "train",
                                                       "motorcycle", "bicycle"]
    assert SegmentationConfig(num_classes=3).class_names == ["class_0", "class_1", "class_2"]
    assert DetectionConfig(num_classes=2, class_names=["red", "blue"]).class_names == ["red", "blue"]
    cfg = load_config(None, ["model.tasks={lanes: {type: segmentation, num_classes: 19}}"])
    assert cfg.model.build_tasks()["lanes"].class_names[:2] == ["road", "sidewalk"]
