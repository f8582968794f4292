"""``train_state.pt``: everything needed to continue a run exactly where it stopped.

It holds the model, optimiser, scheduler and EMA states, the best weights so far, the random
states (Python, NumPy, torch CPU and CUDA) and :class:`Progress` (epoch, step within it, the
epoch's running sums, history, best epoch). The data order needs no state of its own: the
loader draws it from ``(seed, epoch)`` and augmentation from ``(seed, epoch, step)``.

The file is written atomically (temporary name, fsync, rename), so a kill at any instant
leaves the previous good state, and it is read with ``torch.load(weights_only=True)``, which
refuses any pickled object other than tensors and plain containers: loading it never runs
code from it.
"""

from __future__ import annotations

import dataclasses
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ResnetlabError
from ..fileio import atomic_path
from ..weights import versions
from .checkpoint import load_tensors_only, unwrap
from .steps import Training

STATE_FILE = "train_state.pt"
FORMAT = "resnetlab.train_state/3"  # 3: the time budget's plan; a fingerprint per split


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
