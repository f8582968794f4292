"""The time budget's arithmetic: how many steps a run can afford, from measured or estimated costs.

A run with ``--time-budget MINUTES`` (the ``cpu`` preset's 10) plans its number of steps so that
the whole command, start-up, data, training, evaluations, files and the final test, ends within
the budget. Shared machines drift (a run measured at 820 img/s went on at 605-737), so the plan
is not fixed once:

- each process measures its speed over its first steps (after :data:`SETTLE_STEPS`, which carry
  one-time costs, up to :func:`measure_until`) and plans from it;
- at the start of every later epoch it plans again from what the last epoch really cost (its
  steps, its evaluation and files), up or down, never below the steps done and never above
  ``epochs``.

Each decision is a pair ``[global step, total steps]``. The run keeps the list in its train
state and records it in ``config.json`` as ``budget_plan``; the learning-rate schedule follows
it (``schedule.lr_factor``: at each decision the decay goes on from where it stands to zero at the
new total, so a plan lowered mid-run still ends gracefully). A run given a ``budget_plan`` (one
repeated from its ``config.json``) follows it and measures nothing, so it takes the same steps.

:func:`affordable_steps` is a pure function of numbers; :class:`Planner` is one process's side
of it: it reads the run's clock around the first steps and each epoch's end, and hands the loop
the costs to plan with at the points where it plans.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

# An evaluated image costs this share of a trained one (forward only, measured about a third;
# TTA doubles it), and each epoch's files (train state, weights, curves) twice the 0.8 s measured
# for the seed's net on a 2-core CPU. These estimates serve only until the run has measured an
# epoch's end.
EVAL_COST = 0.5
FILE_SECONDS = 1.5
# The share of the budget kept in reserve for a machine that slows down within an epoch.
RESERVE = 0.05
# The first steps of a process carry one-time costs (kernel selection, allocations); the speed
# is measured after them, up to at most MEASURE_STEPS steps after the process's first.
SETTLE_STEPS = 3
MEASURE_STEPS = 20


@dataclass(frozen=True)
class Costs:
    """What the rest of a run costs, in seconds: a training step, an epoch's end, and the final test."""

    step: float  # one training step
    epoch_end: float  # one epoch's end: batch-norm recalibration, validation (and test), train state and files
    final: float  # the final test of the best weights and results.json


def measure_until(first_step: int, total: int) -> int:
    """The global step after which a process that started at ``first_step`` of ``total`` plans (a quarter of what is left, at most 20)."""
    return first_step + min(MEASURE_STEPS, max(1, (total - first_step) // 4))


def eval_image_seconds(step_seconds: float, batch_size: int, tta: bool) -> float:
    """An evaluated image's time estimated from the training step's (before an evaluation was timed)."""
    return step_seconds / batch_size * EVAL_COST * (2 if tta else 1)


def estimated_costs(step_seconds: float, batch_size: int, epoch_end_images: int, final_images: int,
                    tta: bool) -> Costs:
    """Costs estimated from the step time alone (before any epoch's end was measured)."""
    image = eval_image_seconds(step_seconds, batch_size, tta)
    return Costs(step_seconds, epoch_end_images * image + FILE_SECONDS, final_images * image + FILE_SECONDS)


def affordable_steps(*, budget_seconds: float, elapsed: float, done: int, steps_per_epoch: int, ceiling: int,
                     costs: Costs) -> int:
    """The most steps (at least ``done``, at most ``ceiling``) whose run ends within the budget, reserve kept.

    ``elapsed``: seconds the run has used so far (all its processes). A total of ``s`` steps
    costs the steps still to take, one epoch end for each epoch still to finish (the one in
    progress included), and the final test.
    """
    left = budget_seconds * (1 - RESERVE) - elapsed - costs.final
    epochs_done = done // steps_per_epoch
    best = done
    for epoch in range(epochs_done + 1, math.ceil(ceiling / steps_per_epoch) + 1):
        first, last = max(done + 1, (epoch - 1) * steps_per_epoch + 1), min(epoch * steps_per_epoch, ceiling)
        if first > last:
            continue
        for_steps = left - (epoch - epochs_done) * costs.epoch_end
        if costs.step > 0:
            fits = done + math.floor(for_steps / costs.step)
        else:  # steps that cost nothing (or a broken measurement): only the epochs' ends and the test count
            fits = last if for_steps >= 0 else first - 1
        if fits < first:
            break  # a run's cost only grows with its steps: no later epoch fits either
        best = min(fits, last)
    return best


def plan_line(minutes: float, steps: int, steps_per_epoch: int, ceiling: int, batch_size: int, costs: Costs,
              when: str) -> str:
    """The line a run prints for a decision: what the budget bought of the most the run may do, at what speed, and
    when it was re-planned (``10 min budget: 11.3 of at most 16 epochs (1,210 steps) at 1,250 img/s``)."""
    rate = f" at {batch_size / costs.step:,.0f} img/s" if costs.step > 0 else ""
    most = ceiling // steps_per_epoch
    bought = f"{steps / steps_per_epoch:.1f}" + (" epochs" if steps >= ceiling else f" of at most {most} epochs")
    return (f"{minutes:g} min budget{', re-planned ' + when if when else ''}: {bought} ({steps:,} steps){rate}"
            + (f", all {most} epochs fit" if steps >= ceiling and not when else ""))


class Planner:
    """One process's side of a time budget: it times the steps and every epoch's end, and says when to plan.

    It plans once :func:`measure_until` steps are timed (:meth:`after_step` returns the costs
    then, estimated from the step time), and again at the start of every epoch after that
    (:meth:`at_epoch_start`, with what the last epoch's steps and end cost). Step time is timed
    from a mark: the process's first steps after :data:`SETTLE_STEPS` (they carry one-time
    costs), then each epoch's first step; an epoch's end is never counted as step time.
    ``sync`` waits for the device before the clock is read, so that the time is the device's.
    """

    def __init__(self, *, clock: Callable[[], float], sync: Callable[[], None], first_step: int, total: int,
                 batch_size: int, tta: bool, epoch_end_images: int, final_images: int) -> None:
        self.clock, self.sync = clock, sync
        self.batch_size, self.tta = batch_size, tta
        self.epoch_end_images, self.final_images = epoch_end_images, final_images
        self.measure_at = measure_until(first_step, total)
        # Timed from after the one-time costs of the first steps (or from now, for a short measurement).
        self.settle_at = min(first_step + SETTLE_STEPS, self.measure_at - 1)
        self.mark = (first_step, clock())  # (global step, time) that step time is measured from
        self.step_seconds: float | None = None  # the last epoch's steps, timed from the mark
        self.epoch_end_seconds: float | None = None  # this process's last epoch end
        self.eval_image_seconds: float | None = None  # this process's last validation, per image

    def _per_step(self, global_step: int) -> float:
        first_step, first_time = self.mark
        return (self.clock() - first_time) / max(1, global_step - first_step)

    def after_step(self, global_step: int) -> Costs | None:
        """After a step: the costs to plan with if the first measurement ends here, else None."""
        if global_step == self.settle_at:
            self.sync()
            self.mark = (global_step, self.clock())
        elif global_step == self.measure_at:
            self.sync()
            return estimated_costs(self._per_step(global_step), self.batch_size, self.epoch_end_images,
                                   self.final_images, self.tta)
        return None

    def steps_ended(self, global_step: int) -> None:
        """An epoch's steps are done (the device waited for): time them, from the mark."""
        if global_step > self.mark[0]:
            self.step_seconds = self._per_step(global_step)

    def evaluated(self, seconds: float, images: int) -> None:
        """A validation of ``images`` took ``seconds``: the final test will cost the same per image."""
        self.eval_image_seconds = seconds / max(1, images)

    def epoch_ended(self, global_step: int, seconds: float) -> None:
        """An epoch's end (evaluation, state, files) took ``seconds``; the next epoch's steps are timed from now."""
        self.epoch_end_seconds = seconds
        if global_step < self.settle_at:
            return  # the first steps' one-time costs are still to be left out
        if global_step < self.measure_at:
            self.mark = (self.mark[0], self.mark[1] + seconds)  # the first measurement goes on, without this end
        else:
            self.mark = (global_step, self.clock())

    def at_epoch_start(self, global_step: int) -> Costs | None:
        """At an epoch's start: what the last epoch cost, to plan again with (None before the first measurement)."""
        if self.step_seconds is None or self.epoch_end_seconds is None or global_step < self.measure_at:
            return None
        per_image = self.eval_image_seconds
        if per_image is None:  # no validation to time: an estimate from the step
            per_image = eval_image_seconds(self.step_seconds, self.batch_size, self.tta)
        return Costs(self.step_seconds, self.epoch_end_seconds, self.final_images * per_image + FILE_SECONDS)
