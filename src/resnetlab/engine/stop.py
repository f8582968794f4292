"""Stopping a run cleanly on SIGINT (Ctrl-C) or SIGTERM (a scheduler's kill).

The first signal only sets a flag: the loop finishes the step it is in, saves the train
state and stops. A second SIGINT stops at once (``KeyboardInterrupt``); files are still never
half-written, because every write goes to a temporary name first.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Callable

Notify = Callable[[str], None]


class StopSignals:
    """A context manager that turns SIGINT and SIGTERM into a request to stop (see :attr:`signum`).

    Outside the main thread (where Python cannot install handlers) it does nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, notify: Notify) -> None:
        self.notify = notify
        self.signum: int | None = None  # the first signal received, if any
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        """Whether a stop was requested."""
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.signum = signum
        self.notify(
            f"{signal.Signals(signum).name} received: finishing the current step and saving the train state"
            + (" (Ctrl-C again stops at once)" if signum == signal.SIGINT else "")
        )

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
