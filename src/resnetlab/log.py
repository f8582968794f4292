"""Where a run's lines go: a function taking one line (``print`` by default), silenced off rank 0."""

from __future__ import annotations

import sys
from typing import Callable

Log = Callable[[str], None]


def silent(message: str) -> None:
    """A log that drops everything (ranks other than 0 under torchrun)."""


def warn_stderr(message: str) -> None:
    """Print a warning on stderr."""
    print(message, file=sys.stderr)
