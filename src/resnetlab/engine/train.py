"""A whole training run: ``fit(config)`` starts one, ``resume(run_dir)`` continues one.

It takes a :class:`TrainConfig` and knows nothing of the command line. Data stays on the
device as uint8 (see ``data/loader.py``). The run folder is the run's memory: ``config.json``
at the start, ``train_state.pt`` after every epoch (and every ``save_every`` steps), so a run
killed at any instant continues from its last save with the same result (see ``state.py``).
"""

from __future__ import annotations

import copy
import os
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
from .checkpoint import save_state_dict, save_weights, unwrap, versions
from .config import TrainConfig, load_config_file, validate
from .distributed import (
    all_max, all_sum, broadcast_text, convert_sync_batchnorm, env_rank, init_distributed, is_comm_failure, shutdown,
    wrap_ddp,
)
from .initialize import build_model, set_train_mode
from .metrics import plot_curves, write_csv
from .optim import make_optimizer, make_scheduler
from .recalibrate import recalibrate_batchnorm
from .run_data import channel_stats, data_fingerprint, load_data, resolve_from_data, silent, warn_stderr
from .run_folder import follow_link, prepare_run_dir, write_results
from .runtime import configure_backends, resolve_device, resolve_precision, seed_everything
from .state import STATE_FILE, Progress, load_train_state, restore_train_state, save_train_state
from .steps import Ema, Training, check_interval, evaluate
from .stop import StopSignals

Log = Callable[[str], None]

# Fields a resumed run may change: they decide how the run is saved and guarded, not what it computes.
RESUME_OVERRIDES = ("save_every", "skip_nonfinite")


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


def _console_progress() -> bool:
    return sys.stderr.isatty()


def fit(config: TrainConfig, log: Log = print) -> TrainResult:
    """Train ``config.model`` on Fashion-MNIST as ``config`` says; write the run folder; return the results.

    Raises :class:`TrainingStopped` after saving the state if SIGINT or SIGTERM arrives, and
    :class:`NonFiniteLossError` (state before the bad step saved) if the loss stops being finite.
    """
    validate(config)
    return _Run(config, log).train()


def resume(run_dir: str | os.PathLike[str] = "runs/latest", log: Log = print, **overrides: Any) -> TrainResult:
    """Continue the run in ``run_dir`` from its ``train_state.pt``, with the run's own config.

    Only the fields in :data:`RESUME_OVERRIDES` may be changed. A run killed before its first
    save starts again from the beginning in the same folder (same seed, same result).
    """
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
    config = validate(TrainConfig.from_dict(load_config_file(config_path), str(config_path)).replace(**overrides))
    state_path = run_dir / STATE_FILE
    state = load_train_state(state_path) if state_path.exists() else None
    if state is not None:
        saved = {k: v for k, v in state["config"].items() if k not in RESUME_OVERRIDES}
        current = {k: v for k, v in config.to_dict().items() if k not in RESUME_OVERRIDES}
        differ = sorted(k for k in current if saved.get(k) != current[k])
        if differ:
            raise ResnetlabError(
                f"{config_path} differs from the config {state_path} was saved with (field {differ[0]!r}); "
                "put the original back, or start a new run"
            )
    if env_rank() == 0:  # under torchrun only rank 0 writes
        if overrides:
            write_text(config_path, config.to_json())
        remove_stale_temporaries(run_dir)  # half-written files of a killed process; the real ones are whole
    return _Run(config, log, run_dir=run_dir, state=state).train()


class _Run:
    """One run from set-up to results: builds everything, runs the epochs, saves, finishes."""

    def __init__(self, config: TrainConfig, log: Log, run_dir: Path | None = None, state: dict | None = None) -> None:
        self.started = time.perf_counter()
        self.config = config
        self.device = device = resolve_device(config.device)
        self.dist = init_distributed(device.type, config.dist_timeout)
        if device.type == "cuda" and self.dist.enabled:
            self.device = device = torch.device("cuda", self.dist.local_rank)
        self.log = log = log if self.dist.is_main else silent  # one voice: rank 0 prints, plots and writes
        if self.dist.enabled and config.batch_size % self.dist.world_size:
            raise ResnetlabError(
                f"--batch-size {config.batch_size} (the global batch) must be divisible by the {self.dist.world_size} "
                "processes; choose a multiple"
            )
        self.precision = precision = resolve_precision(config.precision, device)
        configure_backends(device, config.deterministic)
        self.stop = StopSignals(log)

        train, val, test = load_data(config, warn=warn_stderr if self.dist.is_main else silent)
        self.config = config = resolve_from_data(config, train)
        if len(train) < config.batch_size:
            raise ResnetlabError(
                f"--batch-size {config.batch_size} is larger than the {len(train)} training images; lower it"
            )
        self.fingerprint = data_fingerprint(train, val, test)
        if state is not None and state.get("data") != self.fingerprint:
            raise ResnetlabError(
                f"{run_dir}: the data differ from those the run was trained on (--data {config.data or 'default'}); "
                "point --data at the original files in config.json, or start a new run"
            )
        seed_everything(config.seed)
        in_channels, num_classes = train.images.shape[1], len(train.class_names)
        model = build_model(config, in_channels, num_classes, log=log if state is None else None).to(device, precision.dtype)
        if run_dir is None:
            # Only now, with data and model in hand, does the run get a folder: a bad flag leaves nothing behind.
            if self.dist.is_main:
                run_dir = prepare_run_dir(config.out, config.model)
                write_text(run_dir / "config.json", config.to_json())
            run_dir = Path(broadcast_text(str(run_dir) if run_dir is not None else None, self.dist))
        self.run_dir = run_dir
        if config.sync_bn and self.dist.enabled:
            model = convert_sync_batchnorm(model, device.type)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        step_model = wrap_ddp(model, device) if self.dist.enabled else model
        mean, std = channel_stats(train.images) if config.normalize else (None, None)

        def loader(data: ImageSet, training: bool) -> DeviceLoader:
            return DeviceLoader(
                data, config.batch_size, device=device, image_size=config.image_size, mean=mean, std=std,
                shuffle=training, drop_last=training, seed=config.seed, channels_last=config.channels_last,
                augment=Augment(config.crop_padding, config.flip, config.erase_prob) if training else Augment(),
                rank=self.dist.rank, world_size=self.dist.world_size, dtype=precision.dtype,
            )

        self.train_loader = loader(train, True)
        self.recalibration_loader = self._recalibration_loader(train, loader) if config.recalibrate_bn else None
        self.val_loader = loader(val, False) if val is not None else None
        self.test_loader = loader(test, False) if test is not None else None
        optimizer = make_optimizer(config, model)
        self.training = Training(
            config=config,
            model=model,
            step_model=torch.compile(step_model) if config.compile else step_model,
            optimizer=optimizer,
            scheduler=make_scheduler(config, optimizer, len(self.train_loader)),
            criterion=nn.CrossEntropyLoss(label_smoothing=config.label_smoothing),
            ema=Ema(model, config.ema_decay) if config.ema_decay else None,
            device=device,
            precision=precision,
            distributed=self.dist.enabled,
        )
        self.check_every = check_interval(device)
        self.metadata = {
            "model": config.model,
            "model_args": model.model_args,
            "in_channels": in_channels,
            "num_classes": num_classes,
            "class_names": list(train.class_names),
            "input_size": [in_channels, config.image_size, config.image_size],
            # The side the images had before the loader's resize: new images are first brought to it
            # the way the data were (Pillow, bilinear), so prediction sees what training saw.
            "stored_size": int(train.images.shape[-1]),
            "normalization": {"mean": mean, "std": std} if mean is not None else None,
            "preset": config.preset or "",
            "precision": precision.name,  # what the run computed in (auto resolved)
            "versions": versions(),
            "config": config.to_dict(),
        }
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.progress = Progress()
        if state is not None:
            self.progress = restore_train_state(state, self.training)
            self.best_weights = state["best_model"]
            if not self.dist.is_main:  # the saved sums are the whole job's: rank 0 carries them on
                self.progress.loss_sum.zero_()
                self.progress.correct.zero_()
                self.progress.seen.zero_()
        self.elapsed_before = self.progress.elapsed_seconds
        sizes = (len(train), len(val) if val is not None else 0, len(test) if test is not None else 0)
        self.log(
            f"{'resuming' if state is not None else 'training'} {config.model} on {sizes[0]:,} images "
            f"({len(self.train_loader)} steps/epoch), validating on {sizes[1]:,}, testing on {sizes[2]:,}; "
            f"device {device}{f' x {self.dist.world_size} processes' if self.dist.enabled else ''}, "
            f"{precision.name}; run folder {run_dir}"
            + (f"; continuing epoch {self.progress.epoch + 1} after step {self.progress.step}/{len(self.train_loader)}"
               if state is not None else "")
        )
        if state is not None and self.progress.history:
            # A kill may have landed between saving the state and writing these; write them again.
            self._write_epoch_files(best_changed=True, last=self.progress.step == 0)

    # --- the loop -------------------------------------------------------------------------

    def train(self) -> TrainResult:
        """Run the remaining epochs, then the final test; return the results."""
        try:
            with self.stop:
                while self.progress.epoch < self.config.epochs:
                    self._train_epoch()
                    self._end_epoch()
                    if self._any_rank(self.stop.requested):
                        self._stopped()
            result = self._finish()
            if self.dist.enabled:
                torch.distributed.barrier()  # leave together: a rank tearing down early can abort its peer
            return result
        except RuntimeError as exc:
            if not (self.dist.enabled and is_comm_failure(exc)):
                raise
            first = first_line(exc)[:200]
            raise LostContactError(
                f"rank {self.dist.rank} lost contact with the other processes ({first}); the last saved state is "
                f"{self.run_dir / STATE_FILE}; continue with: torchrun ... -m resnetlab train --resume {self.run_dir}"
            ) from None
        finally:
            shutdown()

    def _any_rank(self, flag: bool) -> bool:
        """``flag`` or'ed over all ranks (so all take the same branch)."""
        if not self.dist.enabled:
            return flag
        return all_max(torch.tensor([float(flag)], device=self.device)).item() > 0

    def _train_epoch(self) -> None:
        """Run the epoch's remaining steps, saving every ``save_every`` steps and on a stop request."""
        p, training, loader = self.progress, self.training, self.train_loader
        if p.step == 0:
            p.start_epoch(self.device)
        set_train_mode(training.model, self.config.freeze_backbone)
        bar = None
        if _console_progress() and self.dist.is_main:
            from tqdm import tqdm

            bar = tqdm(total=len(loader), initial=p.step, desc=f"epoch {p.epoch + 1}/{self.config.epochs}",
                       unit="step", leave=False)
        start, before = time.perf_counter(), p.epoch_seconds
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
            saving = bool(self.config.save_every) and p.global_step % self.config.save_every == 0
            local_stop = self.stop.requested and not self.dist.enabled  # under torchrun ranks agree at checks
            if not (p.step == len(loader) or saving or local_stop or p.global_step % self.check_every == 0):
                continue
            p.epoch_seconds = before + time.perf_counter() - start
            reading = training.guard.read()  # the only wait for the device between checks
            p.skipped += reading.skipped
            if reading.halted:
                self._non_finite(reading.first_bad)
            if bar is not None and p.step % 10 == 0:
                seen = int(p.seen)
                if seen:
                    bar.set_postfix(loss=f"{float(p.loss_sum) / seen:.3f}", acc=f"{int(p.correct) / seen:.3f}")
            if p.step < len(loader):  # the epoch's end saves anyway, after evaluation
                if reading.stop if self.dist.enabled else self.stop.requested:
                    self._save_state()
                    self._stopped()
                if saving:
                    self._save_state()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        p.epoch_seconds = before + time.perf_counter() - start
        if bar is not None:
            bar.close()

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
            f"{p.global_step + 1}); the state before that step is saved in {self.run_dir / STATE_FILE}; "
            f"lower --lr or set --grad-clip in a new run, or skip such batches with: "
            f"resnetlab train --resume {self.run_dir} --skip-nonfinite"
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
        val_acc = self._accuracy(net, self.val_loader) if self.val_loader else None
        test_acc = self._accuracy(net, self.test_loader) if config.test_each_epoch and self.test_loader else None
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
        skipped = f"  skipped {p.skipped} non-finite batch(es)" if p.skipped else ""
        self.log(
            f"epoch {row['epoch']}/{config.epochs}  lr {row['lr']:.4g}  loss {train_loss:.3f}  "
            f"train acc {train_acc:.3f}"
            + (f"  val acc {val_acc:.3f}" if val_acc is not None else "")
            + (f"  test acc {test_acc:.3f}" if test_acc is not None else "")
            + f"  {row['examples_per_sec']:.0f} img/s  {row['seconds']:.1f} s{skipped}"
        )

    def _recalibration_loader(self, train: ImageSet, loader: Callable[[ImageSet, bool], DeviceLoader]) -> DeviceLoader | None:
        """Unaugmented batches of ``recalibrate_bn`` training images in a seeded order (None: no batch norm to set)."""
        config = self.config
        if config.freeze_backbone:
            return None  # a frozen backbone keeps the statistics it came with
        count = min(config.recalibrate_bn, len(train))
        if count >= config.batch_size:
            count -= count % config.batch_size  # whole batches: each counts equally in the average
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(mix_seed(config.seed, 7919)))
        return loader(train.subset(order[:count]), False)

    def _recalibrate(self, net: nn.Module) -> None:
        """Recompute ``net``'s batch-norm statistics from training images (see ``recalibrate.py``)."""
        if self.recalibration_loader is None:
            return
        recalibrate_batchnorm(net, (x for x, _ in self.recalibration_loader.batches()), device=self.device,
                              precision=self.precision, average_over_ranks=self.dist.enabled and not self.config.sync_bn)

    def _accuracy(self, net: nn.Module, loader: DeviceLoader) -> float:
        return self._evaluate(net, loader)["acc"]

    def _evaluate(self, net: nn.Module, loader: DeviceLoader) -> dict[str, float]:
        """Accuracy and loss over the whole split: each rank's share, summed exactly over ranks."""
        metrics = evaluate(net, loader, precision=self.precision, tta=self.config.tta)
        if not self.dist.enabled:
            return metrics
        sums = all_sum(torch.tensor([metrics["correct"], metrics["loss_sum"], metrics["count"]],
                                    dtype=torch.float64, device=self.device)).tolist()
        correct, loss_sum, count = int(sums[0]), sums[1], int(sums[2])
        return {"acc": correct / max(count, 1), "loss": loss_sum / max(count, 1), "correct": correct,
                "loss_sum": loss_sum, "count": count}

    def _gather_sums(self) -> None:
        """Under torchrun: put the whole job's running sums of the epoch on rank 0, zeros elsewhere."""
        if not self.dist.enabled:
            return
        p = self.progress
        sums = all_sum(torch.stack([p.loss_sum.double(), p.correct.double(), p.seen.double()]))
        if self.dist.is_main:
            p.loss_sum.copy_(sums[0])
            p.correct.copy_(sums[1])
            p.seen.copy_(sums[2])
        else:
            p.loss_sum.zero_()
            p.correct.zero_()
            p.seen.zero_()

    def _epoch_metadata(self, epoch: int) -> dict[str, Any]:
        row = self.progress.history[epoch - 1]
        return {**self.metadata, "epoch": epoch, "metrics": {k: v for k, v in row.items() if v is not None}}

    def _write_epoch_files(self, best_changed: bool, last: bool) -> None:
        """best/last.safetensors, metrics.csv and curves.png for the epochs so far (rank 0 only)."""
        p = self.progress
        if not self.dist.is_main:
            return
        if best_changed and self.best_weights is not None:
            save_state_dict(self.run_dir / "best.safetensors", self.best_weights, self._epoch_metadata(p.best_epoch))
        if last:
            save_weights(self.run_dir / "last.safetensors", self.training.eval_model, self._epoch_metadata(p.epoch))
        write_csv(self.run_dir / "metrics.csv", p.history)
        plot_curves(self.run_dir / "curves.png", p.history, title=f"{self.config.model} ({self.config.preset or 'custom'})")

    def _elapsed(self) -> float:
        """Wall time of the whole run: earlier processes (up to their last save) plus this one."""
        return self.elapsed_before + time.perf_counter() - self.started

    def _save_state(self) -> None:
        """Write train_state.pt (all ranks must call it: the running sums are gathered first)."""
        if self.progress.step > 0:  # at an epoch's start the sums are zero on every rank: nothing to gather
            self._gather_sums()
        if not self.dist.is_main:
            return
        self.progress.elapsed_seconds = self._elapsed()
        save_train_state(self.run_dir / STATE_FILE, self.training, self.progress, self.best_weights,
                         self.config.to_dict(), data=self.fingerprint)

    def _stopped(self) -> None:
        """The state is saved: leave with a message that says how to continue."""
        import signal

        p, signum = self.progress, self.stop.signum
        where = f"after epoch {p.epoch}" if p.step == 0 else f"at epoch {p.epoch + 1} step {p.step}/{len(self.train_loader)}"
        raise TrainingStopped(
            f"stopped by {signal.Signals(signum).name} {where}; the state is saved in {self.run_dir / STATE_FILE}; "
            f"continue with: resnetlab train --resume {self.run_dir}",
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
            run_dir=self.run_dir,
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
        if self.dist.is_main:
            write_results(result)
        # The book's two closing lines (d2l.train_ch6); without a test split, the best validation accuracy instead.
        final = (f"test acc {result.test_acc:.3f}" if result.test_acc is not None
                 else f"val acc {result.best_val_acc:.3f} (no test split)")
        self.log(f"loss {result.train_loss:.3f}, train acc {result.train_acc:.3f}, {final}")
        self.log(f"{result.examples_per_sec:.1f} examples/sec on {result.device}")
        return result
