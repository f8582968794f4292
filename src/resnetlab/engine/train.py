"""A whole training run: ``fit(config)`` starts one, ``resume(run_dir)`` continues one.

It takes a :class:`TrainConfig` and knows nothing of the command line; what the config leaves
unset is decided here, the same way for every caller (``resolve.py``). Data stays on the
device as uint8 (``data/loader.py``). The run folder is the run's memory: ``config.json`` at the
start, ``train_state.pt`` after every epoch (and every ``save_every`` steps), so a run killed at
any instant continues from its last save with the same result (``state.py``).

With a time budget (``--time-budget MINUTES``, the ``cpu`` preset's 10) the run measures its
speed over its first steps and plans its number of steps so that the whole run, evaluation and
files included, ends within the budget, then plans again at every epoch's start from what the
last epoch cost (``budget.py``); the decisions go into the train state and ``config.json``
(``budget_plan``). Every time the run reads comes from one clock, ``time.monotonic`` unless
the caller passes another (tests pass a fake one).
"""

from __future__ import annotations

import copy
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..data import Augment, DeviceLoader, ImageSet
from ..data.loader import mix_seed
from ..errors import LostContactError, NonFiniteLossError, ResnetlabError, TrainingStopped, first_line
from ..fileio import remove_stale_temporaries, write_text
from ..log import Log, silent, warn_stderr
from ..models.small_maps import use_small_map_products
from ..runtime import configure_backends, is_out_of_memory, resolve_device, resolve_precision, seed_everything
from ..scoring import evaluate
from ..weights import Preprocess, WeightsHeader
from .checkpoint import unwrap
from .budget import FILE_SECONDS, SETTLE_STEPS, Costs, affordable_steps, estimated_costs, eval_image_seconds, measure_until
from .config import BASE_DEFAULTS, RESUME_OVERRIDES, TrainConfig, check_init_file, load_config_file, validate
from .distributed import Dist, convert_sync_batchnorm, env_rank, is_comm_failure, shutdown, wrap_ddp
from .initialize import build_model, set_train_mode
from .optim import make_optimizer, make_scheduler, total_steps
from .recalibrate import recalibrate_batchnorm
from .resolve import apply_data, apply_preset
from .run_data import channel_stats, load_data
from .run_folder import RunFolder, follow_link
from .state import STATE_FILE, Progress, load_train_state, restore_train_state, save_train_state
from .steps import Ema, Training, check_interval
from .stop import StopSignals

Clock = Callable[[], float]  # seconds, monotonic


@dataclass
class TrainResult:
    """What a finished run reports (also written to ``results.json``)."""

    run_dir: Path
    device: str
    train_loss: float  # last epoch, measured during training as the book does
    train_acc: float
    test_acc: float | None  # with the best weights (by validation accuracy; the last epoch without validation); None: no test split
    test_loss: float | None
    best_epoch: int
    best_val_acc: float | None
    examples_per_sec: float  # training images per second over training steps only, as the book's timer
    train_seconds: float
    total_seconds: float  # wall time of the whole run, resumed parts included (up to their last save)
    skipped_batches: int = 0  # batches skipped for a non-finite loss (--skip-nonfinite)
    history: list[dict] = field(default_factory=list)


@dataclass
class Watch:
    """How a caller follows a run besides its lines: a progress bar per epoch, and a call after each epoch."""

    progress: bool | None = None  # a progress bar (tqdm.auto: a widget in a notebook); None: on a terminal only
    on_epoch: Callable[[list[dict]], None] | None = None  # called with the history after each epoch (rank 0)


def fit(config: TrainConfig, log: Log = print, *, started: float | None = None, watch: Watch | None = None,
        clock: Clock = time.monotonic) -> TrainResult:
    """Train as ``config`` says (unset fields decided as in ``resolve.py``); write the run folder; return the results.

    ``started`` (a reading of ``clock``) is when the run's time budget began: the ``resnetlab``
    command passes its process's start; the default is this call. ``clock`` is what every
    duration is read from. Raises :class:`TrainingStopped` after saving the state if SIGINT or
    SIGTERM arrives, and :class:`NonFiniteLossError` (state before the bad step saved) if the
    loss stops being finite.
    """
    started = clock() if started is None else started
    check_init_file(validate(config))
    return _train(config, log, started=started, watch=watch, clock=clock)


def _train(config: TrainConfig, log: Log, **run: Any) -> TrainResult:
    """Set the run up and train it; memory running out anywhere becomes one line naming what to lower."""
    made = None
    try:
        made = _Run(config, log, **run)
        return made.train()
    except RuntimeError as exc:
        if not is_out_of_memory(exc):
            raise
        device = made.device if made is not None else (config.device or "the device")
        batch = made.config.batch_size if made is not None else config.batch_size
        saved = made.folder / STATE_FILE if made is not None and (made.folder / STATE_FILE).exists() else None
        raise ResnetlabError(
            f"out of memory on {device}" + (f" at --batch-size {batch}" if batch else "") + f" ({first_line(exc)[:160]}); "
            f"lower --batch-size" + (f" (to {max(1, batch // 2)}, say)" if batch else "") + " or --image-size in a new run"
            + (f"; the state saved in {saved} continues with the same batch size once memory is free: "
               f"resnetlab train --resume {made.folder.path}" if saved else "")
        ) from None


def resume(run_dir: str | os.PathLike[str] = "runs/latest", log: Log = print, *, started: float | None = None,
           clock: Clock = time.monotonic, **overrides: Any) -> TrainResult:
    """Continue the run in ``run_dir`` from its ``train_state.pt``, with the run's own config.

    Only the fields in :data:`RESUME_OVERRIDES` may be changed. A run killed before its first
    save starts again from the beginning in the same folder (same seed, same result). A time
    budget goes on from what the earlier processes used (``started`` and ``clock`` as for :func:`fit`).
    """
    started = clock() if started is None else started
    run_dir = follow_link(Path(run_dir))
    config_path = run_dir / "config.json"
    if not run_dir.is_dir():
        raise ResnetlabError(f"--resume {run_dir}: no such run folder; give the folder of a run started by 'resnetlab train'")
    if not config_path.exists():
        raise ResnetlabError(f"--resume {run_dir}: no config.json there, so it is not a resnetlab run folder")
    if (run_dir / "results.json").exists():
        raise ResnetlabError(f"--resume {run_dir}: this run already finished (results.json exists); start a new run to train more")
    changed = sorted(set(overrides) - set(RESUME_OVERRIDES))
    if changed:
        raise ResnetlabError(
            f"--{changed[0].replace('_', '-')} cannot be changed when resuming: the run continues with its own "
            f"{config_path}; start a new run to change it"
        )
    recorded = validate(TrainConfig.from_dict(load_config_file(config_path), str(config_path)).replace(**overrides))
    state_path = run_dir / STATE_FILE
    state = load_train_state(state_path) if state_path.exists() else None
    # config.json records the time budget's decisions so far; the run itself started from the plan it was given.
    config = recorded
    if state is not None:
        saved, current = state["config"], recorded.to_dict()
        differ = sorted(k for k in current if k not in (*RESUME_OVERRIDES, "budget_plan") and saved.get(k) != current[k])
        if differ:
            raise ResnetlabError(
                f"{config_path} differs from the config {state_path} was saved with (field {differ[0]!r}); "
                "put the original back, or start a new run"
            )
        config = recorded.replace(budget_plan=saved.get("budget_plan"))
    else:
        check_init_file(config)  # a run that never saved starts over, from its --init file again
    if env_rank() == 0:  # under torchrun only rank 0 writes
        if overrides:
            write_text(config_path, recorded.to_json())
        remove_stale_temporaries(run_dir)  # half-written files of a killed process; the real ones are whole
    return _train(config, log, run_dir=run_dir, state=state, started=started, clock=clock)


class _Run:
    """One run from set-up to results: builds everything, runs the epochs, saves, finishes."""

    def __init__(self, config: TrainConfig, log: Log, *, started: float, clock: Clock, run_dir: Path | None = None,
                 state: dict | None = None, watch: Watch | None = None) -> None:
        self.clock, self.started = clock, started
        self.state = state
        self.watch = watch or Watch()
        device = resolve_device(config.device or BASE_DEFAULTS["device"])
        self.dist = Dist.join(device.type, config.dist_timeout or BASE_DEFAULTS["dist_timeout"])
        self.device = torch.device("cuda", self.dist.local_rank) if device.type == "cuda" and self.dist.enabled else device
        self.log = log if self.dist.is_main else silent  # one voice: rank 0 prints, plots and writes
        self.stop = StopSignals(self.log)
        train, val, test = self._set_up_data(config)
        model = self._set_up_model(train)
        self.folder = RunFolder(run_dir, self.dist.is_main) if run_dir else self._create_folder()
        self._set_up_loaders(train, val, test)
        self._set_up_progress()
        self._set_up_training(model)
        self._set_up_budget()
        self._describe(len(train), len(val) if val is not None else 0, len(test) if test is not None else 0)

    # --- set-up -----------------------------------------------------------------------------

    def _set_up_data(self, config: TrainConfig) -> tuple[ImageSet, ImageSet | None, ImageSet | None]:
        """Decide the preset, read the data, decide what follows from it; check the batch and a resumed run's data."""
        typed = {name for name, value in config.to_dict().items() if value is not None}  # given by the user
        config, note = apply_preset(config, self.device)
        self.precision = resolve_precision(config.precision or BASE_DEFAULTS["precision"], self.device)
        if note and self.state is None:
            self.log(note)
        config = config.replace(**{k: BASE_DEFAULTS[k] for k in ("seed", "val_split", "val_fraction", "strict")
                                   if getattr(config, k) is None})
        train, val, test = load_data(config, warn=warn_stderr if self.dist.is_main else silent)
        config, recipe = apply_data(config.replace(precision=self.precision.name), train, self.device, typed)
        if recipe and self.state is None:
            self.log(recipe)
        self.config = validate(config)
        if self.dist.enabled and config.batch_size % self.dist.world_size:
            raise ResnetlabError(f"--batch-size {config.batch_size} (the global batch) must be divisible by the "
                                 f"{self.dist.world_size} processes; choose a multiple")
        if len(train) < config.batch_size:
            raise ResnetlabError(f"--batch-size {config.batch_size} is larger than the {len(train)} training images; lower it")
        # Each split's fingerprint: a resumed run checks them all, eval checks the split it measures.
        self.fingerprint = {name: split.fingerprint() if split is not None else None
                            for name, split in (("train", train), ("val", val), ("test", test))}
        if self.state is not None and self.state.get("data") != self.fingerprint:
            raise ResnetlabError(
                f"the data differ from those the run was trained on (--data {config.data or 'default'}); "
                "point --data at the original files in config.json, or start a new run"
            )
        configure_backends(self.device, config.deterministic)
        return train, val, test

    def _set_up_model(self, train: ImageSet) -> nn.Module:
        """The model for the data's channels and classes, on the device, in the run's dtype and memory format."""
        config = self.config
        seed_everything(config.seed)
        model = build_model(config, train.images.shape[1], len(train.class_names),
                            log=self.log if self.state is None else None)
        model = model.to(self.device, self.precision.dtype)
        if config.small_maps:
            use_small_map_products(model)
        if config.sync_bn and self.dist.enabled:
            model = convert_sync_batchnorm(model, self.device.type)
        return model.to(memory_format=torch.channels_last) if config.channels_last else model

    def _create_folder(self) -> RunFolder:
        """Only now, with data and model in hand, does a new run get a folder: a bad flag leaves nothing behind."""
        folder = RunFolder.create(self.config.out, self.config.model, self.dist, warn=warn_stderr)
        folder.write_text("config.json", self.config.to_json())
        return folder

    def _set_up_loaders(self, train: ImageSet, val: ImageSet | None, test: ImageSet | None) -> None:
        config = self.config
        self.mean, self.std = channel_stats(train.images) if config.normalize else (None, None)
        self.train_loader = self._loader(train, training=True)
        self.val_loader = self._loader(val) if val is not None else None
        self.test_loader = self._loader(test) if test is not None else None
        self.recalibration_loader = None
        if config.recalibrate_bn and not config.freeze_backbone:  # a frozen backbone keeps the statistics it came with
            count = min(config.recalibrate_bn, len(train))
            if count >= config.batch_size:
                count -= count % config.batch_size  # whole batches: each counts equally in the average
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(mix_seed(config.seed, 7919)))
            self.recalibration_loader = self._loader(train.subset(order[:count]))
        self.in_channels, self.class_names = int(train.images.shape[1]), list(train.class_names)
        self.stored_size = int(train.images.shape[-1])

    def _loader(self, data: ImageSet, training: bool = False) -> DeviceLoader:
        config = self.config
        return DeviceLoader(
            data, config.batch_size, device=self.device, image_size=config.image_size, mean=self.mean, std=self.std,
            shuffle=training, drop_last=training, seed=config.seed, channels_last=config.channels_last,
            augment=Augment(config.crop_padding, config.flip, config.erase_prob) if training else Augment(),
            rank=self.dist.rank, world_size=self.dist.world_size, dtype=self.precision.dtype,
        )

    def _set_up_training(self, model: nn.Module) -> None:
        config = self.config
        step_model = wrap_ddp(model, self.device) if self.dist.enabled else model
        optimizer = make_optimizer(config, model)
        self.steps_per_epoch = len(self.train_loader)
        self.training = Training(
            config=config, model=model, step_model=torch.compile(step_model) if config.compile else step_model,
            optimizer=optimizer, scheduler=make_scheduler(config, optimizer, self.steps_per_epoch, self.progress.plan),
            criterion=nn.CrossEntropyLoss(label_smoothing=config.label_smoothing),
            ema=Ema(model, config.ema_decay) if config.ema_decay else None, device=self.device,
            precision=self.precision, distributed=self.dist.enabled,
        )
        self.check_every = check_interval(self.device)
        if self.state is not None:
            restore_train_state(self.state, self.training)

    def _set_up_progress(self) -> None:
        """Where the run stands: a fresh start (with the budget plan it was given, if any), or the saved progress."""
        self.best_weights = None
        if self.state is None:
            self.progress = Progress(plan=[list(decision) for decision in self.config.budget_plan or []])
        else:
            self.progress = Progress.from_dict(self.state["progress"], self.device)
            self.best_weights = self.state["best_model"]
            if not self.dist.is_main:  # the saved sums are the whole job's: rank 0 carries them on
                for name in ("loss_sum", "correct", "seen"):
                    getattr(self.progress, name).zero_()
        self.elapsed_before = self.progress.elapsed_seconds
        self.plan_recorded = list(self.progress.plan)  # what config.json says the plan is

    def _set_up_budget(self) -> None:
        """A time budget without a given plan: when this process measures its speed, and what it measured since."""
        config, p = self.config, self.progress
        self.planning = bool(config.time_budget) and not config.budget_plan
        self.measure_at = measure_until(p.global_step, self.total_steps)
        # The speed is timed from after the one-time costs of the first steps (or from now, for a short measurement).
        self.settle_at = min(p.global_step + SETTLE_STEPS, self.measure_at - 1)
        self.budget_mark = (p.global_step, self.clock())
        self.epoch_end_seconds: float | None = None  # this process's last epoch end, measured
        self.eval_image_seconds: float | None = None  # this process's last validation, per image

    def _describe(self, n_train: int, n_val: int, n_test: int) -> None:
        config, p = self.config, self.progress
        resumed = self.state is not None
        self.log(
            f"{'resuming' if resumed else 'training'} {config.model} on {n_train:,} images ({self.steps_per_epoch} steps/epoch), "
            f"validating on {n_val:,}, testing on {n_test:,}; device {self.device}"
            f"{f' x {self.dist.world_size} processes' if self.dist.enabled else ''}, {self.precision.name}; "
            f"run folder {self.folder.path}"
            + (f"; continuing epoch {p.epoch + 1} after step {p.step}/{self.steps_per_epoch}" if resumed else "")
        )
        if resumed and p.history:
            # A kill may have landed between saving the state and writing these; write them again.
            self._write_epoch_files(best_changed=True, last=p.step == 0)

    # --- the loop -------------------------------------------------------------------------

    @property
    def total_steps(self) -> int:
        """The steps this run takes (the time budget's last decision, else all epochs')."""
        return total_steps(self.config, self.steps_per_epoch, self.progress.plan)

    @property
    def planned_epochs(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch)

    def train(self) -> TrainResult:
        """Run the remaining steps, then the final test; return the results."""
        try:
            with self.stop:  # a signal during the final test (seconds) only lets the run finish
                while self.progress.global_step < self.total_steps:
                    if self._replans_now():
                        self._plan(self._measured_costs(), f"at epoch {self.progress.epoch + 1}")
                        if self.progress.global_step >= self.total_steps:
                            break
                    self._train_epoch()
                    began = self.clock()
                    self._end_epoch()
                    self.epoch_end_seconds = self.clock() - began
                    if self.planning and self.progress.global_step < self.measure_at:
                        # Steps are being timed: an epoch's end between them is not step time.
                        self.budget_mark = (self.budget_mark[0], self.budget_mark[1] + self.epoch_end_seconds)
                    if self.dist.any(self.stop.requested, self.device):
                        self._stopped()
                result = self._finish()
            self.dist.barrier()  # leave together: a rank tearing down early can abort its peer
            return result
        except RuntimeError as exc:
            if is_out_of_memory(exc) or not (self.dist.enabled and is_comm_failure(exc)):
                raise
            raise LostContactError(
                f"rank {self.dist.rank} lost contact with the other processes ({first_line(exc)[:200]}); the last saved "
                f"state is {self.folder / STATE_FILE}; continue with: torchrun ... -m resnetlab train --resume {self.folder.path}"
            ) from None
        finally:
            shutdown()

    def _train_epoch(self) -> None:
        """Run the epoch's remaining steps (up to the run's last), saving every ``save_every`` steps and on a stop request."""
        p, training, loader = self.progress, self.training, self.train_loader
        if p.step == 0:
            p.start_epoch(self.device)
        set_train_mode(training.model, self.config.freeze_backbone)
        last_step = min(self.steps_per_epoch, self.total_steps - (p.global_step - p.step))
        bar = None
        if (sys.stderr.isatty() if self.watch.progress is None else self.watch.progress) and self.dist.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=last_step, initial=p.step, desc=f"epoch {p.epoch + 1}/{self.planned_epochs}",
                       unit="step", leave=False)
        start, before = self.clock(), p.epoch_seconds
        for x, y in loader.batches(p.epoch, p.step):
            loss, logits, applied = training.train_step(x, y, p.global_step, self.stop.requested)
            # Sums on the device, counting only applied steps; nothing here waits for the device.
            p.loss_sum += torch.where(applied, loss.float() * len(y), 0.0)
            p.correct += torch.where(applied, (logits.argmax(1) == y).sum(), 0)
            p.seen += applied.long() * len(y)
            p.step += 1
            p.global_step += 1
            if bar is not None:
                bar.update(1)
            if self.planning:
                self._measure()
            last_step = min(self.steps_per_epoch, self.total_steps - (p.global_step - p.step))
            saving = bool(self.config.save_every) and p.global_step % self.config.save_every == 0
            local_stop = self.stop.requested and not self.dist.enabled  # under torchrun ranks agree at checks
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
            if reading.stop if self.dist.enabled else self.stop.requested:
                self._save_state()
                self._stopped()
            if saving:
                self._save_state()
        self._sync()
        p.epoch_seconds = before + self.clock() - start
        if bar is not None:
            bar.close()

    def _replans_now(self) -> bool:
        """Whether to plan again: an epoch starts, and this process has measured its speed and an epoch's end."""
        p = self.progress
        return (self.planning and p.step == 0 and self.epoch_end_seconds is not None
                and p.global_step >= self.measure_at)

    def _measure(self) -> None:
        """After a step: time this process's first steps, and plan once they are measured."""
        p = self.progress
        if p.global_step == self.settle_at:
            self._sync()
            self.budget_mark = (p.global_step, self.clock())
        elif p.global_step == self.measure_at:
            self._sync()
            first_step, first_time = self.budget_mark
            step_seconds = (self.clock() - first_time) / max(1, p.global_step - first_step)
            per_epoch = sum(loader.num_examples for loader in (self.val_loader, self.recalibration_loader) if loader)
            if self.config.test_each_epoch and self.test_loader:
                per_epoch += self.test_loader.num_examples
            final = self.test_loader.num_examples if self.test_loader else 0
            self._plan(estimated_costs(step_seconds, self.config.batch_size, per_epoch, final, self.config.tta), "")

    def _measured_costs(self) -> Costs:
        """What the last epoch cost this process: its steps, its end; the final test from the validation's speed."""
        last = self.progress.history[-1]
        step_seconds = last["seconds"] / self.steps_per_epoch
        images = self.test_loader.num_examples if self.test_loader else 0
        per_image = self.eval_image_seconds  # None without a validation to time: an estimate from the step
        if per_image is None:
            per_image = eval_image_seconds(step_seconds, self.config.batch_size, self.config.tta)
        return Costs(step_seconds, self.epoch_end_seconds, images * per_image + FILE_SECONDS)

    def _plan(self, costs: Costs, when: str) -> None:
        """Decide the run's total steps from ``costs`` (rank 0 decides for all), record it, set the next step's lr."""
        config, p = self.config, self.progress
        before = self.total_steps if p.plan else None
        steps = affordable_steps(budget_seconds=config.time_budget * 60, elapsed=self._elapsed(), done=p.global_step,
                                 steps_per_epoch=self.steps_per_epoch, ceiling=config.epochs * self.steps_per_epoch,
                                 costs=costs)
        steps = int(self.dist.sum_(torch.tensor([steps if self.dist.is_main else 0], device=self.device)).item())
        if steps == before:
            return  # the plan holds
        p.plan.append([p.global_step, steps])
        self.training.rewind(p.global_step)  # the next step's lr, already set, follows the new plan
        rate = config.batch_size / costs.step if costs.step > 0 else float("inf")
        fit_all = steps >= config.epochs * self.steps_per_epoch
        self.log(f"{config.time_budget:g} min budget{', re-planned ' + when if when else ''}: "
                 f"{steps / self.steps_per_epoch:.1f} epochs ({steps:,} steps) at {rate:,.0f} img/s"
                 + (f", all {config.epochs} epochs fit" if fit_all and not when else ""))

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def _non_finite(self, first_bad: int) -> None:
        """Global step ``first_bad`` gave a NaN/inf loss or gradient: save the state from before it, stop (exit 3).

        Nothing was applied from that step on (see ``StepGuard``), so only the counters and the
        schedule go back to it.
        """
        p = self.progress
        epoch_start = p.global_step - p.step
        p.step, p.global_step = first_bad - epoch_start, first_bad
        self.training.rewind(first_bad)
        self._save_state()
        raise NonFiniteLossError(
            f"the loss or gradients became NaN/inf at epoch {p.epoch + 1} step {p.step + 1} (global step "
            f"{p.global_step + 1}); the state before that step is saved in {self.folder / STATE_FILE}; "
            f"lower --lr or set --grad-clip in a new run, or skip such batches with: "
            f"resnetlab train --resume {self.folder.path} --skip-nonfinite"
        )

    def _end_epoch(self) -> None:
        """Evaluate, record the epoch, choose the best on validation, save the state and the files."""
        p, config = self.progress, self.config
        self._gather_sums()
        seen = int(p.seen)
        train_loss = float(p.loss_sum) / seen if seen else float("nan")
        train_acc = int(p.correct) / seen if seen else float("nan")
        net = self.training.eval_model
        self._recalibrate(net)
        val_acc = None
        if self.val_loader:
            began = self.clock()
            val_acc = self._evaluate(net, self.val_loader)["acc"]
            self.eval_image_seconds = (self.clock() - began) / max(1, self.val_loader.num_examples)
        test_acc = self._evaluate(net, self.test_loader)["acc"] if config.test_each_epoch and self.test_loader else None
        row = {
            "epoch": p.epoch + 1,
            "lr": self.training.optimizer.param_groups[0]["lr"],
            "train_loss": train_loss,
            "train_acc": train_acc,
            "val_acc": val_acc,
            "test_acc": test_acc,
            "examples_per_sec": seen / p.epoch_seconds if p.epoch_seconds else 0.0,
            "seconds": p.epoch_seconds,
        }
        p.history.append(row)
        p.train_seconds += p.epoch_seconds
        p.train_examples += seen
        # The best epoch is chosen on validation accuracy only; without validation it is the last.
        score = val_acc if val_acc is not None else float(p.epoch)
        best_changed = score > p.best_score
        if best_changed:
            p.best_score, p.best_epoch = score, p.epoch + 1
            self.best_weights = {k: v.detach().cpu().clone() for k, v in unwrap(net).state_dict().items()}
        p.epoch, p.step = p.epoch + 1, 0
        p.start_epoch(self.device)
        self._save_state()
        self._write_epoch_files(best_changed, last=True)
        if self.watch.on_epoch is not None and self.dist.is_main:
            self.watch.on_epoch(p.history)
        skipped = f"  skipped {p.skipped} non-finite batch(es)" if p.skipped else ""
        self.log(
            f"epoch {row['epoch']}/{self.planned_epochs}  lr {row['lr']:.4g}  loss {train_loss:.3f}  "
            f"train acc {train_acc:.3f}"
            + (f"  val acc {val_acc:.3f}" if val_acc is not None else "")
            + (f"  test acc {test_acc:.3f}" if test_acc is not None else "")
            + f"  {row['examples_per_sec']:.0f} img/s  {row['seconds']:.1f} s{skipped}"
        )

    def _recalibrate(self, net: nn.Module) -> None:
        """Recompute ``net``'s batch-norm statistics from training images (see ``recalibrate.py``)."""
        if self.recalibration_loader is not None:
            recalibrate_batchnorm(net, (x for x, _ in self.recalibration_loader.batches()), device=self.device,
                                  precision=self.precision, average_over_ranks=self.dist.enabled and not self.config.sync_bn)

    def _evaluate(self, net: nn.Module, loader: DeviceLoader) -> dict[str, float]:
        """Accuracy and loss over the whole split: each rank's share, summed exactly over ranks."""
        metrics = evaluate(net, loader, precision=self.precision, tta=self.config.tta)
        if not self.dist.enabled:
            return metrics
        sums = self.dist.sum_(torch.tensor([metrics["correct"], metrics["loss_sum"], metrics["count"]],
                                           dtype=torch.float64, device=self.device)).tolist()
        correct, loss_sum, count = int(sums[0]), sums[1], int(sums[2])
        return {"acc": correct / max(count, 1), "loss": loss_sum / max(count, 1), "correct": correct,
                "loss_sum": loss_sum, "count": count}

    def _gather_sums(self) -> None:
        """Under torchrun: put the whole job's running sums of the epoch on rank 0, zeros elsewhere."""
        if not self.dist.enabled:
            return
        p = self.progress
        sums = self.dist.sum_(torch.stack([p.loss_sum.double(), p.correct.double(), p.seen.double()]))
        for value, name in zip(sums, ("loss_sum", "correct", "seen")):
            getattr(p, name).copy_(value if self.dist.is_main else torch.zeros_like(value))

    def _header(self, epoch: int) -> WeightsHeader:
        """The weights header: everything needed to use the weights without the run (``weights.py``)."""
        config, row = self.config, self.progress.history[epoch - 1]
        preprocess = Preprocess(
            channels=self.in_channels, size=config.image_size,
            # The side the images had before the loader's resize: new images are first brought to it
            # the way the data were (Pillow, bilinear), so prediction sees what training saw.
            stored_size=self.stored_size,
            mean=tuple(self.mean) if self.mean is not None else None, std=tuple(self.std) if self.std is not None else None,
        )
        return WeightsHeader(
            model=config.model, model_args=unwrap(self.training.model).model_args, class_names=self.class_names,
            preprocess=preprocess, precision=self.precision.name, preset=config.preset or "", epoch=epoch,
            metrics={k: v for k, v in row.items() if v is not None}, config=self._recorded_config().to_dict(),
            data=self.fingerprint,
        )

    def _recorded_config(self) -> TrainConfig:
        """The run's config with the time budget's decisions so far: what ``config.json`` records."""
        return self.config.replace(budget_plan=[list(d) for d in self.progress.plan] or None)

    def _write_epoch_files(self, best_changed: bool, last: bool) -> None:
        """best/last.safetensors, metrics.csv and curves.png for the epochs so far (rank 0 only)."""
        p = self.progress
        if best_changed and self.best_weights is not None:
            self.folder.write_weights("best.safetensors", self.best_weights, self._header(p.best_epoch))
        if last:
            self.folder.write_weights("last.safetensors", unwrap(self.training.eval_model).state_dict(),
                                      self._header(p.epoch))
        self.folder.write_metrics(p.history, title=f"{self.config.model} ({self.config.preset or 'custom'})")

    def _elapsed(self) -> float:
        """Wall time of the whole run: earlier processes (up to their last save) plus this one."""
        return self.elapsed_before + self.clock() - self.started

    def _save_state(self) -> None:
        """Write train_state.pt (all ranks must call it: the running sums are gathered first)."""
        if self.progress.step > 0:  # at an epoch's start the sums are zero on every rank: nothing to gather
            self._gather_sums()
        if not self.folder.writes:
            return
        self.progress.elapsed_seconds = self._elapsed()
        save_train_state(self.folder / STATE_FILE, self.training, self.progress, self.best_weights,
                         self.config.to_dict(), data=self.fingerprint)
        if self.progress.plan != self.plan_recorded:  # after the state: config.json never runs ahead of it
            self.folder.write_text("config.json", self._recorded_config().to_json())
            self.plan_recorded = [list(d) for d in self.progress.plan]

    def _stopped(self) -> None:
        """The state is saved: leave with a message that says how to continue."""
        p, signum = self.progress, self.stop.signum
        where = f"after epoch {p.epoch}" if p.step == 0 else f"at epoch {p.epoch + 1} step {p.step}/{self.steps_per_epoch}"
        raise TrainingStopped(
            f"stopped by {signal.Signals(signum).name} {where}; the state is saved in {self.folder / STATE_FILE}; "
            f"continue with: resnetlab train --resume {self.folder.path}",
            signum,
        )

    def _finish(self) -> TrainResult:
        """Test the best weights once, write ``results.json``, print the book's two lines."""
        p = self.progress
        best = copy.deepcopy(unwrap(self.training.eval_model))
        best.load_state_dict(self.best_weights)
        test_metrics = {"acc": None, "loss": None}  # a class folder without test/ has nothing to report here
        if self.test_loader is not None:
            test_metrics = self._evaluate(best, self.test_loader)
        last = p.history[-1]
        result = TrainResult(
            run_dir=self.folder.path,
            device=str(self.device),
            train_loss=last["train_loss"],
            train_acc=last["train_acc"],
            test_acc=test_metrics["acc"],
            test_loss=test_metrics["loss"],
            best_epoch=p.best_epoch,
            best_val_acc=p.best_score if self.val_loader is not None else None,
            examples_per_sec=p.train_examples / p.train_seconds if p.train_seconds else 0.0,
            train_seconds=p.train_seconds,
            total_seconds=self._elapsed(),
            skipped_batches=p.skipped,
            history=p.history,
        )
        self.folder.write_results(result)
        # The book's two closing lines (d2l.train_ch6); without a test split, the best validation accuracy instead.
        final = (f"test acc {result.test_acc:.3f}" if result.test_acc is not None
                 else f"val acc {result.best_val_acc:.3f} (no test split)")
        self.log(f"loss {result.train_loss:.3f}, train acc {result.train_acc:.3f}, {final}")
        self.log(f"{result.examples_per_sec:.1f} examples/sec on {result.device}")
        return result
