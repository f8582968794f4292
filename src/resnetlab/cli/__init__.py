"""The ``resnetlab`` command line: it parses arguments and calls the library, nothing more.

One module per command (or pair of related commands), each with its argparse adapter
(``add_parsers``) and the command's function: ``summary`` (summary, models), ``train``,
``lr_find`` (lr-find), ``evaluate`` (eval), ``predict``, ``export``, ``explain`` (explain, maps) and ``data``
(show-data, plot, download). Nothing else in the package imports this package.

A mistake the user can make ends as one line on stderr naming the culprit and the fix, with exit
status 2 and no traceback; a non-finite loss ends a run with status 3, and SIGINT/SIGTERM with
130/143 after the run's state is saved.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from typing import NoReturn, Sequence

from PIL import Image

from ..engine.distributed import env_rank, launched_by_torchrun
from ..errors import NonFiniteLossError, ResnetlabError, TrainingStopped
from ..version import __version__
from . import data, evaluate, explain, export, lr_find, predict, summary, train

COMMANDS = (summary, train, lr_find, evaluate, predict, export, explain, data)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a single line (no usage block), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with one sub-command per task."""
    parser = _Parser(prog="resnetlab", description="Residual networks on PyTorch: build, inspect, train, evaluate, predict, export.")
    parser.add_argument("--version", action="version", version=f"resnetlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parsers(sub)
    return parser


def process_age() -> float:
    """Seconds since this process started (Linux); 0 where that cannot be read."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def main(argv: Sequence[str] | None = None, *, started: float | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit status.

    ``started`` (a ``time.monotonic()`` reading) is when the command began, which a time budget
    counts from: the console script passes its process's start (:func:`run`); called from
    Python, the command begins with this call.
    """
    started = time.monotonic() if started is None else started
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a one-line usage error already printed
        return exc.code if isinstance(exc.code, int) else 2
    args.started = started
    # Pillow warns (several lines) about images between one and two times its pixel limit before
    # our own check refuses them in one line; in the command line that line is the whole message.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    rank = env_rank()
    who = f"resnetlab {args.command}" + (f" [rank {rank}]" if launched_by_torchrun() else "")
    try:
        return args.func(args)
    except (NonFiniteLossError, TrainingStopped) as exc:
        if rank == 0:  # under torchrun every rank stops together; one message is enough
            print(f"{who}: {'error: ' if isinstance(exc, NonFiniteLossError) else ''}{exc}", file=sys.stderr)
        return exc.exit_code
    except ResnetlabError as exc:
        print(f"{who}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        # A second Ctrl-C: stop at once. Every file is written to a temporary name first, so the
        # last saved state and weights are whole.
        print(f"{who}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`resnetlab eval ... | head`): stop quietly, as other tools do; the
        # rest of the output goes nowhere, so Python's flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def run() -> NoReturn:
    """Console-script entry point: exit with :func:`main`'s status; the command began when the process did."""
    sys.exit(main(started=time.monotonic() - process_age()))
