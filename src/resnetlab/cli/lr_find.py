"""``resnetlab lr-find``: the learning-rate range test on the run that ``resnetlab train`` with the same flags would start."""

from __future__ import annotations

import argparse

from ..engine.lr_find import lr_find
from .train import add_train_arguments, config_from_args


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the ``lr-find`` command: the range test's own flags, then every ``train`` flag."""
    p = sub.add_parser("lr-find", help="find a learning rate: a short run with a growing rate, its loss drawn "
                                       "(lr_find.png) and a rate suggested; takes train's flags")
    p.add_argument("--start-lr", type=float, default=1e-7, metavar="X", help="the first step's rate (default 1e-7)")
    p.add_argument("--end-lr", type=float, default=10.0, metavar="X", help="the last step's rate (default 10)")
    p.add_argument("--steps", type=int, default=100, metavar="N",
                   help="steps from --start-lr to --end-lr (default 100); it stops earlier when the loss diverges")
    p.add_argument("--plot", default="lr_find.png", metavar="FILE", help="where the curve goes (default lr_find.png)")
    add_train_arguments(p)
    p.set_defaults(func=lr_find_command)


def lr_find_command(args: argparse.Namespace) -> int:
    """Run the range test; it prints the suggestion and writes the picture."""
    lr_find(config_from_args(args), start_lr=args.start_lr, end_lr=args.end_lr, steps=args.steps, plot=args.plot)
    return 0
