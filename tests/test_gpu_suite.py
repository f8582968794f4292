"""The GPU suite's script works before any GPU time is spent: its smoke run on the CPU, and its sync check's wiring."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_suite_smoke_on_the_cpu(tiny_data, tmp_path):
    log = tmp_path / "suite.log"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--smoke", "--tune", "--device", "cpu",
         "--data", str(tiny_data), "--log", str(log)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    table = done.stdout[done.stdout.index("== GPU suite"):]
    assert "FAILED" not in done.stdout, done.stdout
    for row in ("bf16 matmul peak", "d2l vs book (smoke)", "fast preset, seed(s) 0", "best preset, seed(s) 0",
                "fast step: model FLOP/s", "fast step: eager vs --compile-mode reduce-overhead",
                "host syncs inside steps", "pytest -m gpu", "tune fast"):
        assert row in table, (row, table)
    assert "n/a on cpu" in table.split("host syncs inside steps")[1].splitlines()[0]
    assert log.read_text().strip().endswith(done.stdout.strip().splitlines()[-1])  # every line copied to the log


def test_host_syncs_are_errors_in_the_steps_and_allowed_at_the_guards_readings(tiny_data, tmp_path, monkeypatch):
    # The sync debug mode needs CUDA; here a stand-in records which mode each part of the loop runs under.
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import torch

    from host_syncs import syncs_are_errors, where_synced
    from resnetlab.engine import fit
    from resnetlab.engine.step import StepGuard, Training
    from resnetlab.engine.loop import Loop
    from helpers import plain_config

    mode = {"now": 0}
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: mode["now"])
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", lambda m: mode.update(now={"default": 0, "error": 2}.get(m, m)))
    seen = {"step": set(), "read": set()}
    real_step, real_read = Training.train_step, StepGuard.read

    def step(self, *args, **kwargs):
        seen["step"].add(mode["now"])
        return real_step(self, *args, **kwargs)

    def read(self):
        seen["read"].add(mode["now"])
        return real_read(self)

    monkeypatch.setattr(Training, "train_step", step)
    monkeypatch.setattr(StepGuard, "read", read)
    train_epoch = Loop._train_epoch
    config = plain_config(data=str(tiny_data), model="resnet18", image_size=28, val_split=100, limit_train=100,
                          limit_test=50, recalibrate_bn=0, batch_size=50, epochs=1, precision="fp32", out=str(tmp_path / "r"))
    with syncs_are_errors():
        fit(config, log=lambda line: None)
    assert seen == {"step": {2}, "read": {0}} and mode["now"] == 0
    assert Loop._train_epoch is train_epoch  # the loop is as it was
    try:
        raise RuntimeError("called a synchronizing CUDA operation")
    except RuntimeError as exc:
        assert where_synced(exc) == "called a synchronizing CUDA operation"  # raised outside resnetlab
    from resnetlab.config import TrainConfig, validate
    from resnetlab.errors import ResnetlabError

    with pytest.raises(ResnetlabError) as raised:
        validate(TrainConfig(epochs=0))
    assert where_synced(raised.value, short=True).startswith("resnetlab/config/fields.py:")  # the innermost line in it
