"""The run folder: where a run's files go, ``runs/latest``, its lock, what each epoch writes (rank 0 only), and what a finished
run reports."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..config import RunConfig, default_out
from ..errors import ResnetlabError
from ..util.fileio import make_folder, write_text
from ..util.locks import RunLock
from ..util.log import Log, warn_stderr
from ..weights import WeightsHeader, save_weights
from .distributed import Dist
from .metrics import plot_curves, write_csv
from .state import unwrap

if TYPE_CHECKING:
    from .setup import Run


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

    @classmethod
    def of_run(cls, progress: Any, *, run_dir: Path, device: str, test: dict[str, Any], validated: bool,
               total_seconds: float) -> "TrainResult":
        """The result of a run whose ``progress`` is done; ``test``: the best weights' test metrics (None without a test split)."""
        p, last = progress, progress.history[-1]
        return cls(run_dir=run_dir, device=device, train_loss=last["train_loss"], train_acc=last["train_acc"],
                   test_acc=test["acc"], test_loss=test["loss"], best_epoch=p.best_epoch,
                   best_val_acc=p.best_score if validated else None,
                   examples_per_sec=p.train_examples / p.train_seconds if p.train_seconds else 0.0,
                   train_seconds=p.train_seconds, total_seconds=total_seconds, skipped_batches=p.skipped, history=p.history)


def prepare_run_dir(out: str | None, model_name: str, warn: Log = warn_stderr) -> tuple[Path, RunLock]:
    """Create the run folder and take its lock (refusing a folder in use, or one that already holds a run); point
    ``runs/latest`` at it. The caller releases the lock when the run ends.

    ``runs/latest`` is only ever replaced when it is the link this function made: a real folder
    of that name (an earlier ``--out runs/latest``, say) is left alone, with a warning.
    """
    run_dir = Path(out) if out else default_out(model_name)
    make_folder(run_dir)
    lock = RunLock.acquire(run_dir)  # a live run in this folder is named here
    if (run_dir / "config.json").exists():  # checked under the lock: two runs starting at once cannot both pass
        lock.release()
        raise ResnetlabError(
            f"--out {run_dir} already holds a run; choose another folder, or continue it with --resume {run_dir}"
        )
    _point_latest(run_dir, out, warn)
    return run_dir, lock


def _point_latest(run_dir: Path, out: str | None, warn: Log) -> None:
    """Point ``runs/latest`` at ``run_dir`` when it was named by default (see :func:`prepare_run_dir`)."""
    if out is None:
        link = run_dir.parent / "latest"
        if link.exists() and not link.is_symlink():
            warn(f"warning: {link} is not the link to the latest run but a {'folder' if link.is_dir() else 'file'} "
                 f"of its own; left as it is (this run is {run_dir}, --resume needs its name)")
            return
        tmp = run_dir.parent / f".latest.{run_dir.name}"
        try:
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(run_dir.name)
            tmp.replace(link)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            warn(f"warning: cannot point {link} at this run ({exc.strerror}); it is {run_dir}")


def follow_link(path: Path) -> Path:
    """``runs/latest`` -> ``runs/<its target>``, so messages name the real run folder."""
    return path.parent / os.readlink(path) if path.is_symlink() else path


class RunFolder:
    """A run's folder; only rank 0 writes (on the other ranks every write does nothing).

    ``lock``: the folder's lock when this object took it (a new run's rank 0), given back by :meth:`release`.
    """

    def __init__(self, path: Path, writes: bool, lock: RunLock | None = None) -> None:
        self.path, self.writes, self.lock = path, writes, lock

    @classmethod
    def create(cls, out: str | None, model_name: str, dist: Dist, warn: Log = warn_stderr) -> "RunFolder":
        """Rank 0 creates the folder and takes its lock (see :func:`prepare_run_dir`); every rank learns its path."""
        path, lock = prepare_run_dir(out, model_name, warn) if dist.is_main else (None, None)
        return cls(Path(dist.broadcast_text(str(path) if path is not None else None)), dist.is_main, lock)

    def release(self) -> None:
        """Give the folder's lock back, if this object took it (the run has ended, or failed to start)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def write_text(self, name: str, text: str) -> None:
        """Write a text file into the folder, atomically."""
        if self.writes:
            write_text(self.path / name, text)

    def write_weights(self, name: str, state: dict[str, torch.Tensor], header: WeightsHeader) -> None:
        """Write weights with their header (``best.safetensors``, ``last.safetensors``)."""
        if self.writes:
            save_weights(self.path / name, state, header)

    def write_metrics(self, history: list[dict], title: str) -> None:
        """``metrics.csv`` and ``curves.png`` for the epochs so far."""
        if self.writes:
            write_csv(self.path / "metrics.csv", history)
            plot_curves(self.path / "curves.png", history, title=title)

    def write_results(self, result: TrainResult) -> None:
        """``results.json``: the final numbers of a run (JSON has no NaN: a diverged metric is null)."""
        values = {k: v for k, v in result.__dict__.items() if k not in ("run_dir", "history")}
        values = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in values.items()}
        self.write_text("results.json", json.dumps(values, indent=2, allow_nan=False) + "\n")


def write_epoch_files(run: "Run", best_changed: bool, last: bool) -> None:
    """best/last.safetensors, metrics.csv and curves.png for the epochs so far (rank 0 only)."""
    p = run.progress
    if best_changed and run.best_weights is not None:
        run.folder.write_weights("best.safetensors", run.best_weights, weights_header(run, p.best_epoch))
    if last:
        run.folder.write_weights("last.safetensors", unwrap(run.training.eval_model).state_dict(), weights_header(run, p.epoch))
    run.folder.write_metrics(p.history, title=f"{run.config.model} ({run.config.preset})")


def weights_header(run: "Run", epoch: int) -> WeightsHeader:
    """The weights header: everything needed to use the weights without the run (``weights.py``)."""
    return WeightsHeader.of_run(model=unwrap(run.training.model), class_names=run.class_names, preprocess=run.preprocess,
                                config=recorded_config(run).to_dict(), row=run.progress.history[epoch - 1], epoch=epoch,
                                data=run.fingerprint)


def recorded_config(run: "Run") -> RunConfig:
    """The run's config with the time budget's decisions so far: what ``config.json`` records."""
    return run.config.replace(budget_plan=[list(d) for d in run.progress.plan])
