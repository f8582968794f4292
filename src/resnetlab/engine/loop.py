"""The loop of a set-up run: its epochs and steps, each epoch's end, saving, stopping, and the final test.

``run.py`` starts (``fit``) and continues (``resume``) runs; ``setup.set_up`` makes the
:class:`~resnetlab.engine.setup.Run` this loop runs. An epoch's end evaluates (validation, and
test only for the record), chooses the best weights on validation, saves ``train_state.pt``
and writes the weights, ``metrics.csv`` and ``curves.png``; a run killed at any instant
continues from its last save with the same result (``state.py``). What is attached rather than
written in (the time budget, the compile warm-up's timing, the progress bar, saving every N
steps, the caller's own hooks) comes through the hooks of ``hooks.py``. Every duration comes
from one clock, the caller's (tests pass a fake one).
"""

from __future__ import annotations

import copy
import math
import signal
from typing import Any, Callable, Sequence

import torch

from ..errors import NonFiniteLossError, TrainingStopped
from ..scoring import evaluate
from ..util.compat import is_comm_failure, is_out_of_memory
from .distributed import lost_contact, shutdown
from .hooks import Hook, built_in_hooks
from .initialize import set_train_mode
from .recalibrate import recalibrate_batchnorm
from .run_folder import TrainResult, recorded_config, write_epoch_files
from .schedule import total_steps
from .setup import Run
from .state import STATE_FILE, save_train_state, unwrap
from .step import GuardReading, check_interval
from .stop import StopSignals


class Loop:
    """A set-up run from its next step to its results.

    ``started`` (a reading of ``clock``) is when the run's time budget began; ``progress``
    shows a bar per epoch (None: on a terminal only); ``hooks`` are the caller's own.
    """

    def __init__(self, run: Run, *, started: float, clock: Callable[[], float], progress: bool | None = None,
                 hooks: Sequence[Hook] = ()) -> None:
        self.run, self.clock, self.started = run, clock, started
        self.stop = StopSignals(run.log)
        p = run.progress
        self.elapsed_before = p.elapsed_seconds
        self.plan_recorded = [list(d) for d in p.plan]  # what config.json says the plan is
        self.check_every = check_interval(run.device)
        # What hooks read and set, besides the run (see hooks.py).
        self.epoch_last_step = 0  # the step (of the epoch) after which the epoch ends, as planned now
        self.reading: GuardReading | None = None  # the guard's flags at the current check point
        self.check_requested = False  # a hook asks for a check point after this step
        self.excluded = (0.0, 0)  # seconds and images of this epoch's steps left out of its img/s (compilation)
        # The last step's loss and whether it was applied (device tensors: read them at check points only), its images.
        self.last_loss, self.last_applied, self.last_batch = torch.zeros(()), torch.ones((), dtype=torch.bool), 0
        self.val_seconds = 0.0  # the last validation's duration
        self.notes: list[tuple[int, str]] = []  # (global step, line): the time budget's decisions, for the record
        hooks = built_in_hooks(self, progress, list(hooks))
        self.hooks = [h for h in hooks if h.all_ranks or run.dist.is_main]
        if run.config.budget_plan:
            run.log(f"following the budget_plan the config gives: {self.total_steps:,} steps "
                    f"({self.total_steps / run.steps_per_epoch:.1f} epochs), nothing measured")
        run.log(run.describe())
        if run.resumed and p.history:
            # A kill may have landed between saving the state and writing these; write them again.
            write_epoch_files(run, best_changed=True, last=p.step == 0)

    @property
    def total_steps(self) -> int:
        """The steps this run takes (the time budget's last decision, else all epochs')."""
        return total_steps(self.run.config, self.run.steps_per_epoch, self.run.progress.plan)

    @property
    def planned_epochs(self) -> int:
        """The epochs the run takes as planned now (the last may be partial)."""
        return math.ceil(self.total_steps / self.run.steps_per_epoch)

    def train(self) -> TrainResult:
        """Run the remaining steps, then the final test; return the results."""
        run, p = self.run, self.run.progress
        try:
            with self.stop:  # a signal during the final test (seconds) only lets the run finish
                self._call("on_run_start")
                while p.global_step < self.total_steps:
                    self._call("on_epoch_start")
                    if p.global_step >= self.total_steps:
                        break  # a plan at the epoch's start ended the run here (the final test records it)
                    self._train_epoch()
                    self._call("on_steps_end")
                    row = self._end_epoch()
                    self._call("on_epoch_end", row)
                    if run.dist.any(self.stop.requested, run.device):
                        self._stopped()
                result = self._finish()
                self._call("on_run_end", result)
            run.dist.barrier()  # leave together: a rank tearing down early can abort its peer
            return result
        except RuntimeError as exc:
            if is_out_of_memory(exc) or not (run.dist.enabled and is_comm_failure(exc)):
                raise
            raise lost_contact(exc, run.dist.rank, run.folder / STATE_FILE, run.folder.path) from None
        finally:
            shutdown()

    def _train_epoch(self) -> None:
        """Run the epoch's remaining steps (up to the run's last); check, save and stop at check points."""
        run, p, training = self.run, self.run.progress, self.run.training
        if p.step == 0:
            p.start_epoch(run.device)
        set_train_mode(training.model, run.config.freeze_backbone)
        self.epoch_last_step = self._last_step()
        start, before = self.clock(), p.epoch_seconds
        for x, y in run.loaders.train.batches(p.epoch, p.step):
            self._call("before_step")
            loss, logits, applied = training.train_step(x, y, p.global_step, self.stop.requested)
            # Sums on the device, counting only applied steps; nothing here waits for the device.
            p.loss_sum += torch.where(applied, loss.float() * len(y), 0.0)
            p.correct += torch.where(applied, (logits.argmax(1) == y).sum(), 0)
            p.seen += applied.long() * len(y)
            p.step += 1
            p.global_step += 1
            self.last_loss, self.last_applied, self.last_batch = loss, applied, len(y)
            self._call("after_step")  # the time budget may re-plan here
            self.epoch_last_step = self._last_step()
            local_stop = self.stop.requested and not run.dist.enabled  # under torchrun ranks agree at checks
            if not (p.step >= self.epoch_last_step or self.check_requested or local_stop
                    or p.global_step % self.check_every == 0):
                continue
            p.epoch_seconds = before + self.clock() - start
            at_end = p.step >= self.epoch_last_step  # the epoch's end saves anyway, after evaluation
            self._check(at_end)
            if at_end:
                break
        self.sync()
        p.epoch_seconds = before + self.clock() - start

    def _last_step(self) -> int:
        """The step of this epoch after which it ends, as the run is planned now."""
        p = self.run.progress
        return min(self.run.steps_per_epoch, self.total_steps - (p.global_step - p.step))

    def _check(self, at_end: bool) -> None:
        """A check point, the one place between epoch ends where the host may wait for the device: read the guard,
        stop on a non-finite step, call the hooks, then stop on a signal (saving first; ``at_end``: the epoch's end will)."""
        run, p = self.run, self.run.progress
        self.reading = run.training.guard.read()
        self.check_requested = False
        p.skipped += self.reading.skipped
        if self.reading.halted:
            self._non_finite(self.reading.first_bad)
        self._call("at_check")  # before a stop's save: what the hooks record of this step precedes the state
        if not at_end and (self.reading.stop if run.dist.enabled else self.stop.requested):
            self.save_state()
            self._stopped()

    def _call(self, event: str, *args: Any) -> None:
        for hook in self.hooks:
            getattr(hook, event)(self, *args)

    def _non_finite(self, first_bad: int) -> None:
        """Global step ``first_bad`` gave a NaN/inf loss or gradient: save the state from before it, stop (exit 3).

        Nothing was applied from that step on (see ``StepGuard``), so only the counters and the
        schedule go back to it.
        """
        run, p = self.run, self.run.progress
        epoch_start = p.global_step - p.step
        p.step, p.global_step = first_bad - epoch_start, first_bad
        run.training.rewind(first_bad)
        self.save_state()
        raise NonFiniteLossError(
            f"the loss or gradients became NaN/inf at epoch {p.epoch + 1} step {p.step + 1} (global step "
            f"{p.global_step + 1}); the state before that step is saved in {run.folder / STATE_FILE}; "
            f"lower --lr or set --grad-clip in a new run, or skip such batches with: "
            f"resnetlab train --resume {run.folder.path} --skip-nonfinite"
        )

    def _end_epoch(self) -> dict[str, Any]:
        """Evaluate, record the epoch, choose the best on validation, save the state and the files; return its row."""
        run, p, config, loaders = self.run, self.run.progress, self.run.config, self.run.loaders
        run.dist.sums_on_main(p.loss_sum, p.correct, p.seen)
        train_loss, train_acc, seen = p.train_figures()
        net = run.training.eval_model
        if loaders.recalibration is not None:  # batch-norm statistics recomputed for these weights (recalibrate.py)
            recalibrate_batchnorm(net, (x for x, _ in loaders.recalibration.batches()), device=run.device,
                                  precision=run.precision, average_over_ranks=run.dist.enabled and not config.sync_bn)
        val_acc = val_loss = None
        if loaders.val:
            began = self.clock()
            scores = self._evaluate(net, loaders.val)
            val_acc, val_loss = scores["acc"], scores["loss"]
            self.val_seconds = self.clock() - began
        test_acc = self._evaluate(net, loaders.test)["acc"] if config.test_each_epoch and loaders.test else None
        row = {"epoch": p.epoch + 1, "lr": run.training.optimizer.param_groups[-1]["lr"], "train_loss": train_loss,
               "train_acc": train_acc, "val_acc": val_acc, "val_loss": val_loss, "test_acc": test_acc,
               "examples_per_sec": self._epoch_rate(seen, p.epoch_seconds), "seconds": p.epoch_seconds}
        self.excluded = (0.0, 0)
        best_changed = p.close_epoch(row, seen)
        if best_changed:
            run.best_weights = {k: v.detach().cpu().clone() for k, v in unwrap(net).state_dict().items()}
        p.start_epoch(run.device)
        self.save_state()
        write_epoch_files(run, best_changed, last=True)
        skipped = f"  skipped {p.skipped} non-finite batch(es)" if p.skipped else ""
        run.log(f"epoch {row['epoch']}/{self.planned_epochs}  lr {row['lr']:.4g}  loss {train_loss:.3f}  "
                f"train acc {train_acc:.3f}" + (f"  val acc {val_acc:.3f}" if val_acc is not None else "")
                + (f"  test acc {test_acc:.3f}" if test_acc is not None else "")
                + f"  {row['examples_per_sec']:.0f} img/s  {row['seconds']:.1f} s{skipped}")
        return row

    def _epoch_rate(self, seen: int, seconds: float) -> float:
        """The epoch's training images per second, without its warm-up (compilation) steps where others remain."""
        warm_seconds, warm_images = self.excluded
        if seen > warm_images and seconds > warm_seconds:
            seen, seconds = seen - warm_images, seconds - warm_seconds
        return seen / seconds if seconds else 0.0

    def _evaluate(self, net: torch.nn.Module, loader) -> dict[str, float]:
        """Accuracy and loss over the whole split: each rank's share, summed exactly over ranks."""
        run = self.run
        return run.dist.sum_scores(evaluate(net, loader, precision=run.precision, tta=run.config.tta), run.device)

    def elapsed(self) -> float:
        """Wall time of the whole run: earlier processes (up to their last save) plus this one."""
        return self.elapsed_before + self.clock() - self.started

    def sync(self) -> None:
        """Wait for the device (before reading the clock, so that a time is the device's)."""
        if self.run.device.type == "cuda":
            torch.cuda.synchronize()

    def save_state(self) -> None:
        """Write train_state.pt (all ranks must call it: the running sums are gathered first), then config.json's record."""
        run, p = self.run, self.run.progress
        if p.step > 0:  # at an epoch's start the sums are zero on every rank: nothing to gather
            run.dist.sums_on_main(p.loss_sum, p.correct, p.seen)
        if not run.folder.writes:
            return
        p.elapsed_seconds = self.elapsed()
        save_train_state(run.folder / STATE_FILE, run.training, p, run.best_weights, run.config.to_dict(),
                         data=run.fingerprint)
        self._record_plan()  # after the state: config.json never runs ahead of it

    def _record_plan(self) -> None:
        """Rewrite config.json when the time budget's decisions changed since it was last written."""
        if self.run.progress.plan != self.plan_recorded:
            self.run.folder.write_text("config.json", recorded_config(self.run).to_json())
            self.plan_recorded = [list(d) for d in self.run.progress.plan]

    def _stopped(self) -> None:
        """The state is saved: leave with a message that says how to continue."""
        run, p, signum = self.run, self.run.progress, self.stop.signum
        where = f"after epoch {p.epoch}" if p.step == 0 else f"at epoch {p.epoch + 1} step {p.step}/{run.steps_per_epoch}"
        raise TrainingStopped(f"stopped by {signal.Signals(signum).name} {where}; the state is saved in "
                              f"{run.folder / STATE_FILE}; continue with: resnetlab train --resume {run.folder.path}", signum)

    def _finish(self) -> TrainResult:
        """Test the best weights once, write ``results.json``, print the book's two lines."""
        run, p = self.run, self.run.progress
        best = copy.deepcopy(unwrap(run.training.eval_model))
        best.load_state_dict(run.best_weights)
        test_metrics = {"acc": None, "loss": None}  # a class folder without test/ has nothing to report here
        if run.loaders.test is not None:
            test_metrics = self._evaluate(best, run.loaders.test)
        result = TrainResult.of_run(p, run_dir=run.folder.path, device=str(run.device), test=test_metrics,
                                    validated=run.loaders.val is not None, total_seconds=self.elapsed())
        self._record_plan()  # a last decision may have ended the run at an epoch's start
        run.folder.write_results(result)
        # The book's two closing lines (d2l.train_ch6); without a test split, the best validation accuracy instead.
        final = (f"test acc {result.test_acc:.3f}" if result.test_acc is not None
                 else f"val acc {result.best_val_acc:.3f} (no test split)")
        run.log(f"loss {result.train_loss:.3f}, train acc {result.train_acc:.3f}, {final}")
        run.log(f"{result.examples_per_sec:.1f} examples/sec on {result.device}")
        return result
