"""Inter-task affinity and task grouping: Z by hand on a shared scalar, a measurement that changes nothing (the
network, its gradients, the optimizer, BatchNorm statistics, the random state, the training it sits in), the
trainer's affinity.json / heat map / TensorBoard scalars, the partition search against hand-computed best splits,
and tools/task_groups.py: its configs load and train the right tasks, bad inputs end with one line and exit 2."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import yaml
from torch import nn

from _engine_utils import crashing_loader_fn, tiny_config, toy_loader_fn
from _tool_utils import load_tool
from perception.config import load_config
from perception.engine.checkpoint import load_checkpoint
from perception.engine.trainer import Trainer, train
from perception.models import build_model
from perception.mtl.affinity import (AffinityLog, best_overlapping, best_partitions, group_score,
                                     lookahead_affinity, pair_verdicts, parameter_lrs, set_partitions)

task_groups = load_tool("tools/task_groups.py")


# ------------------------------------------------------------------------------------------------ measurement
class SharedScalar(nn.Module):
    """Two linear tasks on one shared scalar: ``y_t = c_t * w * x``, loss ``(y_t - target_t)^2`` (float64)."""

    tasks = ["a", "b"]

    def __init__(self, w: float = 1.0, c: tuple[float, float] = (2.0, 1.0)) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float64))
        self.c = nn.ParameterDict({t: nn.Parameter(torch.tensor(v, dtype=torch.float64)) for t, v in zip("ab", c)})

    def forward(self, x, tasks=None):
        return {t: self.c[t] * self.w * x for t in (tasks or self.tasks)}

    def compute_losses(self, outputs, targets):
        return {t: ((out - targets[t]) ** 2).mean() for t, out in outputs.items()}, {}

    def shared_parameters(self):
        yield self.w


def test_affinity_of_two_tasks_on_a_shared_scalar_by_hand():
    # w = 1, c = (2, 1), targets (1, 3), lr 1/8 (every number below is exact in binary):
    # L_a = (2 - 1)^2 = 1, dL_a/dw = 2 * 2 * (2 - 1) = 4  -> w' = 1 - 4/8 = 0.5
    # L_b = (1 - 3)^2 = 4, dL_b/dw = 2 * 1 * (1 - 3) = -4 -> w' = 1.5
    # Z(a->a) = 1 - (1 - 1)^2 / 1 = 1;        Z(a->b) = 1 - (0.5 - 3)^2 / 4 = -0.5625
    # Z(b->a) = 1 - (3 - 1)^2 / 1 = -3;       Z(b->b) = 1 - (1.5 - 3)^2 / 4 = 0.4375
    # The heads c stay: had they stepped too, every entry would differ.
    model = SharedScalar()
    x = torch.ones(1, dtype=torch.float64)
    targets = {"a": torch.tensor([1.0], dtype=torch.float64), "b": torch.tensor([3.0], dtype=torch.float64)}
    z = lookahead_affinity(model, x, targets, 0.125)
    assert z.dtype == torch.float64
    assert z.tolist() == [[1.0, -0.5625], [-3.0, 0.4375]]
    # Per-parameter learning rates by name, as the trainer passes them; a parameter without one does not move.
    assert lookahead_affinity(model, x, targets, {"w": 0.125}).tolist() == z.tolist()
    assert lookahead_affinity(model, x, targets, {}).tolist() == [[0.0, 0.0], [0.0, 0.0]]
    # A task the batch does not carry: its row and column are NaN, the others untouched.
    z = lookahead_affinity(model, x, targets, 0.125, present={"a": True, "b": False})
    assert z[0, 0].item() == 1.0 and torch.isnan(z[1]).all() and torch.isnan(z[:, 1]).all()
    # A loss of exactly 0 has no ratio.
    z = lookahead_affinity(model, x, {"a": torch.tensor([2.0], dtype=torch.float64), "b": targets["b"]}, 0.125)
    assert torch.isnan(z[:, 0]).all() and z[1, 1].item() == 0.4375


class Noisy(nn.Module):
    """A shared Linear + BatchNorm + Dropout trunk and two linear heads: BN statistics and the random state move
    in any training-mode forward."""

    tasks = ["a", "b"]

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5))
        self.heads = nn.ModuleDict({t: nn.Linear(8, 1) for t in self.tasks})

    def forward(self, x, tasks=None):
        h = self.trunk(x)
        return {t: self.heads[t](h)[:, 0] for t in (tasks or self.tasks)}

    def compute_losses(self, outputs, targets):
        return {t: ((out - targets[t]) ** 2).mean() for t, out in outputs.items()}, {}

    def shared_parameters(self):
        yield from self.trunk.parameters()


def _state(model, optimizer):
    return (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()), torch.get_rng_state(),
            [None if p.grad is None else p.grad.clone() for p in model.parameters()], model.training)


def _same(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_a_measurement_changes_nothing_and_repeats_exactly():
    model = Noisy()
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    targets = {"a": x[:, 0], "b": -x[:, 1]}
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    losses, _ = model.compute_losses(model(x), targets)
    sum(losses.values()).backward()
    optimizer.step()                                 # optimizer state and BN statistics that are not the initial
    before = _state(model, optimizer)                # with gradients left in .grad
    z = lookahead_affinity(model, x, targets, parameter_lrs(model, optimizer))
    after = _state(model, optimizer)
    assert _same(before, after)                      # parameters, BN buffers, optimizer, RNG, .grad, mode
    assert torch.isfinite(z).all() and (z.diagonal() > 0).all()
    # The same dropout masks in every forward of a measurement, and the random state put back: it repeats, and
    # with a zero learning rate nothing moves at all (a fresh mask per forward would give noise).
    assert torch.equal(lookahead_affinity(model, x, targets, 0.01), lookahead_affinity(model, x, targets, 0.01))
    assert torch.equal(lookahead_affinity(model, x, targets, 0.0), torch.zeros(2, 2))
    # The next random draw is the one it would have been without the measurement.
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    lookahead_affinity(model, x, targets, 0.01)
    assert torch.equal(torch.rand(3), expected)


def test_the_tiny_network_is_left_bit_identical(one_thread):
    cfg = tiny_config("unused")
    model = build_model(cfg.model)
    batch = next(iter(toy_loader_fn()(cfg.data, "train", ["detection", "segmentation", "depth"])))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    before = _state(model, optimizer)
    z = lookahead_affinity(model, batch.images, batch, 0.01)
    assert z.shape == (3, 3) and torch.isfinite(z).all()
    assert _same(before, _state(model, optimizer))


# ------------------------------------------------------------------------------------------------ the trainer
def test_trainer_writes_affinity_json_heat_map_and_scalars_and_trains_the_same(tmp_path, one_thread):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    on = Trainer(tiny_config(tmp_path / "on", "train.max_steps=3", "train.affinity_interval=1",
                             "train.tensorboard=true"), toy_loader_fn())
    on.fit()
    data = json.loads((tmp_path / "on" / "affinity.json").read_text())
    tasks = data["tasks"]
    assert tasks == ["detection", "segmentation", "depth"]
    assert [m["step"] for m in data["measurements"]] == [1, 2]     # before steps 2 and 3 (not at initialisation)
    for m in data["measurements"]:
        assert len(m["matrix"]) == 3 and all(len(r) == 3 and all(math.isfinite(v) for v in r) for r in m["matrix"])
        assert m["lr"] > 0
    mean = [[(data["measurements"][0]["matrix"][i][j] + data["measurements"][1]["matrix"][i][j]) / 2
             for j in range(3)] for i in range(3)]
    assert sum(data["mean"], []) == pytest.approx(sum(mean, []), rel=1e-12)
    assert data["count"] == [[2] * 3] * 3
    assert (tmp_path / "on" / "affinity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    events = EventAccumulator(str(tmp_path / "on" / "tb")).Reload()
    scalars = events.Scalars("affinity/depth->detection")
    assert [e.step for e in scalars] == [1, 2]
    assert [e.value for e in scalars] == pytest.approx([m["matrix"][2][0] for m in data["measurements"]], rel=1e-6)
    assert len([t for t in events.Tags()["scalars"] if t.startswith("affinity/")]) == 9

    # Training with the measurement is training without it, bit for bit.
    Trainer(tiny_config(tmp_path / "off", "train.max_steps=3"), toy_loader_fn()).fit()
    assert not (tmp_path / "off" / "affinity.json").exists()
    a = load_checkpoint(tmp_path / "on" / "last.pt")
    b = load_checkpoint(tmp_path / "off" / "last.pt")
    assert _same(a["model"], b["model"]) and _same(a["optimizer"], b["optimizer"]) and _same(a["rng"], b["rng"])


def test_a_resumed_run_measures_as_the_uninterrupted_one(tmp_path, one_thread):
    steps = ["train.max_steps=4", "train.checkpoint_interval=2", "train.affinity_interval=1"]
    full = train(tiny_config(tmp_path / "full", *steps), loader_fn=toy_loader_fn(train_size=6))
    cfg = tiny_config(tmp_path / "crashed", *steps)
    with pytest.raises(KeyboardInterrupt):  # after step 3 and the measurements at steps 1 and 2; last.pt at 2
        train(cfg, loader_fn=crashing_loader_fn(3))
    assert [m["step"] for m in json.loads((tmp_path / "crashed" / "affinity.json").read_text())["measurements"]] \
        == [1, 2]
    resumed = train(cfg, resume=tmp_path / "crashed" / "last.pt", loader_fn=toy_loader_fn(train_size=6))
    a = json.loads((full / "affinity.json").read_text())
    b = json.loads((resumed / "affinity.json").read_text())
    assert [m["step"] for m in b["measurements"]] == [1, 2, 3]       # step 2 measured once, again after the resume
    assert a["measurements"] == b["measurements"] and a["mean"] == b["mean"]


def test_affinity_needs_shared_parameters(tmp_path):
    with pytest.raises(ValueError, match="model.sharing=soft shares no parameters"):
        Trainer(tiny_config(tmp_path, "model.sharing=soft", "train.affinity_interval=5"), toy_loader_fn())
    with pytest.raises(ValueError, match="affinity_interval: got -1"):
        tiny_config(tmp_path, "train.affinity_interval=-1")


def test_log_mean_skips_missing_entries_and_round_trips(tmp_path):
    log = AffinityLog(["a", "b"])
    log.add(10, [[1.0, math.nan], [0.5, 2.0]], lr=0.1)
    log.add(20, [[3.0, 4.0], [1.5, 2.0]], lr=0.05)
    mean, count = log.mean()
    assert mean == [[2.0, 4.0], [1.0, 2.0]] and count == [[2, 1], [2, 2]]
    log.save(tmp_path / "affinity.json")
    data = json.loads((tmp_path / "affinity.json").read_text())
    assert data["measurements"][0]["matrix"][0][1] is None         # NaN is written as null
    again = AffinityLog.from_dict(data)
    again.keep_before(20)
    assert [m["step"] for m in again.measurements] == [10] and again.mean()[1] == [[1, 0], [1, 1]]


# ------------------------------------------------------------------------------------------------ grouping
# Three tasks, rows = source i, columns = target j; the diagonal never counts.
Z3 = [[1.0, -0.1, -0.3],
      [0.04, 1.0, -0.2],
      [-0.1, -0.05, 1.0]]
# Groups by hand (score = sum over members j of the mean of Z(i->j) over the other members i):
#   {x,y}: Z(y->x) + Z(x->y) = 0.04 - 0.1 = -0.06;  {x,z}: -0.1 - 0.3 = -0.4;  {y,z}: -0.05 - 0.2 = -0.25
#   {x,y,z}: x (0.04 - 0.1)/2 = -0.03, y (-0.1 - 0.05)/2 = -0.075, z (-0.3 - 0.2)/2 = -0.25 -> -0.355


def test_best_partitions_of_three_tasks_by_hand():
    tasks = ["x", "y", "z"]
    assert group_score([0, 1, 2], Z3) == pytest.approx(-0.355)
    one = best_partitions(tasks, Z3, 1)
    assert [g.groups for g in one] == [(("x", "y", "z"),)] and one[0].score == pytest.approx(-0.355)
    two = best_partitions(tasks, Z3, 2)
    assert [g.groups for g in two] == [(("x", "y"), ("z",)), (("x",), ("y", "z")), (("x", "y", "z"),),
                                       (("x", "z"), ("y",))]
    assert [g.score for g in two] == pytest.approx([-0.06, -0.25, -0.355, -0.4])
    three = best_partitions(tasks, Z3, 3)
    assert three[0].groups == (("x",), ("y",), ("z",)) and three[0].score == 0.0
    assert len(best_partitions(tasks, Z3, 3, top=100)) == 5        # Bell(3)


def test_best_partitions_of_four_tasks_by_hand():
    # a and b help each other much, c and d a little, every cross pair hurts.
    z = [[1.0, 0.5, -0.25, -0.25],
         [0.5, 1.0, -0.25, -0.25],
         [-0.25, -0.25, 1.0, 0.125],
         [-0.25, -0.25, 0.125, 1.0]]
    tasks = ["a", "b", "c", "d"]
    # {a,b,c,d}: a (0.5 - 0.25 - 0.25)/3 = 0, b 0, c (-0.25 - 0.25 + 0.125)/3 = -0.125, d -0.125 -> -0.25
    assert best_partitions(tasks, z, 1)[0].score == -0.25
    for networks in (2, 3, 4):  # {a,b} (1.0) + {c,d} (0.25) beats splitting c from d (1.0 + 0 + 0)
        best = best_partitions(tasks, z, networks)[0]
        assert best.groups == (("a", "b"), ("c", "d")) and best.score == 1.25 and best.group_scores == (1.0, 0.25)


def test_set_partitions_are_each_split_once():
    for n, blocks, count in [(1, 1, 1), (3, 3, 5), (4, 2, 8), (4, 4, 15), (5, 5, 52), (6, 3, 1 + 31 + 90)]:
        found = list(set_partitions(n, blocks))
        assert len(found) == count                                  # Stirling numbers of the second kind
        keys = {tuple(tuple(b) for b in p) for p in found}
        assert len(keys) == count
        assert all(sorted(i for b in p for i in b) == list(range(n)) and len(p) <= blocks for p in found)


def test_overlapping_groups_by_hand():
    # With three networks a task may sit in two: {x,y} serves x (+0.04) and {y}, {z} serve y and z alone (0),
    # which beats every partition (the best, all alone, scores 0).
    best = best_overlapping(["x", "y", "z"], Z3, 3)[0]
    assert best.groups == (("y",), ("x", "y"), ("z",)) and best.score == pytest.approx(0.04)
    assert best_overlapping(["x", "y", "z"], Z3, 1)[0].groups == (("x", "y", "z"),)


def test_pair_verdicts_in_plain_words():
    lines = pair_verdicts(["x", "y", "z"], Z3)
    assert lines[0].startswith("x + y: one-sided: y helps x, x hurts y; on balance train them apart")
    assert lines[1].startswith("x + z: they hurt each other: train them apart")
    lines = pair_verdicts(["a", "b"], [[1.0, 0.5], [0.25, 1.0]])
    assert lines[0].startswith("a + b: they help each other: share a network (pair score +75%)")
    assert "a step on a helps b (+50% of its loss, 50% of what a step on b itself does)" in lines[0]


# ------------------------------------------------------------------------------------------------ the tool
def _affinity_file(path, tasks, mean):
    path.write_text(json.dumps({"tasks": tasks, "mean": mean,
                                "measurements": [{"step": 25, "matrix": mean}, {"step": 50, "matrix": mean}]}))
    return path


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_tool_prints_the_answer_and_writes_configs_in_list_form(tmp_path, capsys):
    base = tmp_path / "train.yaml"
    base.write_text(yaml.safe_dump({"model": {"tasks": ["detection", "segmentation", "depth"]},
                                    "weighting": {"method": "uncertainty"}, "output_dir": "runs/three"}))
    aff = _affinity_file(tmp_path / "affinity.json", ["detection", "segmentation", "depth"], Z3)
    out = tmp_path / "groups"
    assert task_groups.main(["--affinity", str(aff), "--networks", "2", "--config", str(base),
                             "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "(2 measurements, steps 25..50)" in text
    assert "1. {detection, segmentation}  {depth}   score -6%" in text
    assert "answer: not all together" in text and "detection + depth: they hurt each other" in text
    files = sorted(out.glob("*.yaml"))
    assert [f.name for f in files] == ["group1_detection_segmentation.yaml", "group2_depth.yaml"]
    first, second = (load_config(f) for f in files)
    assert first.model.tasks == ["detection", "segmentation"] and first.output_dir == "runs/three_group1_" \
        "detection_segmentation" and first.weighting.method == "uncertainty"
    assert second.model.tasks == ["depth"] and second.weighting.method == "equal"
    assert yaml.safe_load(files[0].read_text())["_base_"] == "../train.yaml"


def test_tool_writes_configs_in_mapping_form(tmp_path, capsys):
    tasks = {"cars": {"type": "detection", "num_classes": 2}, "road": {"type": "segmentation", "num_classes": 4},
             "dist": {"type": "depth"}}
    parent = tmp_path / "parent.yaml"
    parent.write_text(yaml.safe_dump({"model": {"tasks": tasks}, "train": {"lr": 0.005}}))
    base = tmp_path / "train.yaml"
    base.write_text(yaml.safe_dump({"_base_": "parent.yaml", "output_dir": "runs/m"}))
    aff = _affinity_file(tmp_path / "affinity.json", ["cars", "road", "dist"], Z3)
    assert task_groups.main(["--affinity", str(aff), "--networks", "2", "--config", str(base)]) == 0
    files = sorted((tmp_path / "groups").glob("*.yaml"))          # the default --out: next to the affinity file
    first = load_config(files[0])
    assert first.model.task_names == ["cars", "road"] and first.train.lr == 0.005
    assert first.model.tasks == {"cars": tasks["cars"], "road": tasks["road"]}
    assert load_config(files[1]).model.task_names == ["dist"]
    capsys.readouterr()


def test_tool_averages_several_runs(tmp_path, capsys):
    double = _affinity_file(tmp_path / "a.json", ["x", "y", "z"], [[2 * v for v in row] for row in Z3])
    zero = _affinity_file(tmp_path / "b.json", ["x", "y", "z"], [[0.0] * 3] * 3)
    assert task_groups.main(["--affinity", str(double), str(zero), "--networks", "2"]) == 0
    text = capsys.readouterr().out
    assert "mean of 2 runs" in text and "1. {x, y}  {z}   score -6%" in text     # the mean is Z3
    assert "range over the runs (min .. max)" in text and "-60% .. +0%" in text  # Z(x->z): -0.6 and 0


@pytest.mark.parametrize("case, expected", [
    ("missing", "nope.json: No such file or directory"),
    ("not_json", "not valid JSON"),
    ("no_mean", "missing key 'mean'"),
    ("not_square", "'mean' must be a 3x3 matrix"),
    ("null", "mean[0][1] (x -> y) is None"),
    ("zero_networks", "--networks: got 0, expected at least 1"),
    ("other_config", "not the affinity's task 'x'"),
    ("out_without_config", "--out: the group configs need --config"),
    ("other_tasks", "runs to average must measure the same tasks"),
])
def test_tool_bad_inputs_end_with_one_line_and_exit_2(tmp_path, capsys, case, expected):
    aff = tmp_path / "affinity.json"
    args, files = ["--networks", "2"], []
    if case == "missing":
        aff = tmp_path / "nope.json"
    elif case == "not_json":
        aff.write_text("{tasks: ")
    elif case == "no_mean":
        aff.write_text(json.dumps({"tasks": ["x", "y", "z"]}))
    elif case == "not_square":
        _affinity_file(aff, ["x", "y", "z"], [row[:2] for row in Z3])
    elif case == "null":
        _affinity_file(aff, ["x", "y", "z"], [[1.0, None, 0.0], *Z3[1:]])
    else:
        _affinity_file(aff, ["x", "y", "z"], Z3)
    if case == "zero_networks":
        args = ["--networks", "0"]
    elif case == "other_config":
        base = tmp_path / "train.yaml"
        base.write_text(yaml.safe_dump({"model": {"tasks": ["depth"]}}))
        args += ["--config", str(base)]
    elif case == "out_without_config":
        args += ["--out", str(tmp_path / "o")]
    elif case == "other_tasks":
        files.append(str(_affinity_file(tmp_path / "b.json", ["x", "y", "w"], Z3)))
    assert task_groups.main(["--affinity", str(aff), *files, *args]) == 2
    assert expected in _error_line(capsys.readouterr().err)


def test_tool_as_a_script_exits_2_on_a_missing_file(tmp_path):
    from _tool_utils import run_script

    result = run_script("tools/task_groups.py", "--affinity", str(tmp_path / "none.json"), "--networks", "2")
    assert result.returncode == 2 and "none.json: No such file or directory" in _error_line(result.stderr)
