"""Every tool ends a bad input with one line ``error: ...`` on stderr and exit code 2, no traceback (--debug: with).

Two cases run the scripts in a fresh interpreter, as a user does (the exit code of the process, the whole stderr);
the others call each tool's ``main(argv)``, which returns the exit code the script exits with.
"""
from __future__ import annotations

import pickle
import shutil

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from _tool_utils import load_tool, mtan_config, run_script, write_mtan
from perception.data import DataError
from perception.utils.cli import run_tool, unwrap_worker_message, user_error_message

train_tool = load_tool("tools/train.py")
eval_tool = load_tool("tools/eval.py")
infer_tool = load_tool("tools/infer.py")
export_tool = load_tool("tools/export.py")


def _error_line(err: str) -> str:
    """The stderr of a failed tool: exactly one line, ``error: ...``, and no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 1-step run of the tiny network on good data: (config path, data root, run dir)."""
    tmp = tmp_path_factory.mktemp("trained")
    data = write_mtan(tmp / "data")
    config = mtan_config(tmp / "config.yaml", data, tmp / "run", train={"max_steps": 1})
    assert train_tool.main(["--config", str(config)]) == 0
    return config, data, tmp / "run"


@pytest.fixture(scope="module")
def refused_checkpoint(tmp_path_factory):
    """A checkpoint that torch loads only with weights_only=False: it pickles a numpy array."""
    path = tmp_path_factory.mktemp("refused") / "numpy.pt"
    torch.save({"format": "perception-checkpoint", "version": 1, "config": {}, "model": {},
                "extra": np.zeros(3)}, path)
    return path


def test_data_error_in_a_dataloader_worker_gives_its_own_message(tmp_path):
    """A script run: the DataError of a worker process is unwrapped (torch wraps it in the worker's traceback)."""
    data = write_mtan(tmp_path / "data", bad={1: "label"})
    config = mtan_config(tmp_path / "config.yaml", data, tmp_path / "run", data={"num_workers": 1})
    result = run_script("tools/train.py", "--config", str(config))
    assert result.returncode == 2, result.stderr
    line = _error_line(result.stderr)
    assert "label/1.npy" in line and "semantic ids [20] are outside the label table" in line
    assert "DataLoader worker" not in line and "Original Traceback" not in line


def test_refused_checkpoint_does_not_advise_weights_only_false(tmp_path, refused_checkpoint, trained):
    """A script run: eval.py on a checkpoint that needs weights_only=False names what it holds, not torch's hint."""
    config, _, _ = trained
    result = run_script("tools/eval.py", "--config", str(config), "--checkpoint", str(refused_checkpoint))
    assert result.returncode == 2
    line = _error_line(result.stderr)
    assert "numpy.pt' was refused" in line and "numpy" in line and "could run code" in line
    assert "weights_only" not in result.stderr and "Re-running" not in result.stderr


def test_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    missing = str(tmp_path / "missing.yaml")
    assert train_tool.main(["--config", missing, "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.rstrip().splitlines()[-1].startswith("error: ")
    monkeypatch.setenv("PERCEPTION_DEBUG", "1")
    assert eval_tool.main(["--config", missing, "--checkpoint", "x.pt"]) == 2
    assert "Traceback (most recent call last)" in capsys.readouterr().err
    monkeypatch.setenv("PERCEPTION_DEBUG", "0")
    assert eval_tool.main(["--config", missing, "--checkpoint", "x.pt"]) == 2
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("overrides,message", [
    (["train.lrr=0.1"], "unknown key train.'lrr'. Did you mean 'lr'?"),
    (["train.lr=-1"], "train: lr: got -1.0, expected a positive value"),
    (["data.batch_size=two"], "data.batch_size: got 'two' (str), expected int"),
    (["model.backbone.name=resnet999"], "unknown timm model 'resnet999'"),
    (["model.backbone.name=resnet18.nosuchtag"], "model.backbone.name: Invalid pretrained tag (nosuchtag)"),
    (["train.amp=fp16", "train.device=cpu"], "train.amp=fp16 needs CUDA, and this run's device is cpu"),
    (["data.train=[{type: nyuv2_mtan, root: /nonexistent/nyu}]"], "/nonexistent/nyu/train: missing split folder"),
])
def test_train_config_errors_are_one_line(tmp_path, capsys, trained, overrides, message):
    config, _, _ = trained
    run = tmp_path / "run"
    assert train_tool.main(["--config", str(config), f"output_dir={run}", *overrides]) == 2
    assert message in _error_line(capsys.readouterr().err)
    assert not run.exists()  # refused before anything was written


def test_missing_files_are_one_line(tmp_path, capsys, trained):
    config, _, run = trained
    assert train_tool.main(["--config", str(tmp_path / "nope.yaml")]) == 2
    assert f"config file '{tmp_path / 'nope.yaml'}' does not exist" in _error_line(capsys.readouterr().err)
    assert train_tool.main(["--config", str(config), f"output_dir={tmp_path / 'r'}", "--resume",
                            str(tmp_path / "gone.pt")]) == 2
    assert "gone.pt' does not exist" in _error_line(capsys.readouterr().err)
    assert eval_tool.main(["--config", str(config), "--checkpoint", str(tmp_path / "gone.pt")]) == 2
    assert "gone.pt' does not exist" in _error_line(capsys.readouterr().err)
    assert infer_tool.main(["--checkpoint", str(run / "last.pt"), "--source", str(tmp_path / "gone.png"),
                            "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "gone.png" in _error_line(capsys.readouterr().err)


def test_resume_of_a_checkpoint_of_another_network_is_one_line(tmp_path, capsys, trained):
    config, _, run = trained
    shutil.copy(run / "last.pt", tmp_path / "other.pt")
    assert train_tool.main(["--config", str(config), f"output_dir={tmp_path / 'r'}", "model.neck.channels=8",
                            "--resume", str(tmp_path / "other.pt")]) == 2
    line = _error_line(capsys.readouterr().err)
    assert "other.pt: cannot resume" in line and "size mismatch for" in line


def test_corrupt_and_refused_checkpoints_are_one_line_in_every_tool(tmp_path, capsys, trained, refused_checkpoint):
    config, _, run = trained
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"garbage" * 100)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((run / "last.pt").read_bytes()[:3000])
    image = tmp_path / "street.png"
    cv2.imwrite(str(image), np.full((32, 48, 3), 128, np.uint8))
    out = str(tmp_path / "out")
    for path in (corrupt, truncated, refused_checkpoint):
        calls = [(eval_tool, ["--config", str(config), "--checkpoint", str(path)]),
                 (train_tool, ["--config", str(config), f"output_dir={out}", "--resume", str(path)]),
                 (infer_tool, ["--checkpoint", str(path), "--source", str(image), "--out", out, "--quiet"]),
                 (export_tool, ["--checkpoint", str(path), "--out", str(tmp_path / "m.onnx")])]
        for tool, argv in calls:
            assert tool.main(argv) == 2, (tool.__name__, path)
            line = _error_line(capsys.readouterr().err)
            assert f"checkpoint '{path}'" in line and "weights_only" not in line, line
            assert ("was refused" if path == refused_checkpoint else "could not be read") in line


def test_infer_exits_2_when_no_input_could_be_read(tmp_path, capsys, trained):
    _, _, run = trained
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"not a png")
    (folder / "b.jpg").write_bytes(b"")
    assert infer_tool.main(["--checkpoint", str(run / "last.pt"), "--source", str(folder), "--out",
                            str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "a.png" in err and "b.jpg" in err  # each unreadable input is named
    assert err.rstrip().splitlines()[-1].startswith("error: none of the 2 images of")


def test_dataset_scripts_give_one_line_errors(tmp_path, capsys):
    prepare_nyuv2 = load_tool("datasets/prepare_nyuv2.py")
    assert prepare_nyuv2.main(["--mat", str(tmp_path / "nyu.mat"), "--out", str(tmp_path / "o")]) == 2
    assert "nyu.mat" in _error_line(capsys.readouterr().err)
    prepare_synthetic = load_tool("datasets/prepare_synthetic.py")
    assert prepare_synthetic.main(["--out", str(tmp_path / "s"), "--train", "1", "--val", "0",
                                   "--size", "0", "64"]) == 2
    assert "--size: got 0x64, expected at least 32x32" in _error_line(capsys.readouterr().err)


class _BadDataset(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int):
        raise DataError(f"/data/img_{index}.png: cannot decode the image")


def test_worker_errors_are_unwrapped_and_bugs_keep_their_traceback():
    loader = DataLoader(_BadDataset(), batch_size=1, num_workers=1)
    with pytest.raises(DataError) as caught:
        next(iter(loader))
    assert "DataLoader worker process 0" in str(caught.value)  # how torch re-raises it
    assert unwrap_worker_message(caught.value) == "/data/img_0.png: cannot decode the image"
    assert user_error_message(caught.value) == "/data/img_0.png: cannot decode the image"
    assert user_error_message(FileNotFoundError(2, "No such file or directory", "/x.yaml")) == \
        "/x.yaml: No such file or directory"
    assert user_error_message(pickle.UnpicklingError("x")) is None and user_error_message(KeyError("k")) is None

    def buggy(argv):
        return 1 // 0

    with pytest.raises(ZeroDivisionError):
        run_tool(buggy, [])
    assert run_tool(lambda argv: None, []) == 0 and run_tool(lambda argv: 3, []) == 3
