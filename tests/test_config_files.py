"""Every shipped config loads, builds its model and weighting; bad keys and types give the promised errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from perception.config import ConfigError, load_config, save_config
from perception.models import build_model
from perception.mtl import build_weighting

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_the_configs_of_the_issue_are_shipped():
    names = {p.stem for p in CONFIGS}
    assert {"synthetic_driving", "cityscapes", "cityscapes_mtan", "nyuv2"} <= names
    for base in ("synthetic_driving", "cityscapes", "cityscapes_mtan", "nyuv2"):
        assert any(n.startswith(base + "_") and n.split("_")[-1] in ("segmentation", "depth") for n in names), base


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_loads_and_builds(path, tmp_path):
    # Offline: the pretrained weights are not fetched here, only the architecture is checked.
    cfg = load_config(path, ["model.backbone.pretrained=false"])
    model = build_model(cfg.model)
    weighting = build_weighting(cfg.weighting, model.tasks)
    assert model.tasks == cfg.model.task_names and weighting.tasks == model.tasks   # list or mapping form
    if len(model.tasks) == 1:
        assert cfg.weighting.method == "equal"
    # The resolved config round-trips through the YAML saved in the run directory.
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


def test_expected_settings():
    city = load_config(CONFIGS[0].parent / "cityscapes.yaml")
    assert (city.model.segmentation.num_classes, city.model.detection.num_classes) == (19, 8)
    assert city.model.backbone.name == "resnet50"
    mtan = load_config(CONFIGS[0].parent / "cityscapes_mtan.yaml")
    assert mtan.model.tasks == ["segmentation", "depth"] and mtan.model.segmentation.num_classes == 7
    assert list(mtan.data.image_size) == [128, 256]
    nyu = load_config(CONFIGS[0].parent / "nyuv2.yaml")
    assert nyu.model.segmentation.num_classes == 13 and list(nyu.data.image_size) == [288, 384]
    demo = load_config(CONFIGS[0].parent / "synthetic_driving.yaml", ["train.max_steps=200", "output_dir=runs/x"])
    assert demo.train.max_steps == 200 and demo.output_dir == "runs/x" and demo.data.train[0].type == "synthetic"


def test_misspelt_key_names_the_closest_valid_one():
    with pytest.raises(ConfigError, match=r"max_step.*max_steps"):
        load_config(CONFIGS[0].parent / "synthetic_driving.yaml", ["train.max_step=10"])
    with pytest.raises(ConfigError, match=r"baselins.*baselines"):
        load_config(None, ["eval.baselins=[a.json]"])


def test_wrong_type_names_key_value_and_type():
    with pytest.raises(ConfigError, match=r"train\.lr.*fast.*float"):
        load_config(None, ["train.lr=fast"])


@pytest.mark.parametrize("override, message", [
    ("train.accumulate=0", "accumulate"),
    ("train.device=tpu", "device"),
    ("eval.delta_m_metrics={depth/rmse: 2}", "delta_m_metrics"),
    ("train.ema_decay=1.5", "ema_decay"),
])
def test_invalid_values_are_rejected(override, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        load_config(None, [override])


def test_train_tool_reports_config_errors(capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_tool", CONFIGS[0].parents[1] / "tools" / "train.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main(["--config", str(CONFIGS[0].parent / "synthetic_driving.yaml"), "train.lerning_rate=1"]) == 2
    assert "lerning_rate" in capsys.readouterr().err
