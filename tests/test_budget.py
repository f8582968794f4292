"""--time-budget: the planner's arithmetic, the schedule across re-plans, and whole runs on a fake clock.

Every budget decision here is made on :class:`helpers.FakeClock`, which moves only when a step or
an evaluation says it took time, so the outcome is the same on any machine. One smoke test runs
the real command on the real clock and checks only what does not depend on its speed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import resnetlab.engine.loop as train_module
from helpers import FakeClock, plain_config
from resnetlab.engine import TrainConfig, fit, resume
from resnetlab.engine.budget import Costs, affordable_steps, estimated_costs, measure_until
from resnetlab.config import load_config_file
from resnetlab.engine.schedule import lr_factor
from resnetlab.config import with_base_defaults
from resnetlab.engine.step import Training
from resnetlab.errors import ResnetlabError, TrainingStopped

# --- the planner, a pure function ----------------------------------------------------------------


def cost_of(total, done, steps_per_epoch, costs):
    """What a run of ``total`` steps still costs from ``done`` (the planner's own model, written out)."""
    epochs_left = -(-total // steps_per_epoch) - done // steps_per_epoch
    return (total - done) * costs.step + epochs_left * costs.epoch_end + costs.final


@pytest.mark.parametrize("done", [0, 20, 100, 137])
@pytest.mark.parametrize("budget", [30.0, 100.0, 600.0])
def test_the_planner_buys_the_most_steps_that_fit(done, budget):
    costs = Costs(step=0.5, epoch_end=4.0, final=6.0)
    elapsed = 12.0
    steps = affordable_steps(budget_seconds=budget, elapsed=elapsed, done=done, steps_per_epoch=50, ceiling=400,
                             costs=costs)
    assert done <= steps <= 400
    room = budget * 0.95 - elapsed  # the reserve is 5%
    if steps > done:
        assert cost_of(steps, done, 50, costs) <= room + 1e-9
    if steps < 400:  # one step more would not fit (it may open a new epoch, with its own end)
        assert cost_of(steps + 1, done, 50, costs) > room


def test_the_planner_never_goes_below_the_steps_done_or_above_the_ceiling():
    costs = Costs(step=1.0, epoch_end=1.0, final=1.0)
    assert affordable_steps(budget_seconds=10, elapsed=50, done=30, steps_per_epoch=10, ceiling=100, costs=costs) == 30
    assert affordable_steps(budget_seconds=1e9, elapsed=0, done=30, steps_per_epoch=10, ceiling=100, costs=costs) == 100
    # Steps measured to cost nothing (or not a number) buy nothing once the time is spent, and everything while it is not.
    for step in (0.0, float("nan")):
        free = Costs(step=step, epoch_end=1.0, final=1.0)
        assert affordable_steps(budget_seconds=60, elapsed=1000, done=30, steps_per_epoch=10, ceiling=100, costs=free) == 30
        assert affordable_steps(budget_seconds=600, elapsed=0, done=30, steps_per_epoch=10, ceiling=100, costs=free) == 100


def test_estimated_costs_follow_the_step_time():
    costs = estimated_costs(0.32, batch_size=32, epoch_end_images=1000, final_images=2000, tta=True)
    image = 0.32 / 32 * 0.5 * 2  # an evaluated image: half a trained one, twice with TTA
    assert costs.step == 0.32
    assert costs.epoch_end == pytest.approx(1000 * image + 1.5) and costs.final == pytest.approx(2000 * image + 1.5)
    assert measure_until(0, 1000) == 20 and measure_until(0, 40) == 10 and measure_until(500, 520) == 505


# --- the schedule across decisions ---------------------------------------------------------------


def test_the_schedule_spans_the_steps_bought_and_the_measured_steps_are_those_of_the_ceiling():
    config = with_base_defaults(TrainConfig(epochs=10, schedule="onecycle", warmup_epochs=0.5, time_budget=1.0))
    plan = [[20, 40]]
    for step in range(20):  # before the first decision: the ceiling's schedule, with or without the plan
        assert lr_factor(step, config, 20, plan) == lr_factor(step, config, 20)
    # From the decision on, the decay goes from where the ceiling's schedule stood (10 of its 190 steps) to zero at 40.
    at_decision = 10 / 190
    assert lr_factor(39, config, 20, plan) == pytest.approx(1 - (at_decision + (1 - at_decision) * 19 / 20))
    assert lr_factor(40, config, 20, plan) == 0.0
    assert lr_factor(39, config, 20) == pytest.approx(1 - 29 / 190)  # where 200 steps would still be near the peak


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_a_replan_continues_the_decay_without_a_jump(schedule):
    config = with_base_defaults(TrainConfig(epochs=20, schedule=schedule, warmup_epochs=1.0, time_budget=1.0))
    spe = 10
    plan = [[20, 150], [60, 100], [80, 130]]  # bought 150, lowered to 100 at step 60, raised to 130 at step 80
    factors = [lr_factor(step, config, spe, plan) for step in range(130)]
    steps_each = [abs(a - b) for a, b in zip(factors, factors[1:])]
    assert max(steps_each[10:]) < 0.05  # after the warm-up, no step moves the lr by more than a few percent
    assert factors[59] == pytest.approx(lr_factor(59, config, spe, plan[:1]))  # the lr up to a decision is the old plan's
    assert factors[-1] < 0.02 and factors[-1] >= 0  # and the last step of the last plan is at the end of the decay
    shorter = [lr_factor(step, config, spe, plan[:2]) for step in range(100)]
    assert shorter[-1] < 0.03  # the lowered plan on its own also ends at the bottom of its decay


def test_constant_and_step_schedules_keep_their_warmup_and_peak_under_a_budget():
    for schedule in ("constant", "step"):
        config = with_base_defaults(TrainConfig(epochs=20, schedule=schedule, warmup_epochs=2.0, time_budget=1.0))
        factors = [lr_factor(step, config, 50, [[20, 60]]) for step in range(60)]
        assert factors == [lr_factor(step, config, 50) for step in range(60)]  # a plan only ends them sooner


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
@pytest.mark.parametrize("plan", [[[20, 30]], [[5, 12]], [[20, 150]], [[20, 4000], [100, 180]]])
def test_a_budget_that_shortens_the_warmup_never_jumps(schedule, plan):
    # Two epochs of 50 steps of warm-up; budgets that bought less than twice that cut it short.
    config = with_base_defaults(TrainConfig(epochs=20, schedule=schedule, warmup_epochs=2.0, time_budget=1.0))
    factors = [lr_factor(step, config, 50, plan) for step in range(plan[-1][1])]
    assert max(abs(a - b) for a, b in zip(factors, factors[1:])) <= 0.035  # the warm-up's own slope is 0.01 a step
    assert factors[:5] == pytest.approx([0.01, 0.02, 0.03, 0.04, 0.05])  # the warm-up as planned until the decision
    assert factors[-1] <= 0.03  # and the decay still ends near zero at the last step bought


# --- whole runs on a fake clock ------------------------------------------------------------------

STEP_SECONDS = 1.0  # what a training step "takes" on the fake clock before the change
EVAL_IMAGE_SECONDS = STEP_SECONDS / 32 * 0.5  # what the planner's estimate assumes for an evaluated image
BUDGET_MINUTES = 1.0


def budgeted(tiny_data, tmp_path, name, minutes=BUDGET_MINUTES, **changes):
    """A run of up to 30 epochs of 15 steps that a budget of ``minutes`` on the fake clock cuts short."""
    return plain_config(data=str(tiny_data), model="d2l_resnet18", val_split=100, limit_train=480, batch_size=32,
                        epochs=30, lr=0.05, schedule="onecycle", warmup_epochs=0.5, precision="fp32",
                        channels_last=False, recalibrate_bn=0, time_budget=minutes, out=str(tmp_path / name),
                        # TensorBoard's end-of-run pass over the test split is not on the fake clock; without it the
                        # costs below are all the run has.
                        tensorboard=False, **changes)


@pytest.fixture
def fake_time(monkeypatch):
    """A fake clock that a training step moves by ``speed(step)`` seconds and an evaluation by its images' cost."""
    clock = FakeClock()
    speed = {"of": lambda step: STEP_SECONDS}
    real_step, real_evaluate = Training.train_step, train_module.evaluate

    def step(self, x, y, global_step, stop_requested=False):
        clock.advance(speed["of"](global_step))
        return real_step(self, x, y, global_step, stop_requested)

    def evaluate(net, loader, **kwargs):
        clock.advance(loader.num_examples * EVAL_IMAGE_SECONDS)
        return real_evaluate(net, loader, **kwargs)

    monkeypatch.setattr(Training, "train_step", step)
    monkeypatch.setattr(train_module, "evaluate", evaluate)
    return clock, speed


def quiet(_):
    pass


@pytest.mark.slow
def test_steps_that_slow_down_after_the_measurement_still_end_within_the_budget(fake_time, tiny_data, tmp_path):
    clock, speed = fake_time
    speed["of"] = lambda step: STEP_SECONDS if step < 20 else 1.3 * STEP_SECONDS  # 30% slower after step 20
    lines = []
    result = fit(budgeted(tiny_data, tmp_path, "slower", minutes=2.0), log=lines.append, clock=clock, started=clock())
    plan = json.loads((tmp_path / "slower" / "config.json").read_text())["budget_plan"]
    assert plan[0][0] == 20  # measured over the first 20 steps
    at_full_speed = max(total for at, total in plan if at <= 20)
    # Kept, that plan would have overrun: its steps at the slower speed, an evaluation of the 100 validation
    # images per epoch and the final test of 200 take longer than the budget.
    evaluations = (-(-at_full_speed // 15) * 100 + 200) * EVAL_IMAGE_SECONDS
    assert 20 * STEP_SECONDS + (at_full_speed - 20) * 1.3 * STEP_SECONDS + evaluations > 2.0 * 60
    assert plan[-1][1] < at_full_speed and any("re-planned at epoch" in line for line in lines)
    assert result.total_seconds <= 2.0 * 60


@pytest.mark.slow
def test_steps_that_speed_up_after_the_measurement_use_the_time(fake_time, tiny_data, tmp_path):
    clock, speed = fake_time
    speed["of"] = lambda step: STEP_SECONDS if step < 20 else 0.7 * STEP_SECONDS  # 30% faster after step 20
    result = fit(budgeted(tiny_data, tmp_path, "faster", minutes=2.0), log=quiet, clock=clock, started=clock())
    plan = json.loads((tmp_path / "faster" / "config.json").read_text())["budget_plan"]
    assert plan[-1][1] > max(total for at, total in plan if at <= 20)  # raised once the speed-up was measured
    assert 0.85 * 2.0 * 60 <= result.total_seconds <= 2.0 * 60


def test_the_budget_counts_from_the_start_it_is_given(fake_time, tiny_data, tmp_path):
    clock, _ = fake_time
    late = clock() - 0.9 * BUDGET_MINUTES * 60  # as if 90% of the budget had gone before the run began
    result = fit(budgeted(tiny_data, tmp_path, "late"), log=quiet, clock=clock, started=late)
    plan = json.loads((tmp_path / "late" / "config.json").read_text())["budget_plan"]
    assert plan == [[20, 20]]  # nothing left to buy beyond the measured steps
    assert len(result.history) == 2 and result.history[-1]["epoch"] == 2  # an epoch and a third, its end included


def test_a_plan_that_ends_the_run_at_an_epoch_start_is_recorded(fake_time, tiny_data, tmp_path):
    clock, speed = fake_time
    speed["of"] = lambda step: STEP_SECONDS if step < 20 else 3 * STEP_SECONDS  # three times slower after step 20
    result = fit(budgeted(tiny_data, tmp_path, "cut"), log=quiet, clock=clock, started=clock())
    plan = json.loads((tmp_path / "cut" / "config.json").read_text())["budget_plan"]
    steps = len(result.history) * 15
    assert plan[-1] == [steps, steps]  # the last decision, at an epoch's start, ended the run there, and says so
    assert result.total_seconds <= BUDGET_MINUTES * 60


def test_a_given_plan_that_does_not_fit_the_epochs_is_refused(tiny_data, tmp_path):
    config = budgeted(tiny_data, tmp_path, "given", budget_plan=[[20, 10_000]])
    with pytest.raises(ResnetlabError, match=r"^budget_plan buys 10,000 steps, more than the 30 epochs of 15 steps allow"):
        fit(config, log=quiet)
    assert not (tmp_path / "given").exists()


@pytest.mark.slow
def test_a_stopped_budgeted_run_resumes_and_its_config_repeats_it_exactly(fake_time, tiny_data, tmp_path, monkeypatch):
    clock, speed = fake_time
    speed["of"] = lambda step: STEP_SECONDS if step < 33 else 1.2 * STEP_SECONDS
    stop_at = {"step": 27}
    real_step = Training.train_step

    def step(self, x, y, global_step, stop_requested=False):
        if global_step == stop_at["step"]:  # after the first decision, mid-epoch: as a scheduler's SIGTERM
            stop_at["step"] = None
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(self, x, y, global_step, stop_requested)

    monkeypatch.setattr(Training, "train_step", step)
    run = tmp_path / "stopped"
    with pytest.raises(TrainingStopped):
        fit(budgeted(tiny_data, tmp_path, "stopped", save_every=4), log=quiet, clock=clock, started=clock())
    assert stop_at["step"] is None
    resumed = resume(run, log=quiet, clock=clock, started=clock())
    plan = json.loads((run / "config.json").read_text())["budget_plan"]
    assert plan[0][0] == 20 and resumed.total_seconds <= BUDGET_MINUTES * 60
    # The run's own config.json, which holds the decisions, repeats it from scratch without measuring.
    again = TrainConfig.from_dict(load_config_file(run / "config.json")).replace(out=str(tmp_path / "again"))
    fit(again, log=quiet, clock=FakeClock(), started=0.0)
    a, b = load_file(str(run / "last.safetensors")), load_file(str(tmp_path / "again" / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "again" / "config.json").read_text())["budget_plan"] == plan


# --- the command line's start ----------------------------------------------------------------------


def test_an_in_process_command_counts_from_its_own_call_and_the_script_from_its_process_start(monkeypatch):
    import resnetlab.cli as cli
    import resnetlab.cli.train as train_command

    seen = {}
    monkeypatch.setattr(train_command, "fit", lambda config, started: seen.update(started=started))
    before = time.monotonic()
    assert cli.main(["train", "--epochs", "1"]) == 0
    assert before <= seen["started"] <= time.monotonic()  # however long this process has run

    monkeypatch.setattr(cli, "process_age", lambda: 42.0)
    monkeypatch.setattr(cli, "main", lambda started: seen.update(script=started) or 0)
    before = time.monotonic()
    with pytest.raises(SystemExit):
        cli.run()
    assert before - 42.0 <= seen["script"] <= time.monotonic() - 42.0  # the console script counts start-up too


@pytest.mark.slow
def test_a_budgeted_command_on_the_real_clock(tiny_data, tmp_path):
    # Only what holds at any speed: it finishes, says what it bought, and records the decisions.
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "resnetlab", "train", "--data", str(tiny_data), "--model", "d2l_resnet18",
                           "--val-split", "100", "--batch-size", "32", "--lr", "0.05", "--precision", "fp32",
                           "--epochs", "200", "--time-budget", "0.3", "--out", str(run)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    plan = json.loads((run / "config.json").read_text())["budget_plan"]
    line = next(line for line in done.stdout.splitlines() if "min budget:" in line)
    assert line.startswith("0.3 min budget: ") and f"({plan[0][1]:,} steps) at " in line and line.endswith(" img/s")
    assert plan[0][0] == 20 and all(at <= total for at, total in plan)
