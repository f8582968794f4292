"""--time-budget: the run measures its speed, fixes its steps, ends within the budget; resume and --config repeat it exactly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from resnetlab.engine import TrainConfig
from resnetlab.engine.optim import lr_factor, measure_steps

ARGS = ["--model", "d2l_resnet18", "--val-split", "100", "--batch-size", "32", "--lr", "0.05", "--precision", "fp32",
        "--no-channels-last", "--epochs", "200", "--recalibrate-bn", "64"]


def train(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "resnetlab", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_the_schedule_spans_the_steps_bought_and_the_measured_steps_are_those_of_the_ceiling():
    config = TrainConfig(epochs=10, schedule="onecycle", warmup_epochs=0.5, time_budget=1.0).with_defaults()
    bought = config.replace(max_steps=40)
    measured = measure_steps(config, 20)
    assert measured == 20
    for step in range(measured):  # before the figure is known: the ceiling's schedule, in both
        assert lr_factor(step, bought, 20) == lr_factor(step, config, 20)
    assert lr_factor(39, bought, 20) == pytest.approx(1 / 30)  # decays to zero at the 40 steps bought
    assert lr_factor(39, config, 20) == pytest.approx(1 - 29 / 190)  # where 200 steps would still be near the peak


@pytest.mark.slow
def test_a_budgeted_run_ends_within_its_budget(tiny_data, tmp_path):
    run = tmp_path / "run"
    start = time.monotonic()
    proc = train("--data", str(tiny_data), *ARGS, "--time-budget", "0.4", "--out", str(run))
    out, err = proc.communicate(timeout=120)
    wall = time.monotonic() - start
    assert proc.returncode == 0, err
    assert wall < 0.4 * 60 * 1.25, wall  # a generous margin: the start-up of this subprocess is counted too
    config = json.loads((run / "config.json").read_text())
    bought = config["max_steps"]
    assert 0 < bought < 200 * 15  # 500 images at batch 32: 15 steps an epoch, 200 epochs would not fit
    line = next(line for line in out.splitlines() if "min budget:" in line)
    assert line.startswith("0.4 min budget: ") and f"({bought:,} steps) at " in line and line.endswith(" img/s")
    assert json.loads((run / "results.json").read_text())["total_seconds"] < 0.4 * 60


@pytest.mark.slow
def test_a_budgeted_run_resumes_exactly_and_repeats_from_its_config(tiny_data, tmp_path):
    run = tmp_path / "stopped"
    proc = train("--data", str(tiny_data), *ARGS, "--time-budget", "0.3", "--save-every", "4", "--out", str(run))
    deadline = time.monotonic() + 60
    while not (run / "train_state.pt").exists() or json.loads((run / "config.json").read_text())["max_steps"] is None:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() is not None else "slow"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # after the figure is fixed, mid-run
    proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert proc.returncode == 143
    resumed = train("--resume", str(run))
    assert resumed.wait(timeout=120) == 0, resumed.stderr.read()
    # The run's own config.json, which holds the steps the budget bought, repeats it from scratch.
    again = train("--config", str(run / "config.json"), "--out", str(tmp_path / "again"))
    assert again.wait(timeout=120) == 0, again.stderr.read()
    a, b = load_file(str(run / "last.safetensors")), load_file(str(tmp_path / "again" / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "again" / "config.json").read_text())["max_steps"] == \
        json.loads((run / "config.json").read_text())["max_steps"]
