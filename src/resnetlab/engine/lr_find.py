"""The learning-rate range test (Smith 2015, "Cyclical learning rates"; fastai's ``lr_find``).

A short run whose learning rate grows exponentially, step by step, from ``start_lr`` to
``end_lr``, on the run's own model, optimiser, precision, clipping and batches, as
``resnetlab train`` with the same flags would set them up. It records the loss of each step,
smooths it (an exponential average, debiased, as fastai), and stops once the smoothed loss
exceeds ``diverge`` times its minimum or a loss is not finite. The model, optimiser, schedule
and step guard are put back exactly as they were afterwards (:func:`range_test`), so the finder
can be run on a set-up that then trains.

The suggestion follows one stated rule: **a tenth of the rate at the smoothed loss's minimum**
(fastai's ``lr_min``): at the minimum the loss is already about to blow up, and a tenth of it is
still on the steep, falling part of the curve. The steepest descent is reported beside it.
Under torchrun every process steps (the losses averaged, so all stop together); rank 0 draws.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.distributed as torch_dist
from torch import nn

from ..config import TrainConfig
from ..errors import ResnetlabError
from ..util.log import Log
from .distributed import shutdown
from .setup import set_up
from .step import StepGuard, Training

SMOOTHING = 0.98  # fastai's beta for the loss's exponential average
DIVERGE = 4.0  # stop once the smoothed loss is this many times its minimum


@dataclass
class LrFindResult:
    """What a range test found: each step's rate and loss (raw and smoothed), why it stopped, and the suggestion."""

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    stopped: str = ""

    @property
    def minimum_lr(self) -> float:
        """The rate at which the smoothed loss was lowest."""
        return self.lrs[min(range(len(self.smoothed)), key=self.smoothed.__getitem__)]

    @property
    def suggestion(self) -> float:
        """The suggested rate: a tenth of the rate at the smoothed loss's minimum (fastai's ``lr_min``)."""
        return self.minimum_lr / 10

    @property
    def steepest_lr(self) -> float:
        """The rate where the smoothed loss fell fastest per decade of rate (before the minimum)."""
        end = self.smoothed.index(min(self.smoothed))
        if end < 2:
            return self.lrs[0]
        slopes = [(self.smoothed[i + 1] - self.smoothed[i]) / math.log10(self.lrs[i + 1] / self.lrs[i])
                  for i in range(end)]
        return self.lrs[min(range(len(slopes)), key=slopes.__getitem__)]

    def lines(self) -> list[str]:
        """The printed report: the range covered, why it stopped, the suggestion and its rule."""
        low = min(self.smoothed)
        return [
            f"lr-find: {len(self.lrs)} steps from lr {self.lrs[0]:.2g} to {self.lrs[-1]:.2g}; {self.stopped}",
            f"lr-find: suggested lr {self.suggestion:.2g} (rule: a tenth of lr {self.minimum_lr:.2g}, where the smoothed "
            f"loss was lowest, {low:.3f}); steepest descent at lr {self.steepest_lr:.2g}",
        ]

    def figure(self):
        """Loss against learning rate (log scale), the suggestion marked."""
        from ..util.pictures import figure

        fig = figure(6, 4)
        ax = fig.add_subplot()
        ax.plot(self.lrs, self.losses, color="0.75", linewidth=0.8, label="loss")
        ax.plot(self.lrs, self.smoothed, color="C0", label="smoothed")
        ax.axvline(self.suggestion, color="C3", linestyle="--", label=f"suggested {self.suggestion:.2g}")
        ax.axvline(self.minimum_lr, color="0.4", linestyle=":", label=f"minimum {self.minimum_lr:.2g}")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("training loss")
        finite = [v for v in self.smoothed if math.isfinite(v)]
        lowest = min([v for v in self.losses if math.isfinite(v)] + finite, default=None)
        if finite and lowest is not None:  # the divergence would squash the curve: show up to a little above the start
            ax.set_ylim(lowest * 0.95, max(finite[0], min(finite)) * 1.6)
        ax.set_title("learning-rate range test")
        ax.legend()
        return fig


def range_test(training: Training, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], *, start_lr: float = 1e-7,
               end_lr: float = 10.0, steps: int = 100, diverge: float = DIVERGE, distributed: bool = False) -> LrFindResult:
    """Run the range test on ``training`` with ``batches``; everything it changes is put back before it returns."""
    check_range(start_lr, end_lr, steps)
    model, optimizer = training.model, training.optimizer
    saved_model = copy.deepcopy(model.state_dict())
    saved_optimizer = copy.deepcopy(optimizer.state_dict())
    saved_lrs = [group["lr"] for group in optimizer.param_groups]
    saved = (training.scheduler, training.ema, training.guard)
    saved_scaler = copy.deepcopy(training.scaler.state_dict()) if training.scaler is not None else None
    ratio = (end_lr / start_lr) ** (1 / (steps - 1))
    result = LrFindResult()
    # The run's own step, without its schedule (the rate is set here), its EMA (nothing is kept) and with a guard of
    # its own: a non-finite loss ends the test rather than the run.
    training.scheduler = _NoSchedule()
    training.ema = None
    training.guard = StepGuard(training.device, skip=True, distributed=distributed)
    average, best = 0.0, math.inf
    try:
        for step, (x, y) in enumerate(batches):
            if step == steps:
                result.stopped = f"reached --end-lr {end_lr:g}"
                break
            lr = start_lr * ratio ** step
            for group in optimizer.param_groups:
                group["lr"] = lr
            out = training.train_step(x, y, step)
            loss = out.loss.float()
            if distributed:  # every process decides on the same (mean) loss, so all stop at the same step
                torch_dist.all_reduce(loss)
                loss /= torch_dist.get_world_size()
            value = float(loss)
            result.lrs.append(lr)
            result.losses.append(value)
            if not math.isfinite(value):
                result.smoothed.append(math.inf)
                result.stopped = f"the loss was not finite at lr {lr:.2g}"
                break
            average = SMOOTHING * average + (1 - SMOOTHING) * value
            smoothed = average / (1 - SMOOTHING ** (step + 1))
            result.smoothed.append(smoothed)
            best = min(best, smoothed)
            if step > 0 and smoothed > diverge * best:
                result.stopped = f"the smoothed loss passed {diverge:g}x its minimum at lr {lr:.2g} (diverged)"
                break
        else:
            result.stopped = "the data ran out"
    finally:
        model.load_state_dict(saved_model)
        optimizer.load_state_dict(saved_optimizer)
        for group, lr in zip(optimizer.param_groups, saved_lrs):
            group["lr"] = lr
        training.scheduler, training.ema, training.guard = saved
        if saved_scaler is not None:
            training.scaler.load_state_dict(saved_scaler)
    if len(result.smoothed) < 2 or not any(math.isfinite(v) for v in result.smoothed):
        raise ResnetlabError(f"lr-find: the loss diverged at once (lr {start_lr:g}); give a lower --start-lr")
    return result


def check_range(start_lr: float, end_lr: float, steps: int) -> None:
    """The test's own flags must make a range: one line naming them otherwise."""
    if not 0 < start_lr < end_lr or not math.isfinite(end_lr):
        raise ResnetlabError(f"--start-lr {start_lr:g} and --end-lr {end_lr:g} make no range; give 0 < --start-lr < --end-lr")
    if steps < 2:
        raise ResnetlabError(f"--steps {steps}: the range test needs at least 2 steps")


class _NoSchedule:
    """Stands in for the run's schedule during the test: ``step()`` leaves the rate as set."""

    def step(self) -> None:
        pass


def lr_find(config: TrainConfig, log: Log = print, *, module: nn.Module | None = None, start_lr: float = 1e-7,
            end_lr: float = 10.0, steps: int = 100, plot: str | os.PathLike[str] | None = "lr_find.png") -> LrFindResult:
    """The range test on the run ``config`` describes (as ``resnetlab train`` would set it up; no run folder).

    ``module``: the caller's own network (copied, as in training). ``plot``: where the picture
    goes (None: none). Returns the result; its ``suggestion`` is the suggested rate.
    """
    check_range(start_lr, end_lr, steps)  # before any data is read
    run = set_up(config, log, module=module, keep=False)
    loader = run.loaders.train

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = 0
        while True:  # as many passes over the data as the steps need
            yield from loader.batches(epoch)
            epoch += 1

    try:
        run.log(f"lr-find: {run.config.model} on {loader.num_examples:,} images, batch {run.config.batch_size}, "
                f"{run.config.optimizer}, {run.precision.name}"
                + (f", {run.dist.world_size} processes (the global batch split among them)" if run.dist.enabled else "")
                + f"; lr from {start_lr:g} to {end_lr:g} in {steps} steps")
        result = range_test(run.training, batches(), start_lr=start_lr, end_lr=end_lr, steps=steps,
                            distributed=run.dist.enabled)
        for line in result.lines():
            run.log(line)
        if plot is not None and run.dist.is_main:
            from ..util.pictures import save_figure

            save_figure(result.figure(), plot)
            run.log(f"lr-find: the curve is in {plot}")
        return result
    finally:
        shutdown()  # leave the process group under torchrun
