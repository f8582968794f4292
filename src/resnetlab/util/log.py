"""Where a run's lines go: a function taking one line (``print`` by default), silenced off rank 0."""

from __future__ import annotations

import sys
from typing import Callable

Log = Callable[[str], None]


def progress_bar(show: bool | None, total: int, initial: int, desc: str, unit: str = "step"):
    """A tqdm bar of ``total`` ``unit``s (a widget in a notebook) if ``show`` (None: on a terminal only), else None."""
    if not (sys.stderr.isatty() if show is None else show):
        return None
    from tqdm.auto import tqdm  # imported only for a bar: tqdm.auto looks for a notebook when it is imported

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=False)


def silent(message: str) -> None:
    """A log that drops everything (ranks other than 0 under torchrun)."""


def warn_stderr(message: str) -> None:
    """Print a warning on stderr."""
    print(message, file=sys.stderr)
