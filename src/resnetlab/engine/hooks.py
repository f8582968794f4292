"""Hooks: what is attached to the training loop rather than written into it, and how you attach your own.

A :class:`Hook` overrides any of eight events; each gets the loop (``loop.run`` is the set-up
run: ``config``, ``progress``, ``log``, ``device`` ...):

=================  =========================================================================
``on_run_start``   before the first step of this process (a resumed run: of the resumption)
``on_epoch_start`` before an epoch's first step (mid-epoch after a resume)
``before_step``    before every step, its batch in hand
``after_step``     after every step; the step's values are device tensors: do not read them
                   here (on a GPU that would make the host wait for every step)
``at_check``       at a check point, after the step guard was read (every step on the CPU,
                   every 50 on a GPU, an epoch's last step): host values may be read here
``on_steps_end``   an epoch's steps are done (the device waited for), before its evaluation
``on_epoch_end``   the epoch is evaluated, saved and written; ``row`` is its line of ``metrics.csv``
``on_run_end``     the final test is done; ``result`` is the :class:`TrainResult`
=================  =========================================================================

A hook is called on rank 0 only unless it sets ``all_ranks = True`` (the built-in ones that take
part in collectives do). Pass your own to ``resnetlab.train(..., hooks=[...])`` or
``fit(config, hooks=[...])``; they run after the built-in ones but before the time budget's,
so the budget counts their time. For example, to send each epoch to your tracker::

    class ToMyTracker(resnetlab.Hook):
        def on_run_start(self, loop):
            tracker.init(config=loop.run.config.to_dict())
        def on_epoch_end(self, loop, row):
            tracker.log({"val_acc": row["val_acc"], "train_loss": row["train_loss"]}, step=row["epoch"])

    resnetlab.train(epochs=2, limit_train=2000, hooks=[ToMyTracker()])

The built-in hooks below are the loop's own seams: the time budget, the compile warm-up's
timing, the progress bar and saving every N steps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..config import RunConfig
from ..util.log import progress_bar
from .budget import Costs, Planner, affordable_steps, plan_line

if TYPE_CHECKING:
    from .loop import Loop


class Hook:
    """A hook into the training loop (see the module's description); every event does nothing unless overridden."""

    all_ranks = False  # called on rank 0 only, unless a subclass says otherwise

    def on_run_start(self, loop: "Loop") -> None:
        """Before this process's first step."""

    def on_epoch_start(self, loop: "Loop") -> None:
        """Before an epoch's first step (or its next step, resumed mid-epoch)."""

    def before_step(self, loop: "Loop") -> None:
        """Before every step, its batch fetched."""

    def after_step(self, loop: "Loop") -> None:
        """After every step; read no device value here."""

    def at_check(self, loop: "Loop") -> None:
        """At a check point (the guard read: ``loop.reading``); host values may be read."""

    def on_steps_end(self, loop: "Loop") -> None:
        """An epoch's steps are done, before its evaluation."""

    def on_epoch_end(self, loop: "Loop", row: dict[str, Any]) -> None:
        """An epoch is evaluated, saved and written; ``row`` is its line of ``metrics.csv``."""

    def on_run_end(self, loop: "Loop", result: Any) -> None:
        """The run is done; ``result`` is its :class:`~resnetlab.engine.TrainResult`."""


class ProgressBar(Hook):
    """A bar per epoch (tqdm: text on a terminal, a widget in a notebook) with the loss and accuracy so far."""

    def __init__(self, show: bool | None) -> None:
        self.show, self.bar, self.started = show, None, False  # show None: on a terminal only

    def before_step(self, loop: "Loop") -> None:
        if not self.started:  # made at the epoch's first step, when a plan at its start has fixed its length
            self.started = True
            p = loop.run.progress
            self.bar = progress_bar(self.show, loop.epoch_last_step, p.step, f"epoch {p.epoch + 1}/{loop.planned_epochs}")

    def after_step(self, loop: "Loop") -> None:
        if self.bar is not None:
            self.bar.update(1)

    def at_check(self, loop: "Loop") -> None:
        p = loop.run.progress
        if self.bar is not None and p.step % 10 == 0 and int(p.seen):
            self.bar.set_postfix(loss=f"{float(p.loss_sum) / int(p.seen):.3f}", acc=f"{int(p.correct) / int(p.seen):.3f}")

    def on_steps_end(self, loop: "Loop") -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar, self.started = None, False


class PeriodicSave(Hook):
    """``--save-every N``: the train state every N global steps, besides each epoch's end."""

    all_ranks = True  # saving gathers the running sums from every rank

    def __init__(self, every: int) -> None:
        self.every = every

    def after_step(self, loop: "Loop") -> None:
        if loop.run.progress.global_step % self.every == 0:
            loop.check_requested = True  # the state saved must be checked first

    def at_check(self, loop: "Loop") -> None:
        p = loop.run.progress
        if p.global_step % self.every == 0 and p.step < loop.epoch_last_step:  # the epoch's end saves anyway
            loop.save_state()


def compile_warm_up_steps(config: RunConfig, device: torch.device) -> int:
    """How many first steps of a process compile the model: none without ``--compile``, one, or two where CUDA
    graphs are recorded (``reduce-overhead``, ``max-autotune``: PyTorch runs a graph once to warm up, then records it)."""
    if not config.compile:
        return 0
    return 2 if device.type == "cuda" and config.compile_mode in ("reduce-overhead", "max-autotune") else 1


class CompileTiming(Hook):
    """A compiled model's first steps compile it: timed on their own, said on a line, left out of their epoch's img/s."""

    all_ranks = True  # each rank leaves its own warm-up out of its epoch's rate

    def __init__(self, steps: int) -> None:
        self.steps, self.left, self.seconds, self.began = steps, steps, 0.0, 0.0

    def before_step(self, loop: "Loop") -> None:
        if self.left:
            loop.sync()
            self.began = loop.clock()

    def after_step(self, loop: "Loop") -> None:
        if not self.left:
            return
        loop.sync()
        seconds = loop.clock() - self.began
        run = loop.run
        # As the epoch counts its images: this step's batch on every rank (a rejected step counts none).
        images = int(loop.last_applied) * loop.last_batch * run.dist.world_size
        loop.excluded = (loop.excluded[0] + seconds, loop.excluded[1] + images)
        self.seconds += seconds
        self.left -= 1
        if self.left == 0:
            what = "first step took" if self.steps == 1 else f"first {self.steps} steps took"
            graphs = " and CUDA-graph capture" if self.steps > 1 else ""
            run.log(f"compile: {what} {self.seconds:.1f} s (compilation{graphs}, not counted in img/s)")


class TimeBudget(Hook):
    """``--time-budget``: plan the run's number of steps from its measured speed, and again at every epoch's start.

    The arithmetic and the measuring are ``budget.py``'s; this hook calls them at the loop's
    points and records each decision (``progress.plan``) so the schedule follows it. It is the
    last hook, so an epoch's end as it measures it includes every other hook's work.
    """

    all_ranks = True  # rank 0 decides, every rank follows (a collective)

    def __init__(self, loop: "Loop", final_passes: int = 1) -> None:
        run, loaders, config = loop.run, loop.run.loaders, loop.run.config
        per_epoch = sum(loader.num_examples for loader in (loaders.val, loaders.recalibration) if loader)
        per_epoch += loaders.test.num_examples if config.test_each_epoch and loaders.test else 0
        self.planner = Planner(clock=loop.clock, sync=loop.sync, first_step=run.progress.global_step,
                               total=loop.total_steps, batch_size=config.batch_size, tta=config.tta,
                               epoch_end_images=per_epoch, final_images=final_passes * loaders.test.num_examples if loaders.test else 0)
        self.steps_ended_at = 0.0

    def on_epoch_start(self, loop: "Loop") -> None:
        p = loop.run.progress
        costs = self.planner.at_epoch_start(p.global_step) if p.step == 0 else None
        if costs is not None:
            self._plan(loop, costs, f"at epoch {p.epoch + 1}")

    def after_step(self, loop: "Loop") -> None:
        costs = self.planner.after_step(loop.run.progress.global_step)
        if costs is not None:
            self._plan(loop, costs, "")

    def on_steps_end(self, loop: "Loop") -> None:
        self.planner.steps_ended(loop.run.progress.global_step)
        self.steps_ended_at = loop.clock()

    def on_epoch_end(self, loop: "Loop", row: dict[str, Any]) -> None:
        val = loop.run.loaders.val
        if val:  # as the loop decides whether to validate (an empty split is not)
            self.planner.evaluated(loop.val_seconds, val.num_examples)
        self.planner.epoch_ended(loop.run.progress.global_step, loop.clock() - self.steps_ended_at)

    def _plan(self, loop: "Loop", costs: Costs, when: str) -> None:
        """Decide the run's total steps from ``costs`` (rank 0 decides for all), record it, set the next step's lr."""
        run, config, p = loop.run, loop.run.config, loop.run.progress
        ceiling = config.epochs * run.steps_per_epoch
        steps = affordable_steps(budget_seconds=config.time_budget * 60, elapsed=loop.elapsed(), done=p.global_step,
                                 steps_per_epoch=run.steps_per_epoch, ceiling=ceiling, costs=costs)
        steps = int(run.dist.sum_(torch.tensor([steps if run.dist.is_main else 0], device=run.device)).item())
        if p.plan and steps == loop.total_steps:
            return  # the plan holds
        p.plan.append([p.global_step, steps])
        run.training.rewind(p.global_step)  # the next step's lr, already set, follows the new plan
        line = plan_line(config.time_budget, steps, run.steps_per_epoch, ceiling, config.batch_size, costs, when)
        loop.notes.append((p.global_step, line))
        run.log(line)


def built_in_hooks(loop: "Loop", progress: bool | None, own: list[Hook]) -> list[Hook]:
    """The loop's hooks in calling order: compile timing, progress bar, TensorBoard, periodic saving, the caller's
    ``own``, time budget.

    Compile timing is first so that a warm-up step's time ends right after the step; ``progress``: a progress bar
    (None: on a terminal only).
    """
    from .tensorboard import INSTALL_HINT, TensorBoardLog, tensorboard_installed  # (it imports this module)

    run, config = loop.run, loop.run.config
    hooks: list[Hook] = []
    warm_up = compile_warm_up_steps(config, run.device)
    if warm_up:
        hooks.append(CompileTiming(warm_up))
    hooks.append(ProgressBar(progress))
    tensorboard = config.tensorboard and tensorboard_installed()
    if tensorboard:  # before saving: a step's values are on disk before a state that includes the step
        hooks.append(TensorBoardLog())
    elif config.tensorboard:
        run.log(f"TensorBoard: no event files, the tensorboard package is not installed ({INSTALL_HINT}; "
                "--no-tensorboard says you do not want them)")
    if config.save_every:
        hooks.append(PeriodicSave(config.save_every))
    hooks += own
    if config.time_budget and not config.budget_plan:  # a run given its plan (repeated from config.json) follows it
        # With TensorBoard the best weights go over the test split twice at the end (the test, then its pictures).
        hooks.append(TimeBudget(loop, final_passes=2 if tensorboard and run.dist.is_main else 1))
    return hooks

