"""data.skip_bad skips nothing silently: each skipped sample is on stderr at once, in bad_samples.txt and counted in
train_log.jsonl, in a run shorter than an epoch, from DataLoader workers too, and once after a resume."""
from __future__ import annotations

import json
import shutil

import pytest

from _tool_utils import mtan_config, write_mtan
from perception.config import load_config
from perception.data import build_dataloader
from perception.engine.trainer import train

BAD = {1: "label", 4: "depth"}  # not adjacent: each is replaced by the next sample, which is good
REASONS = {1: "label/1.npy: semantic ids [20] are outside the label table", 4: "depth/4.npy: missing depth file"}
BATCH = 2


def _draws(cfg) -> list[int]:
    """The training order the run will use (its sampler, epoch 0)."""
    sampler = build_dataloader(cfg.data, "train", cfg.model.tasks, seed=cfg.seed).sampler
    sampler.set_epoch(0)
    return [int(index) for index, _ in sampler]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Data with two bad samples of six, and a seed whose first two steps meet one bad sample each."""
    tmp = tmp_path_factory.mktemp("skip")
    data = write_mtan(tmp / "data", count=6, bad=BAD)
    config = mtan_config(tmp / "config.yaml", data, tmp / "unused", data={"skip_bad": True, "batch_size": BATCH},
                         eval={"max_batches": 1})
    for seed in range(100):
        order = _draws(load_config(config, [f"seed={seed}"]))
        steps = [[i for i in order[BATCH * s:BATCH * (s + 1)] if i in BAD] for s in range(2)]
        if len(steps[0]) == 1 and len(steps[1]) == 1:
            return config, seed, steps
    raise AssertionError("no seed meets one bad sample in each of the first two steps")


def _expected(steps, upto: int) -> list[tuple[str, str]]:
    """(``step N``, start of the reason) of each sample the first ``upto`` steps skip, in order."""
    return [(f"step {s + 1}", REASONS[i]) for s in range(upto) for i in steps[s]]


def _check_lines(lines: list[str], expected: list[tuple[str, str]]) -> None:
    """``lines`` are ``step N: <data root>/train/<file>: <reason>``, one per expected skip, in order."""
    assert len(lines) == len(expected), lines
    for line, (step, reason) in zip(lines, expected):
        assert line.startswith(f"{step}: ") and line.split("/train/", 1)[1].startswith(reason), line


def _bad_lines(run_dir) -> list[str]:
    return (run_dir / "bad_samples.txt").read_text().splitlines()


def _bad_counts(run_dir) -> dict[int, int]:
    records = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    return {r["step"]: r["bad_samples"] for r in records if "bad_samples" in r}


def test_skipped_samples_are_reported_listed_and_counted(tmp_path, capsys, setup):
    config, seed, steps = setup
    run = tmp_path / "run"
    # Two steps of three: a run shorter than an epoch (the count was once only reported at an epoch's end). The
    # samples are read in a DataLoader worker, which cannot touch the trainer's memory: the report comes with the
    # batch (the resume test below reads in the main process).
    cfg = load_config(config, [f"seed={seed}", f"output_dir={run}", "data.num_workers=1", "train.max_steps=2"])
    train(cfg)
    err = capsys.readouterr().err
    expected = _expected(steps, 2)
    _check_lines(_bad_lines(run), expected)
    # On stderr as they happen, with the file and the reason.
    prefix = "warning: skipped a bad sample (data.skip_bad): "
    _check_lines([w[len(prefix):] for w in err.splitlines() if w.startswith(prefix)], expected)
    assert _bad_counts(run) == {1: 1, 2: 2}  # cumulative
    # The val split has the same bad samples: the evaluation of its first batch (0, 1) reports sample 1 too.
    evaluation = [w for w in err.splitlines() if w.startswith("warning: skipped a bad evaluation sample")]
    assert len(evaluation) == 1 and "val/label/1.npy: semantic ids [20]" in evaluation[0]


def test_a_resumed_run_lists_each_skipped_sample_once(tmp_path, capsys, setup):
    config, seed, steps = setup
    run = tmp_path / "run"
    common = [f"seed={seed}", f"output_dir={run}"]
    train(load_config(config, [*common, "train.max_steps=1"]))
    _check_lines(_bad_lines(run), _expected(steps, 1))
    shutil.copy(run / "last.pt", tmp_path / "step1.pt")
    two = load_config(config, [*common, "train.max_steps=2"])
    train(two, resume=tmp_path / "step1.pt")
    train(two, resume=tmp_path / "step1.pt")  # again from step 1, as after a crash past it
    _check_lines(_bad_lines(run), _expected(steps, 2))
    assert _bad_counts(run)[2] == 2
