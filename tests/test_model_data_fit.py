"""train and eval refuse a network whose classes are not the data's, before the first step or image; eval runs in
fp32 unless asked."""
from __future__ import annotations

import json

import pytest
import torch

from _tool_utils import load_tool, mtan_config, write_mtan
from perception.config import ConfigError, config_to_dict, load_config
from perception.data.datasets.nyuv2 import NYU13_CLASSES
from perception.engine.evaluator import evaluate
from perception.engine.trainer import train
from perception.engine.checkpoint import save_checkpoint
from perception.engine.model_data import check_model_fits_data
from perception.models import build_model
from perception.models.config import ModelConfig

eval_tool = load_tool("tools/eval.py")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_mtan(tmp_path_factory.mktemp("nyu"))


def _config(tmp_path, data, *overrides):
    path = mtan_config(tmp_path / "config.yaml", data, tmp_path / "run")
    return path, load_config(path, list(overrides))


def _checkpoint(path, cfg):
    torch.manual_seed(0)
    return save_checkpoint({"config": config_to_dict(cfg), "model": build_model(cfg.model).state_dict()}, path)


@pytest.mark.parametrize("overrides,message", [
    (["model.segmentation.num_classes=25", "model.segmentation.class_names=[]"],
     "segmentation classes: the config has 25 (model.segmentation.num_classes) but data.train (nyuv2_mtan train"),
    # Fewer classes than the data: without the check the loss fails on the first label it cannot index.
    (["model.segmentation.num_classes=3", "model.segmentation.class_names=[]"],
     "the config has 3 (model.segmentation.num_classes) but data.train"),
    (["model.segmentation.class_names=[books, bed, ceiling, chair, floor, furniture, objects, picture, sofa, table, "
      "tv, wall, window]"],
     "names class 0 'books' (model.segmentation.class_names) but data.train (nyuv2_mtan train"),
])
def test_train_refuses_a_head_that_does_not_fit_the_data(tmp_path, data, overrides, message):
    _, cfg = _config(tmp_path, data, *overrides)
    with pytest.raises(ConfigError) as caught:
        train(cfg)
    assert message in str(caught.value)
    assert "'bed'" in str(caught.value) or "[bed, books" in str(caught.value)  # the data's classes are shown
    assert not (tmp_path / "run").exists()  # before the first step: nothing written


def test_eval_refuses_a_checkpoint_of_other_classes_before_the_first_image(tmp_path, data, capsys):
    config, cfg = _config(tmp_path, data)
    wrong = load_config(config, ["model.segmentation.num_classes=25", "model.segmentation.class_names=[]"])
    checkpoint = _checkpoint(tmp_path / "c25.pt", wrong)
    with pytest.raises(ConfigError, match=r"checkpoint '.*c25.pt' has 25 \(model.segmentation.num_classes\) but "
                                          r"data.val \(nyuv2_mtan val"):
        evaluate(cfg, checkpoint, output=tmp_path / "m.json")
    assert eval_tool.main(["--config", str(config), "--checkpoint", str(checkpoint)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: segmentation classes: checkpoint") and err.count("\n") == 1
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "m.json").exists()
    renamed = load_config(config, [f"model.segmentation.class_names=[{', '.join(reversed(NYU13_CLASSES))}]"])
    with pytest.raises(ConfigError, match="names class 0 'window'"):
        evaluate(cfg, _checkpoint(tmp_path / "renamed.pt", renamed))


def test_only_counts_are_compared_for_unnamed_classes_and_detection_is_checked_too():
    model = ModelConfig(tasks=["detection", "segmentation"])
    model.segmentation.num_classes, model.segmentation.class_names = 3, ["class_0", "class_1", "class_2"]
    classes = {"detection": list(model.detection.class_names), "segmentation": ["a", "b", "c"]}
    tasks = model.build_tasks()
    check_model_fits_data(model, tasks, classes, "data", "model", "fix")  # generic names: count only
    only_segmentation = {k: v for k, v in tasks.items() if k == "segmentation"}
    check_model_fits_data(model, only_segmentation, {**classes, "detection": ["x"]}, "data", "model", "fix")
    with pytest.raises(ConfigError, match=r"detection classes: model has 8 .* but data has 1 \[x\]"):
        check_model_fits_data(model, tasks, {**classes, "detection": ["x"]}, "data", "model", "fix")
    swapped = [model.detection.class_names[1], model.detection.class_names[0], *model.detection.class_names[2:]]
    with pytest.raises(ConfigError, match=r"names class 0 'person'.*calls it 'rider' \(the same names in another "
                                          r"order\).*class_map"):
        check_model_fits_data(model, tasks, {**classes, "detection": swapped}, "data", "model", "fix")


def _forward_formats(monkeypatch) -> list[tuple[torch.dtype, bool]]:
    """(dtype, channels_last) of the first backbone convolution's output at each forward of evaluate()."""
    import perception.inference.loading

    seen: list[tuple[torch.dtype, bool]] = []
    real = perception.inference.loading.build_model

    def spy(model_cfg):
        model = real(model_cfg)
        model.backbone.body.conv1.register_forward_hook(
            lambda m, i, out: seen.append((out.dtype, out.is_contiguous(memory_format=torch.channels_last)
                                           and not out.is_contiguous())))
        return model

    monkeypatch.setattr(perception.inference.loading, "build_model", spy)
    return seen


def test_eval_runs_fp32_unless_asked(tmp_path, data, monkeypatch, capsys):
    # A run trained with bf16 and channels_last: eval.py does not take those from its config.
    config, cfg = _config(tmp_path, data, "train.amp=bf16", "train.channels_last=true")
    checkpoint = _checkpoint(tmp_path / "ok.pt", cfg)
    seen = _forward_formats(monkeypatch)
    args = ["--config", str(config), "--checkpoint", str(checkpoint), "train.amp=bf16", "train.channels_last=true"]
    assert eval_tool.main(args) == 0
    assert seen and set(seen) == {(torch.float32, False)}
    seen.clear()
    assert eval_tool.main(["--amp", "bf16", "--channels-last", *args]) == 0
    assert seen and set(seen) == {(torch.bfloat16, True)}
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["step"] == 0 and "segmentation/mIoU" in metrics
    capsys.readouterr()
    assert eval_tool.main(["--amp", "fp16", *args, "train.device=cpu"]) == 2
    assert "amp=fp16 needs CUDA, and the device is cpu" in capsys.readouterr().err
