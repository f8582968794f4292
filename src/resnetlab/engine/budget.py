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
it (``optim.lr_factor``: at each decision the decay goes on from where it stands to zero at the
new total, so a plan lowered mid-run still ends gracefully). A run given a ``budget_plan`` (one
repeated from its ``config.json``) follows it and measures nothing, so it takes the same steps.

Everything here is a pure function of numbers: the run reads its clock and calls these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
        fits = done + math.floor(for_steps / costs.step) if costs.step > 0 else last
        if fits < first:
            break  # a run's cost only grows with its steps: no later epoch fits either
        best = min(fits, last)
    return best
