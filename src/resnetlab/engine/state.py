"""``train_state.pt``: everything needed to continue a run exactly where it stopped.

It holds the model, optimiser, scheduler and EMA states, the best weights so far, the random
states (Python, NumPy, torch CPU and CUDA) and :class:`Progress` (epoch, step within it, the
epoch's running sums, history, best epoch). The data order needs no state of its own: the
loader draws it from ``(seed, epoch)`` and augmentation from ``(seed, epoch, step)``.

The file is written atomically (temporary name, fsync, rename), so a kill at any instant
leaves the previous good state, and it is read with ``torch.load(weights_only=True)``, which
refuses any pickled object other than tensors and plain containers: loading it never runs
code from it. :func:`open_to_resume` checks a run folder before it is resumed (a run, not
finished, ``config.json`` as the state was saved with, only allowed changes), and
:func:`check_same_data` that its data are the ones it was trained on.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import random
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import RESUME_OVERRIDES, TrainConfig, load_config_file, validate
from ..config.fields import upgrade_recorded
from ..errors import ResnetlabError, first_line
from ..util.compat import compiled_original, refused_by_weights_only
from ..util.fileio import atomic_path
from ..weights import versions
from .step import Training

STATE_FILE = "train_state.pt"
FORMAT = "resnetlab.train_state/3"  # 3: the time budget's plan; a fingerprint per split


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside ``torch.compile`` and DistributedDataParallel wrappers."""
    while True:
        if compiled_original(model) is not None:
            model = compiled_original(model)
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def load_tensors_only(path: Path, *, name: str, refused_hint: str, damaged: str, damaged_hint: str = "") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU: only tensors and plain containers, no code runs.

    A file holding other Python objects is refused, and a damaged one reported, each in one
    line starting with ``name`` (how the user gave the file); ``refused_hint`` and
    ``damaged_hint`` say what to do instead, ``damaged`` says what is wrong with a broken file.
    """
    hint = f"; {damaged_hint}" if damaged_hint else ""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ResnetlabError(f"{name}: no such file") from None
    except pickle.UnpicklingError as exc:
        if refused_by_weights_only(exc):  # it names the global it refused; anything else is a broken pickle
            raise ResnetlabError(
                f"{name}: refused to load it: it holds Python objects, not just tensors and plain values, and "
                f"loading it could run code; {refused_hint}"
            ) from None
        raise ResnetlabError(f"{name}: {damaged} ({first_line(exc)}){hint}") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ResnetlabError(f"{name}: {damaged} ({first_line(exc)}){hint}") from None


@dataclass
class Progress:
    """Where a run stands: the epoch in progress, the next step in it, and what came before."""

    epoch: int = 0  # the epoch in progress, 0-based (== epochs once training is done)
    step: int = 0  # the next step of that epoch
    global_step: int = 0  # batches processed since the start (skipped ones included)
    loss_sum: torch.Tensor | None = None  # this epoch's summed training loss so far (on the device)
    correct: torch.Tensor | None = None  # this epoch's correct training predictions so far
    seen: torch.Tensor | None = None  # this epoch's training images so far (on the device)
    epoch_seconds: float = 0.0  # wall time of this epoch's steps so far
    train_seconds: float = 0.0  # wall time of all finished epochs' steps
    train_examples: int = 0  # training images of all finished epochs
    skipped: int = 0  # batches skipped for a non-finite loss (--skip-nonfinite), whole run
    elapsed_seconds: float = 0.0  # wall time of the run up to the last save, over all its processes
    history: list[dict] = field(default_factory=list)  # one row per finished epoch (metrics.csv)
    best_score: float = -1.0  # validation accuracy of the best epoch (its index when there is no validation)
    best_epoch: int = 0  # 1-based; 0: none yet
    plan: list[list[int]] = field(default_factory=list)  # the time budget's decisions [global step, total steps] (budget.py)

    def train_figures(self) -> tuple[float, float, int]:
        """This epoch's training loss and accuracy so far (NaN before any applied step), and its images."""
        seen = int(self.seen)
        if not seen:
            return float("nan"), float("nan"), 0
        return float(self.loss_sum) / seen, int(self.correct) / seen, seen

    def close_epoch(self, row: dict[str, Any], seen: int) -> bool:
        """Record the finished epoch's ``row``; move to the next epoch; return whether it is the best so far.

        The best epoch is chosen on validation accuracy only (``row["val_acc"]``); without
        validation it is the last.
        """
        self.history.append(row)
        self.train_seconds += self.epoch_seconds
        self.train_examples += seen
        score = row["val_acc"] if row["val_acc"] is not None else float(self.epoch)
        best = score > self.best_score
        if best:
            self.best_score, self.best_epoch = score, self.epoch + 1
        self.epoch, self.step = self.epoch + 1, 0
        return best

    def zero_sums(self) -> None:
        """Set the epoch's running sums to zero (ranks other than 0 of a resumed job: rank 0 carries the job's)."""
        for name in _DEVICE_SUMS:
            getattr(self, name).zero_()

    def start_epoch(self, device: torch.device) -> None:
        """Reset the running sums for a new epoch (kept when resuming mid-epoch)."""
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.long, device=device)
        self.seen = torch.zeros((), dtype=torch.long, device=device)
        self.epoch_seconds = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain values and CPU tensors, for ``torch.save``."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in _DEVICE_SUMS:
            if values[name] is not None:
                values[name] = values[name].detach().cpu()
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any], device: torch.device) -> "Progress":
        """The inverse of :meth:`to_dict`, with the running sums moved to ``device``."""
        progress = cls(**values)
        for name in _DEVICE_SUMS:
            tensor = getattr(progress, name)
            if tensor is not None:
                setattr(progress, name, tensor.to(device))
        return progress


_DEVICE_SUMS = ("loss_sum", "correct", "seen")  # Progress fields kept on the device during an epoch


def capture_rng() -> dict[str, Any]:
    """The global random states: Python, NumPy, torch CPU and every CUDA device."""
    np_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(states: dict[str, Any]) -> None:
    """Set the global random states captured by :func:`capture_rng`."""
    random.setstate(states["python"])
    numpy = states["numpy"]
    np.random.set_state({
        "bit_generator": "MT19937",
        "state": {"key": numpy["key"].numpy().astype(np.uint32), "pos": numpy["pos"]},
        "has_gauss": numpy["has_gauss"],
        "gauss": numpy["gauss"],
    })
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_train_state(
    path: str | os.PathLike[str],
    training: Training,
    progress: Progress,
    best_weights: dict[str, torch.Tensor] | None,
    config: dict[str, Any],
    data: dict[str, str | None],
) -> None:
    """Write the whole train state to ``path`` atomically (``data``: each split's fingerprint)."""
    state = {
        "format": FORMAT,
        "versions": versions(),
        "config": config,
        "data": data,
        "progress": progress.to_dict(),
        "model": unwrap(training.model).state_dict(),
        "optimizer": training.optimizer.state_dict(),
        "scheduler": training.scheduler.state_dict(),
        "ema": training.ema.module.state_dict() if training.ema is not None else None,
        "amp_scaler": training.scaler.state_dict() if training.scaler is not None else None,  # fp16's loss scale
        "best_model": best_weights,
        "rng": capture_rng(),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_train_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a train state with ``weights_only=True`` (no code from the file runs); check its format."""
    path = Path(path)
    state = load_tensors_only(
        path, name=str(path), damaged="damaged train state", damaged_hint="resume from an intact copy",
        refused_hint="it was not written by resnetlab; use the run's own train_state.pt",
    )
    found = state.get("format") if isinstance(state, dict) else None
    if isinstance(found, str) and found.startswith("resnetlab.train_state/") and found != FORMAT:
        raise ResnetlabError(f"{path}: written by another version of resnetlab ({found}, this one reads {FORMAT}); "
                             "finish the run with that version, or start a new run")
    if found != FORMAT:
        raise ResnetlabError(f"{path}: not a resnetlab train state (no '{FORMAT}' format tag)")
    return state


def open_to_resume(run_dir: Path, overrides: dict[str, Any]) -> tuple[TrainConfig, TrainConfig, dict[str, Any] | None]:
    """What resuming ``run_dir`` starts from: (the config to run, ``config.json`` as recorded, the train state or None).

    Refused in one line: a folder that is not a run, a finished run, a field that may not change
    (only :data:`RESUME_OVERRIDES` may), a ``config.json`` edited since the state was saved.
    With a state, the run goes on from the budget plan it was given (config.json records the
    decisions so far, the state holds them as progress); without one (killed before its first
    save) it starts over from config.json.
    """
    config_path, state_path = run_dir / "config.json", run_dir / STATE_FILE
    if not run_dir.is_dir():
        raise ResnetlabError(f"--resume {run_dir}: no such run folder; give the folder of a run started by 'resnetlab train'")
    if not config_path.exists():
        raise ResnetlabError(f"--resume {run_dir}: no config.json there, so it is not a resnetlab run folder")
    if (run_dir / "results.json").exists():
        raise ResnetlabError(f"--resume {run_dir}: this run already finished (results.json exists); start a new run to train more")
    changed = sorted(set(overrides) - set(RESUME_OVERRIDES))
    if changed:
        raise ResnetlabError(f"--{changed[0].replace('_', '-')} cannot be changed when resuming: the run continues with "
                             f"its own {config_path}; start a new run to change it")
    recorded = validate(TrainConfig.from_dict(load_config_file(config_path), str(config_path)).replace(**overrides))
    if not state_path.exists():
        return recorded, recorded, None
    state = load_train_state(state_path)
    _check_resumable(state, recorded.to_dict(), config_path, state_path)
    return recorded.replace(budget_plan=state["config"].get("budget_plan")), recorded, state


def _check_resumable(state: dict[str, Any], recorded: dict[str, Any], config_path: Path, state_path: Path) -> None:
    """Refuse to resume when ``config.json`` (``recorded``) differs from the config the state was saved with.

    The fields a resumed run may change (``RESUME_OVERRIDES``) and the time budget's record,
    which config.json keeps and the state holds as progress, are not compared.
    """
    saved = upgrade_recorded(state["config"])  # as config.json was read: an older run's values in today's terms
    differ = sorted(k for k in recorded if k not in (*RESUME_OVERRIDES, "budget_plan") and saved.get(k) != recorded[k])
    if differ:
        raise ResnetlabError(
            f"{config_path} differs from the config {state_path} was saved with (field {differ[0]!r}); "
            "put the original back, or start a new run"
        )


def check_same_data(state: dict[str, Any], fingerprint: dict[str, str | None], data: str) -> None:
    """Refuse to resume on other data than the run was trained on (each split's fingerprint)."""
    if state.get("data") != fingerprint:
        raise ResnetlabError(
            f"the data differ from those the run was trained on (--data {data}); give the folder that holds the "
            "original files (resnetlab train --resume RUN_DIR --data DIR), or start a new run"
        )


def restore_train_state(state: dict[str, Any], training: Training) -> None:
    """Load the model, optimiser, schedule, EMA, loss scale and random states of a state read by :func:`load_train_state`.

    Its progress is read apart (``Progress.from_dict(state["progress"], device)``).
    """
    unwrap(training.model).load_state_dict(state["model"])
    training.optimizer.load_state_dict(state["optimizer"])
    training.scheduler.load_state_dict(state["scheduler"])
    if training.ema is not None:
        training.ema.module.load_state_dict(state["ema"])
    if training.scaler is not None and state.get("amp_scaler"):
        training.scaler.load_state_dict(state["amp_scaler"])
    restore_rng(state["rng"])
