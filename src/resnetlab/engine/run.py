"""A whole training run: ``fit(config)`` starts one, ``resume(run_dir)`` continues one.

Both set the run up (``setup.set_up``: data, the configuration resolved once, model, loaders,
step, progress) and hand it to the loop (``loop.Loop``). The run folder is the run's memory:
``config.json`` at the start, ``train_state.pt`` after every epoch (and every ``save_every``
steps), so a run killed at any instant continues from its last save with the same result. Every
duration the run reads comes from one clock, ``time.monotonic`` unless the caller passes
another (tests pass a fake one).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from torch import nn

from ..config import LATEST, TrainConfig, check_init_file, validate
from ..errors import ResnetlabError
from ..models.registry import CUSTOM_PREFIX, custom_model_name, is_custom
from ..util.compat import is_out_of_memory
from ..util.fileio import remove_stale_temporaries, write_text
from ..util.locks import RunLock
from ..util.log import Log
from ..weights import load_model
from .distributed import env_rank, launched_by_torchrun
from .hooks import Hook
from .loop import Loop
from .run_folder import TrainResult, follow_link
from .setup import Run, out_of_memory, set_up
from .state import STATE_FILE, open_to_resume

Clock = Callable[[], float]  # seconds, monotonic


def fit(config: TrainConfig, log: Log = print, *, started: float | None = None, clock: Clock = time.monotonic,
        model: nn.Module | None = None, progress: bool | None = None, hooks: Sequence[Hook] = ()) -> TrainResult:
    """Train as ``config`` says (unset fields decided by ``config.resolve``); write the run folder; return the results.

    ``started`` (a reading of ``clock``) is when the run's time budget began: the ``resnetlab``
    command passes its process's start; the default is this call. ``model``: your own network
    (any ``nn.Module`` that maps the images to one score per class) instead of ``config.model``;
    a copy of it is trained, recorded as ``custom:<class>``, and when the run ends ``model``
    holds the best weights (those the test accuracy is of), in eval mode. ``progress``: a bar per
    epoch (None: on a terminal only); ``hooks``: your own (``hooks.py``: a tracker, say). Raises
    :class:`TrainingStopped` after saving the state if SIGINT or SIGTERM arrives, and
    :class:`NonFiniteLossError` (state before the bad step saved) if the loss stops being finite.
    """
    started = clock() if started is None else started
    if model is not None:
        if config.model is not None:
            raise ResnetlabError(f"model {config.model!r} and a module were both given; give one")
        config = config.replace(model=custom_model_name(model))
    check_module(config.model, model)
    check_init_file(validate(config))
    result = _train(config, lambda: set_up(config, log, out=config.out, module=model), started=started, clock=clock,
                    progress=progress, hooks=hooks)
    return _give_back(result, model)


def resume(run_dir: str | os.PathLike[str] = LATEST, log: Log = print, *, started: float | None = None,
           clock: Clock = time.monotonic, model: nn.Module | None = None, progress: bool | None = None,
           hooks: Sequence[Hook] = (), **overrides: Any) -> TrainResult:
    """Continue the run in ``run_dir`` from its ``train_state.pt``, with the run's own config.

    Only the fields in ``config.RESUME_OVERRIDES`` may be changed. A run killed before its first
    save starts again from the beginning in the same folder (same seed, same result). A time
    budget goes on from what the earlier processes used (``started`` and ``clock`` as for :func:`fit`).
    A run of your own network needs that network again (``model``, built as before); ``progress``
    and ``hooks`` as for :func:`fit`.
    """
    started = clock() if started is None else started
    run_dir = follow_link(Path(run_dir))
    # The process that writes (under torchrun rank 0) holds the folder before it reads the run's state: a second
    # process (the run still alive, or another resume) is refused here, and the state it reads cannot move.
    writes = not launched_by_torchrun() or env_rank() == 0
    is_run = (run_dir / "config.json").is_file()  # not a run (or no folder): open_to_resume says so, and no lock is left
    lock = RunLock.acquire(run_dir) if writes and is_run else None
    try:
        given, recorded, state = open_to_resume(run_dir, overrides)
        check_module(given.model, model, run_dir)
        if state is None:
            check_init_file(given)  # a run that never saved starts over, from its --init file again
        if writes:
            if overrides:
                kept = {k: v for k, v in recorded.to_dict().items() if k != "out"}  # config.json's fields, changed
                write_text(run_dir / "config.json", json.dumps(kept, indent=2) + "\n")
            remove_stale_temporaries(run_dir)  # half-written files of a killed process; the real ones are whole
        result = _train(given, lambda: set_up(given, log, run_dir=run_dir, state=state, module=model), started=started,
                        clock=clock, progress=progress, hooks=hooks)
    finally:
        if lock is not None:
            lock.release()
    return _give_back(result, model)


def check_module(name: str | None, module: nn.Module | None, run_dir: Path | None = None) -> None:
    """A run records a custom module as ``custom:<class>``: it needs a module of that class, and only such a run takes one.

    ``run_dir``: the run being resumed (None: a new run).
    """
    where = str(run_dir) if run_dir is not None else "fit(config)"
    if module is None and is_custom(name):
        kind = name.removeprefix(CUSTOM_PREFIX)
        if run_dir is None:
            raise ResnetlabError(f"model {name!r} names a module built in Python; pass the module: resnetlab.train(model=net)")
        raise ResnetlabError(f"{where}: this run trains a custom {kind} built in Python, which the command line cannot "
                             f"rebuild; continue it from Python with that network: resnetlab.resume({str(run_dir)!r}, model=net)")
    if module is not None and name != custom_model_name(module):
        if is_custom(name):
            raise ResnetlabError(f"{where}: this run trains a {name.removeprefix(CUSTOM_PREFIX)}, not a "
                                 f"{type(module).__qualname__}; give the network it was started with")
        raise ResnetlabError(f"{where}: this run trains the registered model {name}; resume it without model=")


def _give_back(result: TrainResult, module: nn.Module | None) -> TrainResult:
    """The caller's own module takes the run's best weights (float, on its own device, eval mode), as ``best.safetensors`` holds them."""
    if module is not None:
        best = result.run_dir / "best.safetensors"
        if best.exists():
            load_model(best, module)  # loads in place, in eval mode
    return result


def _train(given: TrainConfig, make: Callable[[], Run], **loop: Any) -> TrainResult:
    """Set the run up and train it; memory running out becomes one line naming what to lower."""
    try:
        run = make()
    except RuntimeError as exc:  # before anything reached the device (set_up names the batch from then on)
        if not is_out_of_memory(exc):
            raise
        raise out_of_memory(exc, given.device or "the device", given.batch_size, None) from None
    try:
        return Loop(run, **loop).train()
    except RuntimeError as exc:
        if not is_out_of_memory(exc):
            raise
        raise out_of_memory(exc, run.device, run.config.batch_size, run.folder / STATE_FILE) from None
    finally:
        run.folder.release()  # a new run's lock, however it ended (resume() holds and releases its own)
