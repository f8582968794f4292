"""Training steps under ``torch.cuda.set_sync_debug_mode("error")``: whether the host waits for the device in a step.

Issue 20's first goal: a whole epoch of steps runs without a host sync except at the points the
README names, the check points every ``CHECK_EVERY`` steps (and at the epoch's last step: the
step guard's reading of its flags, the hooks' ``at_check``) and the epoch's end. :func:`syncs_are_errors` patches the training loop so
that every epoch's steps (``Loop._train_epoch``) run in error mode, and only those points (and
the compile warm-up's own timing) run with it off; a sync anywhere else raises a RuntimeError
("called a synchronizing CUDA operation") whose traceback says where (:func:`where_synced`).
Used by ``gpu_suite.py`` and ``tests/test_gpu.py``; CUDA only (the mode is a CUDA setting).
"""

from __future__ import annotations

import contextlib
import functools
import traceback
from pathlib import Path
from typing import Callable, Iterator

import torch

import resnetlab
from resnetlab.engine.hooks import CompileTiming, TimeBudget
from resnetlab.engine.loop import Loop

# The loop's own points where it may wait for the device: its check points (the guard's reading, a stop, the hooks'
# at_check), its explicit waits (the epoch's end, the time budget's timing), saving and planning, and the timing of
# the compile warm-up steps.
ALLOWED = ((Loop, "_check"), (Loop, "sync"), (Loop, "save_state"), (TimeBudget, "_plan"), (CompileTiming, "on_epoch_start"),
           (CompileTiming, "after_step"))


def _in_mode(mode: str, method: Callable) -> Callable:
    """``method`` run with the sync debug mode at ``mode``, the caller's restored after."""
    @functools.wraps(method)
    def wrapped(*args, **kwargs):
        before = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode(mode)
        try:
            return method(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode(before)
    return wrapped


@contextlib.contextmanager
def syncs_are_errors() -> Iterator[None]:
    """Within it, a host sync in a training epoch's steps raises, outside :data:`ALLOWED`; the loop is restored after."""
    patched = [(Loop, "_train_epoch", "error"), *((owner, name, "default") for owner, name in ALLOWED)]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in patched]
    try:
        for owner, name, mode in patched:
            setattr(owner, name, _in_mode(mode, getattr(owner, name)))
        yield
    finally:
        for owner, name, method in originals:
            setattr(owner, name, method)


def is_sync_error(exc: BaseException) -> bool:
    """Whether ``exc`` is the error the sync debug mode raises."""
    return isinstance(exc, RuntimeError) and "synchronizing CUDA operation" in str(exc)


def where_synced(exc: BaseException, short: bool = False) -> str:
    """Where ``exc`` was raised in resnetlab: its innermost resnetlab frame (file:line in function: code, and the
    error's first line), or with ``short`` only file:line."""
    package = Path(resnetlab.__file__).resolve().parent
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename).resolve().is_relative_to(package)]
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if not frames:
        return "outside resnetlab" if short else message
    f = frames[-1]
    where = f"{Path(f.filename).resolve().relative_to(package.parent).as_posix()}:{f.lineno}"
    return where if short else f"{where} in {f.name}: {(f.line or '').strip()} ({message})"
