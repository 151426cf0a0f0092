"""Task scheduling: which tasks each step trains, deterministically, and what a scheduled-out task keeps."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from _mtl_utils import TinyMultiTask, mse_losses, regression_data
from perception.mtl import (LossRatioScheduler, RandomScheduler, RoundRobinScheduler, TaskScheduleConfig,
                            TaskScheduler, UncertaintyWeighting, build_task_scheduler)

TASKS = ["detection", "segmentation", "depth"]


def test_all_and_round_robin_schedules():
    assert [build_task_scheduler(TaskScheduleConfig(), TASKS).select(s) for s in range(2)] == [TASKS, TASKS]
    one = build_task_scheduler(TaskScheduleConfig(method="round_robin"), TASKS)
    assert isinstance(one, RoundRobinScheduler)
    assert [one.select(s) for s in range(4)] == [["detection"], ["segmentation"], ["depth"], ["detection"]]
    two = RoundRobinScheduler(TASKS, tasks_per_step=2)
    # Steps take tasks (0, 1), (2, 0), (1, 2): every task equally often, returned in the model's order.
    assert [two.select(s) for s in range(3)] == [["detection", "segmentation"], ["detection", "depth"],
                                                 ["segmentation", "depth"]]


def test_random_schedule_is_uniform_and_a_function_of_seed_and_step():
    scheduler = build_task_scheduler(TaskScheduleConfig(method="random", tasks_per_step=2), TASKS, seed=7)
    assert isinstance(scheduler, RandomScheduler)
    picks = [scheduler.select(s) for s in range(3000)]
    assert all(len(p) == 2 and p == sorted(p, key=TASKS.index) for p in picks)
    counts = Counter(t for p in picks for t in p)
    assert all(abs(counts[t] / 3000 - 2 / 3) < 0.03 for t in TASKS)
    # A resumed run (a fresh scheduler, same seed) picks the same tasks at the same steps; another seed does not.
    again = RandomScheduler(TASKS, tasks_per_step=2, seed=7)
    assert [again.select(s) for s in range(2999, -1, -1)] == picks[::-1]
    other = RandomScheduler(TASKS, tasks_per_step=2, seed=8)
    assert [other.select(s) for s in range(50)] != picks[:50]


def test_loss_ratio_schedule_samples_in_proportion_to_the_loss_ratio():
    scheduler = LossRatioScheduler(TASKS, tasks_per_step=1, temperature=1.0, seed=0)
    np.testing.assert_allclose(scheduler.probabilities(), np.full(3, 1 / 3))   # nothing observed: uniform
    scheduler.observe({"detection": 4.0, "segmentation": 2.0, "depth": 1.0})
    scheduler.observe({"detection": 1.0, "segmentation": 1.0, "depth": float("nan")})  # a NaN is not learned
    # Ratios L_recent / L_first: 1/4, 1/2, 1 -> probabilities 1:2:4.
    np.testing.assert_allclose(scheduler.probabilities(), np.array([1, 2, 4]) / 7)
    counts = Counter(scheduler.select(s)[0] for s in range(7000))
    for task, p in zip(TASKS, np.array([1, 2, 4]) / 7):
        assert counts[task] / 7000 == pytest.approx(p, abs=0.02)
    soft = LossRatioScheduler(TASKS, temperature=2.0)
    soft.load_state_dict(scheduler.state_dict())                      # round trip (what checkpoints keep)
    w = np.sqrt(np.array([0.25, 0.5, 1.0]))
    np.testing.assert_allclose(soft.probabilities(), w / w.sum())
    assert soft.state_dict() == {"first": {"detection": 4.0, "segmentation": 2.0, "depth": 1.0},
                                 "recent": {"detection": 1.0, "segmentation": 1.0, "depth": 1.0}}


def test_bad_schedules_are_named():
    with pytest.raises(ValueError, match="tasks_per_step.*1 to 3"):
        build_task_scheduler(TaskScheduleConfig(method="random", tasks_per_step=4), TASKS)
    with pytest.raises(ValueError, match="temperature"):
        LossRatioScheduler(TASKS, temperature=0.0)
    assert TaskScheduler(TASKS).state_dict() == {}


def test_a_scheduled_out_task_keeps_its_head_and_weighting_untouched():
    torch.manual_seed(0)
    model = TinyMultiTask(TASKS)
    weighting = UncertaintyWeighting(TASKS)
    x, y = regression_data(TASKS)
    optimizer = torch.optim.AdamW(list(model.parameters()) + list(weighting.parameters()), lr=1e-2,
                                  weight_decay=0.1)
    scheduler = RoundRobinScheduler(TASKS)
    for step in range(3):                                             # every task trains once (Adam state exists)
        optimizer.zero_grad()
        weighting.backward(mse_losses(model(x, tasks=scheduler.select(step)), y), model.shared_parameters)
        optimizer.step()
    frozen = {t: [p.detach().clone() for p in model.heads[t].parameters()] + [weighting.log_vars[t].detach().clone()]
              for t in ("segmentation", "depth")}
    trunk = [p.detach().clone() for p in model.trunk.parameters()]
    optimizer.zero_grad()
    active = scheduler.select(3)
    assert active == ["detection"]
    weighting.backward(mse_losses(model(x, tasks=active), y), model.shared_parameters)
    optimizer.step()
    for t, before in frozen.items():                                  # no gradient: even AdamW leaves them alone
        after = list(model.heads[t].parameters()) + [weighting.log_vars[t]]
        assert all(torch.equal(a, b) for a, b in zip(after, before))
    assert not all(torch.equal(a, b) for a, b in zip(model.trunk.parameters(), trunk))
