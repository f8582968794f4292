"""The loop of a set-up run: its epochs, each epoch's end, saving, the time budget's plans, and the final test.

``runs.py`` starts (``fit``) and continues (``resume``) runs; ``setup.set_up`` makes the
:class:`~resnetlab.engine.setup.Run` this loop runs. An epoch's end evaluates (validation, and
test only for the record), chooses the best weights on validation, saves ``train_state.pt`` and
writes the weights, ``metrics.csv`` and ``curves.png``; a run killed at any instant continues
from its last save with the same result (``state.py``). With a time budget the loop plans its
number of steps once its first steps are timed and again at every epoch's start
(``budget.py``); the decisions go into the train state and ``config.json`` (``budget_plan``).
Every duration comes from one clock, the caller's (tests pass a fake one).
"""

from __future__ import annotations

import copy
import math
import signal
from typing import Callable

import torch

from ..errors import NonFiniteLossError, TrainingStopped
from ..log import progress_bar
from ..runtime import is_out_of_memory
from ..scoring import evaluate
from ..weights import WeightsHeader
from .budget import Costs, Planner, affordable_steps, plan_line
from .checkpoint import unwrap
from .config import RunConfig
from .distributed import is_comm_failure, lost_contact, shutdown
from .initialize import set_train_mode
from .optim import total_steps
from .recalibrate import recalibrate_batchnorm
from .run_folder import TrainResult
from .setup import Run
from .state import STATE_FILE, save_train_state
from .steps import check_interval
from .stop import StopSignals


def compile_warm_up_steps(config: RunConfig, device: torch.device) -> int:
    """How many first steps of a process compile the model: none without ``--compile``, one, or two where CUDA
    graphs are recorded (``reduce-overhead``, ``max-autotune``: PyTorch runs a graph once to warm up, then records it)."""
    if not config.compile:
        return 0
    return 2 if device.type == "cuda" and config.compile_mode in ("reduce-overhead", "max-autotune") else 1


class Loop:
    """A set-up run from its next step to its results: the epochs, their ends, saving, planning, finishing.

    ``started`` (a reading of ``clock``) is when the run's time budget began; ``progress`` shows a
    bar per epoch (None: on a terminal only); ``on_epoch`` is called with the history after
    each epoch (rank 0).
    """

    def __init__(self, run: Run, *, started: float, clock: Callable[[], float], progress: bool | None = None,
                 on_epoch: Callable[[list[dict]], None] | None = None) -> None:
        self.run, self.clock, self.started = run, clock, started
        self.show_progress, self.on_epoch = progress, on_epoch
        self.stop = StopSignals(run.log)
        p, config, loaders = run.progress, run.config, run.loaders
        self.elapsed_before = p.elapsed_seconds
        self.plan_recorded = [list(d) for d in p.plan]  # what config.json says the plan is
        self.check_every = check_interval(run.device)
        # A compiled model's first steps in this process compile it (and in the CUDA-graph modes record the graphs):
        # they are timed on their own, said on a line of their own and left out of their epoch's img/s.
        self.warm_up_steps = compile_warm_up_steps(config, run.device)
        self.warm_up_left = self.warm_up_steps
        self.warm_up_seconds = 0.0  # all of this process's warm-up steps, for its line
        self.warm_up_in_epoch = (0.0, 0)  # the seconds and images of the warm-up steps in the epoch under way
        self.planner = None  # a time budget without a plan given (a run repeated from its config.json follows it)
        if config.time_budget and not config.budget_plan:
            per_epoch = sum(loader.num_examples for loader in (loaders.val, loaders.recalibration) if loader)
            per_epoch += loaders.test.num_examples if config.test_each_epoch and loaders.test else 0
            self.planner = Planner(clock=clock, sync=self._sync, first_step=p.global_step, total=self.total_steps,
                                   batch_size=config.batch_size, tta=config.tta, epoch_end_images=per_epoch,
                                   final_images=loaders.test.num_examples if loaders.test else 0)
        if config.budget_plan:
            total = self.total_steps
            run.log(f"following the budget_plan the config gives: {total:,} steps ({total / run.steps_per_epoch:.1f} epochs), "
                    "nothing measured")
        run.log(run.describe())
        if run.resumed and p.history:
            # A kill may have landed between saving the state and writing these; write them again.
            self._write_epoch_files(best_changed=True, last=p.step == 0)

    @property
    def total_steps(self) -> int:
        """The steps this run takes (the time budget's last decision, else all epochs')."""
        return total_steps(self.run.config, self.run.steps_per_epoch, self.run.progress.plan)

    def train(self) -> TrainResult:
        """Run the remaining steps, then the final test; return the results."""
        run, p = self.run, self.run.progress
        try:
            with self.stop:  # a signal during the final test (seconds) only lets the run finish
                while p.global_step < self.total_steps:
                    costs = self.planner.at_epoch_start(p.global_step) if self.planner and p.step == 0 else None
                    if costs is not None:
                        self._plan(costs, f"at epoch {p.epoch + 1}")
                        if p.global_step >= self.total_steps:
                            break  # the plan ends the run here (the final test records it)
                    self._train_epoch()
                    began = self.clock()
                    if self.planner:
                        self.planner.steps_ended(p.global_step)
                    self._end_epoch()
                    if self.planner:
                        self.planner.epoch_ended(p.global_step, self.clock() - began)
                    if run.dist.any(self.stop.requested, run.device):
                        self._stopped()
                result = self._finish()
            run.dist.barrier()  # leave together: a rank tearing down early can abort its peer
            return result
        except RuntimeError as exc:
            if is_out_of_memory(exc) or not (run.dist.enabled and is_comm_failure(exc)):
                raise
            raise lost_contact(exc, run.dist.rank, run.folder / STATE_FILE, run.folder.path) from None
        finally:
            shutdown()

    def _train_epoch(self) -> None:
        """Run the epoch's remaining steps (up to the run's last), saving every ``save_every`` steps and on a stop request."""
        run, p, training = self.run, self.run.progress, self.run.training
        if p.step == 0:
            p.start_epoch(run.device)
        set_train_mode(training.model, run.config.freeze_backbone)
        last_step = min(run.steps_per_epoch, self.total_steps - (p.global_step - p.step))
        bar = progress_bar(self.show_progress, last_step, p.step, f"epoch {p.epoch + 1}/{self._planned_epochs()}") \
            if run.dist.is_main else None
        start, before = self.clock(), p.epoch_seconds
        for x, y in run.loaders.train.batches(p.epoch, p.step):
            warming_up = self.warm_up_left > 0
            if warming_up:
                self._sync()
                began = self.clock()
            loss, logits, applied = training.train_step(x, y, p.global_step, self.stop.requested)
            if warming_up:
                self._warmed_up(began, applied, len(y))
            # Sums on the device, counting only applied steps; nothing here waits for the device.
            p.loss_sum += torch.where(applied, loss.float() * len(y), 0.0)
            p.correct += torch.where(applied, (logits.argmax(1) == y).sum(), 0)
            p.seen += applied.long() * len(y)
            p.step += 1
            p.global_step += 1
            if bar is not None:
                bar.update(1)
            costs = self.planner.after_step(p.global_step) if self.planner else None
            if costs is not None:
                self._plan(costs, "")
            last_step = min(run.steps_per_epoch, self.total_steps - (p.global_step - p.step))
            saving = bool(run.config.save_every) and p.global_step % run.config.save_every == 0
            local_stop = self.stop.requested and not run.dist.enabled  # under torchrun ranks agree at checks
            if not (p.step >= last_step or saving or local_stop or p.global_step % self.check_every == 0):
                continue
            p.epoch_seconds = before + self.clock() - start
            reading = training.guard.read()  # the only wait for the device between checks
            p.skipped += reading.skipped
            if reading.halted:
                self._non_finite(reading.first_bad)
            if bar is not None and p.step % 10 == 0 and int(p.seen):
                bar.set_postfix(loss=f"{float(p.loss_sum) / int(p.seen):.3f}", acc=f"{int(p.correct) / int(p.seen):.3f}")
            if p.step >= last_step:
                break  # the epoch's end saves anyway, after evaluation
            if reading.stop if run.dist.enabled else self.stop.requested:
                self._save_state()
                self._stopped()
            if saving:
                self._save_state()
        self._sync()
        p.epoch_seconds = before + self.clock() - start
        if bar is not None:
            bar.close()

    def _warmed_up(self, began: float, applied: torch.Tensor, batch: int) -> None:
        """A warm-up step (compilation) that began at ``began`` is done: time it; after the last, say what they took."""
        self._sync()
        seconds = self.clock() - began
        images = int(applied) * batch * self.run.dist.world_size  # as the epoch counts them: applied, all ranks'
        self.warm_up_in_epoch = (self.warm_up_in_epoch[0] + seconds, self.warm_up_in_epoch[1] + images)
        self.warm_up_seconds += seconds
        self.warm_up_left -= 1
        if self.warm_up_left == 0:
            steps = self.warm_up_steps
            what = "first step took" if steps == 1 else f"first {steps} steps took"
            graphs = " and CUDA-graph capture" if steps > 1 else ""
            self.run.log(f"compile: {what} {self.warm_up_seconds:.1f} s (compilation{graphs}, not counted in img/s)")

    def _plan(self, costs: Costs, when: str) -> None:
        """Decide the run's total steps from ``costs`` (rank 0 decides for all), record it, set the next step's lr."""
        run, config, p = self.run, self.run.config, self.run.progress
        ceiling = config.epochs * run.steps_per_epoch
        steps = affordable_steps(budget_seconds=config.time_budget * 60, elapsed=self._elapsed(), done=p.global_step,
                                 steps_per_epoch=run.steps_per_epoch, ceiling=ceiling, costs=costs)
        steps = int(run.dist.sum_(torch.tensor([steps if run.dist.is_main else 0], device=run.device)).item())
        if p.plan and steps == self.total_steps:
            return  # the plan holds
        p.plan.append([p.global_step, steps])
        run.training.rewind(p.global_step)  # the next step's lr, already set, follows the new plan
        run.log(plan_line(config.time_budget, steps, run.steps_per_epoch, ceiling, config.batch_size, costs, when))

    def _non_finite(self, first_bad: int) -> None:
        """Global step ``first_bad`` gave a NaN/inf loss or gradient: save the state from before it, stop (exit 3).

        Nothing was applied from that step on (see ``StepGuard``), so only the counters and the
        schedule go back to it.
        """
        run, p = self.run, self.run.progress
        epoch_start = p.global_step - p.step
        p.step, p.global_step = first_bad - epoch_start, first_bad
        run.training.rewind(first_bad)
        self._save_state()
        raise NonFiniteLossError(
            f"the loss or gradients became NaN/inf at epoch {p.epoch + 1} step {p.step + 1} (global step "
            f"{p.global_step + 1}); the state before that step is saved in {run.folder / STATE_FILE}; "
            f"lower --lr or set --grad-clip in a new run, or skip such batches with: "
            f"resnetlab train --resume {run.folder.path} --skip-nonfinite"
        )

    def _end_epoch(self) -> None:
        """Evaluate, record the epoch, choose the best on validation, save the state and the files."""
        run, p, config, loaders = self.run, self.run.progress, self.run.config, self.run.loaders
        run.dist.sums_on_main(p.loss_sum, p.correct, p.seen)
        train_loss, train_acc, seen = p.train_figures()
        net = run.training.eval_model
        if loaders.recalibration is not None:  # batch-norm statistics recomputed for these weights (recalibrate.py)
            recalibrate_batchnorm(net, (x for x, _ in loaders.recalibration.batches()), device=run.device,
                                  precision=run.precision, average_over_ranks=run.dist.enabled and not config.sync_bn)
        val_acc = None
        if loaders.val:
            began = self.clock()
            val_acc = self._evaluate(net, loaders.val)["acc"]
            if self.planner:
                self.planner.evaluated(self.clock() - began, loaders.val.num_examples)
        test_acc = self._evaluate(net, loaders.test)["acc"] if config.test_each_epoch and loaders.test else None
        row = {"epoch": p.epoch + 1, "lr": run.training.optimizer.param_groups[0]["lr"], "train_loss": train_loss,
               "train_acc": train_acc, "val_acc": val_acc, "test_acc": test_acc,
               "examples_per_sec": self._epoch_rate(seen, p.epoch_seconds), "seconds": p.epoch_seconds}
        self.warm_up_in_epoch = (0.0, 0)
        best_changed = p.close_epoch(row, seen)
        if best_changed:
            run.best_weights = {k: v.detach().cpu().clone() for k, v in unwrap(net).state_dict().items()}
        p.start_epoch(run.device)
        self._save_state()
        self._write_epoch_files(best_changed, last=True)
        if self.on_epoch is not None and run.dist.is_main:
            self.on_epoch(p.history)
        skipped = f"  skipped {p.skipped} non-finite batch(es)" if p.skipped else ""
        run.log(f"epoch {row['epoch']}/{self._planned_epochs()}  lr {row['lr']:.4g}  loss {train_loss:.3f}  "
                f"train acc {train_acc:.3f}" + (f"  val acc {val_acc:.3f}" if val_acc is not None else "")
                + (f"  test acc {test_acc:.3f}" if test_acc is not None else "")
                + f"  {row['examples_per_sec']:.0f} img/s  {row['seconds']:.1f} s{skipped}")

    def _epoch_rate(self, seen: int, seconds: float) -> float:
        """The epoch's training images per second, without its warm-up (compilation) steps where others remain."""
        warm_seconds, warm_images = self.warm_up_in_epoch
        if seen > warm_images and seconds > warm_seconds:
            seen, seconds = seen - warm_images, seconds - warm_seconds
        return seen / seconds if seconds else 0.0

    def _evaluate(self, net: torch.nn.Module, loader) -> dict[str, float]:
        """Accuracy and loss over the whole split: each rank's share, summed exactly over ranks."""
        run = self.run
        return run.dist.sum_scores(evaluate(net, loader, precision=run.precision, tta=run.config.tta), run.device)

    def _write_epoch_files(self, best_changed: bool, last: bool) -> None:
        """best/last.safetensors, metrics.csv and curves.png for the epochs so far (rank 0 only)."""
        run, p = self.run, self.run.progress
        if best_changed and run.best_weights is not None:
            run.folder.write_weights("best.safetensors", run.best_weights, self._header(p.best_epoch))
        if last:
            run.folder.write_weights("last.safetensors", unwrap(run.training.eval_model).state_dict(), self._header(p.epoch))
        run.folder.write_metrics(p.history, title=f"{run.config.model} ({run.config.preset})")

    def _header(self, epoch: int) -> WeightsHeader:
        """The weights header: everything needed to use the weights without the run (``weights.py``)."""
        run = self.run
        return WeightsHeader.of_run(model=unwrap(run.training.model), class_names=run.class_names,
                                    preprocess=run.preprocess, config=self._recorded_config().to_dict(),
                                    row=run.progress.history[epoch - 1], epoch=epoch, data=run.fingerprint)

    def _recorded_config(self) -> RunConfig:
        """The run's config with the time budget's decisions so far: what ``config.json`` records."""
        return self.run.config.replace(budget_plan=[list(d) for d in self.run.progress.plan])

    def _planned_epochs(self) -> int:
        return math.ceil(self.total_steps / self.run.steps_per_epoch)

    def _elapsed(self) -> float:
        """Wall time of the whole run: earlier processes (up to their last save) plus this one."""
        return self.elapsed_before + self.clock() - self.started

    def _sync(self) -> None:
        if self.run.device.type == "cuda":
            torch.cuda.synchronize()

    def _save_state(self) -> None:
        """Write train_state.pt (all ranks must call it: the running sums are gathered first), then config.json's record."""
        run, p = self.run, self.run.progress
        if p.step > 0:  # at an epoch's start the sums are zero on every rank: nothing to gather
            run.dist.sums_on_main(p.loss_sum, p.correct, p.seen)
        if not run.folder.writes:
            return
        p.elapsed_seconds = self._elapsed()
        save_train_state(run.folder / STATE_FILE, run.training, p, run.best_weights, run.config.to_dict(),
                         data=run.fingerprint)
        self._record_plan()  # after the state: config.json never runs ahead of it

    def _record_plan(self) -> None:
        """Rewrite config.json when the time budget's decisions changed since it was last written."""
        if self.run.progress.plan != self.plan_recorded:
            self.run.folder.write_text("config.json", self._recorded_config().to_json())
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
                                    validated=run.loaders.val is not None, total_seconds=self._elapsed())
        self._record_plan()  # a last decision may have ended the run at an epoch's start
        run.folder.write_results(result)
        # The book's two closing lines (d2l.train_ch6); without a test split, the best validation accuracy instead.
        final = (f"test acc {result.test_acc:.3f}" if result.test_acc is not None
                 else f"val acc {result.best_val_acc:.3f} (no test split)")
        run.log(f"loss {result.train_loss:.3f}, train acc {result.train_acc:.3f}, {final}")
        run.log(f"{result.examples_per_sec:.1f} examples/sec on {result.device}")
        return result
