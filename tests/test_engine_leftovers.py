"""What a killed run leaves behind is cleaned up by the next start: half-written checkpoint files are removed, and
after a resume train_log.jsonl holds every step once."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from _engine_utils import crashing_loader_fn, tiny_config, toy_loader_fn
from perception.engine.trainer import train
from perception.engine.checkpoint import load_checkpoint, remove_temporary_files

ROOT = Path(__file__).resolve().parents[1]

# A process killed (SIGKILL) inside save_checkpoint, after the temporary file was written and before the rename.
KILLED_WHILE_SAVING = """
import os, signal, sys, torch
from perception.engine.checkpoint import save_checkpoint
os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)
save_checkpoint({"config": {}, "model": {"w": torch.ones(3)}}, sys.argv[1])
"""


def _killed_save(path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", KILLED_WHILE_SAVING, str(path)], cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, capture_output=True)
    assert done.returncode == -9, done.stderr.decode()


def test_a_kill_while_saving_leaves_a_temporary_file_that_the_next_start_removes(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _killed_save(run_dir / "last.pt")
    leftovers = sorted(p.name for p in run_dir.iterdir())
    assert len(leftovers) == 1 and leftovers[0].startswith(".last.pt.") and leftovers[0].endswith(".tmp")
    (run_dir / leftovers[0].replace(".last.pt.", ".best.pt.")).write_bytes(b"half a checkpoint")
    leftovers.append(leftovers[0].replace(".last.pt.", ".best.pt."))
    # Files that merely look alike are the user's and stay.
    for name in ("notes.tmp", ".last.pt.tmp", ".cache.12345678.tmp"):
        (run_dir / name).write_text("mine")

    cfg = tiny_config(run_dir, "train.max_steps=1")
    train(cfg, loader_fn=toy_loader_fn())
    names = {p.name for p in run_dir.iterdir()}
    assert not names & set(leftovers)
    assert {"notes.tmp", ".last.pt.tmp", ".cache.12345678.tmp", "last.pt", "best.pt"} <= names
    assert load_checkpoint(run_dir / "last.pt")["step"] == 1
    assert "removed 2 temporary checkpoint file(s)" in capsys.readouterr().out
    assert remove_temporary_files(tmp_path / "missing") == []


def test_after_a_resume_the_log_holds_every_step_once(tmp_path):
    steps = ["train.max_steps=6", "train.log_interval=1", "train.checkpoint_interval=3", "train.eval_interval=3"]
    # The kill comes while the data of step 6 is fetched: steps 4 and 5 were logged, last.pt is step 3's.
    cfg = tiny_config(tmp_path / "run", *steps)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, loader_fn=crashing_loader_fn(5))
    log_path = tmp_path / "run" / "train_log.jsonl"
    with log_path.open("a") as f:
        f.write('{"step": 6, "loss/to')                 # a line cut short by the kill
    before = log_path.read_text().splitlines()
    assert [json.loads(r)["step"] for r in before[:-1] if "eval" not in r] == [1, 2, 3, 4, 5]

    train(cfg, resume=tmp_path / "run" / "last.pt", loader_fn=toy_loader_fn(train_size=6))
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [r["step"] for r in records if "eval" not in r] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in records if "eval" in r] == [3, 6]
    # The lines kept are the first run's, byte for byte.
    assert log_path.read_text().splitlines()[:4] == before[:4]

    # A fresh start in the same folder starts a fresh log.
    train(tiny_config(tmp_path / "run", "train.max_steps=2", "train.log_interval=1"), loader_fn=toy_loader_fn())
    assert [json.loads(line)["step"] for line in log_path.read_text().splitlines()] == [1, 2, 2]
