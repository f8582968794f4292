"""Hooks: the loop's events reach a caller's hook in order, and the documented example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

from helpers import plain_config, write_fashion_mnist
from resnetlab.engine import Hook, fit

DOCS = Path(__file__).resolve().parents[1] / "docs" / "hooks.md"


class Recorder(Hook):
    def __init__(self):
        self.events = []

    def on_run_start(self, loop):
        self.events.append("run_start")

    def on_epoch_start(self, loop):
        self.events.append(f"epoch_start {loop.run.progress.epoch + 1}")

    def after_step(self, loop):
        self.events.append("step")

    def at_check(self, loop):
        assert loop.reading is not None and not loop.reading.halted
        self.events.append("check")

    def on_steps_end(self, loop):
        self.events.append("steps_end")

    def on_epoch_end(self, loop, row):
        self.events.append(f"epoch_end {row['epoch']}")

    def on_run_end(self, loop, result):
        self.events.append(f"run_end {result.best_epoch}")


def test_a_hook_sees_every_event_in_order(tiny_data, tmp_path):
    hook = Recorder()
    result = fit(plain_config(data=str(tiny_data), model="d2l_resnet18", val_split=100, limit_train=100, limit_test=50,
                              batch_size=50, epochs=2, precision="fp32", recalibrate_bn=0, out=str(tmp_path / "run")),
                 log=lambda line: None, hooks=[hook])
    epoch = ["step", "check", "step", "check", "steps_end"]  # 2 steps; on the CPU every step is a check point
    assert hook.events == ["run_start", "epoch_start 1", *epoch, "epoch_end 1", "epoch_start 2", *epoch, "epoch_end 2",
                           f"run_end {result.best_epoch}"]


def test_the_documented_example_runs(tmp_path, monkeypatch, capsys):
    code = re.search(r"```python\n(.*?)```", DOCS.read_text(), re.S).group(1)
    # As written, on generated data large enough for the preset's 5,000 validation images (and 600 to train on).
    monkeypatch.setenv("RESNETLAB_DATA", str(write_fashion_mnist(tmp_path / "data", n_train=5600, n_test=100)))
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, str(DOCS), "exec"), scope)
    rows = scope["log"].rows
    assert [r["epoch"] for r in rows] == [1, 2] and scope["log"].config["epochs"] == 2
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(f"{scope['log'].config['lr']} [{{'epoch': 1")


def test_the_readme_tracker_runs(tmp_path, monkeypatch, capsys):
    readme = DOCS.parents[1] / "README.md"
    code = re.search(r"```python\n(import resnetlab\n\nclass ToMyLogger.*?)```", readme.read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RESNETLAB_DATA", str(write_fashion_mnist(tmp_path / "data", n_train=5600, n_test=100)))
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "params" in out and re.search(r"^epoch 2 val acc [01]\.\d+$", out, re.M), out

