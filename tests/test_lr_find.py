"""The learning-rate range test: its rule, the model and optimiser left as they were, and ``resnetlab lr-find``."""

from __future__ import annotations

import math

import pytest
import torch

import resnetlab
from helpers import one_line_error, plain_config
from resnetlab.cli import main
from resnetlab.engine.lr_find import LrFindResult, range_test
from resnetlab.engine.setup import set_up


def test_the_suggestion_is_a_tenth_of_the_rate_at_the_smoothed_minimum():
    lrs = [10 ** (-5 + i / 2) for i in range(10)]  # 1e-5 ... 10^-0.5, a half decade a step
    smoothed = [2.3, 2.29, 2.2, 1.9, 1.4, 1.1, 1.0, 1.3, 3.0, 9.0]
    result = LrFindResult(lrs=lrs, losses=smoothed, smoothed=smoothed, stopped="test")
    assert result.minimum_lr == lrs[6] and result.suggestion == pytest.approx(lrs[6] / 10)
    assert result.steepest_lr == lrs[3]  # 1.9 -> 1.4: the largest fall per half decade
    lines = result.lines()
    assert "suggested lr 0.001 (rule: a tenth of lr 0.01, where the smoothed loss was lowest, 1.000)" in lines[1]


def tiny_run(tiny_data, **fields):
    config = plain_config(model="resnet18", model_args={"stem": "small"}, data=str(tiny_data), val_split=100,
                          limit_train=300, batch_size=50, lr=0.1, momentum=0.9, precision="fp32", epochs=1, **fields)
    return set_up(config, lambda line: None, keep=False)


def test_the_range_test_puts_the_model_and_optimiser_back(tiny_data):
    run = tiny_run(tiny_data, grad_clip=2.0, ema_decay=0.9)
    training = run.training
    batches = run.loaders.train.batches(0)
    training.train_step(*next(batches), 0)  # a step first, so that the optimiser has momentum to keep
    model_before = {k: v.clone() for k, v in training.model.state_dict().items()}
    optimizer_before = [s["momentum_buffer"].clone() for s in training.optimizer.state.values()]
    lrs_before = [g["lr"] for g in training.optimizer.param_groups]
    scheduler, ema, guard = training.scheduler, training.ema, training.guard
    result = range_test(training, batches, start_lr=1e-4, end_lr=1.0, steps=4)
    assert len(result.lrs) == 4 and result.lrs[0] == pytest.approx(1e-4) and result.lrs[-1] == pytest.approx(1.0)
    assert all(math.isfinite(v) for v in result.losses)
    after = training.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in model_before.items())  # weights and batch-norm statistics
    assert all(torch.equal(s["momentum_buffer"], b) for s, b in zip(training.optimizer.state.values(), optimizer_before))
    assert [g["lr"] for g in training.optimizer.param_groups] == lrs_before
    assert (training.scheduler, training.ema, training.guard) == (scheduler, ema, guard)


def test_the_range_test_stops_on_a_non_finite_loss(tiny_data):
    run = tiny_run(tiny_data)
    result = range_test(run.training, run.loaders.train.batches(0), start_lr=1e-3, end_lr=1e30, steps=5)
    assert result.stopped.startswith(("the loss was not finite", "the smoothed loss passed"))
    assert result.suggestion < 1e30


def test_lr_find_command_draws_and_suggests_without_a_run_folder(tiny_data, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["lr-find", "--data", str(tiny_data), "--model", "resnet18", "--model-args", '{"stem": "small"}',
                 "--limit-train", "300", "--val-split", "100", "--batch-size", "50", "--precision", "fp32",
                 "--steps", "8", "--end-lr", "1", "--plot", "curve.png"]) == 0
    printed = capsys.readouterr().out
    assert "lr-find: 8 steps from lr 1e-07 to 1" in printed and "lr-find: suggested lr" in printed
    assert "lr-find: the curve is in curve.png" in printed
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "runs").exists()  # nothing trained is kept
    one_line_error(capsys, ["lr-find", "--data", str(tiny_data), "--start-lr", "1", "--end-lr", "0.1"],
                   "--start-lr 1 and --end-lr 0.1 make no range")


def test_lr_find_from_python_with_ones_own_module(tiny_data, tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    found = resnetlab.lr_find(model=net, data=str(tiny_data), limit_train=300, val_split=100, batch_size=50,
                              image_size=28, steps=6, plot=None, time_budget=0)
    assert len(found.lrs) == 6 and found.suggestion > 0
    assert all(torch.equal(net.state_dict()[k], v) for k, v in before.items())
