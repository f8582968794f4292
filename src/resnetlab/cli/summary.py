"""``resnetlab summary MODEL`` (the seed's shape trace and a per-layer table) and ``resnetlab models``."""

from __future__ import annotations

import argparse

from ..errors import ResnetlabError, first_line
from ..models import create_model, list_models, model_spec
from ..models.summary import summary
from .common import parse_input_size


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the ``summary`` and ``models`` commands."""
    p = sub.add_parser("summary", help="print a model's shape trace and per-layer table")
    p.add_argument("model", metavar="MODEL", help="a registered model name (see 'resnetlab models')")
    p.add_argument("--input-size", metavar="N,C,H,W", help="input batch shape (default: the model's natural one)")
    p.add_argument("--depth", type=int, default=2, help="nesting depth of the table (default: 2)")
    p.set_defaults(func=summary_command)

    p = sub.add_parser("models", help="list the registered models and their natural image sizes")
    p.set_defaults(func=models_command)


def summary_command(args: argparse.Namespace) -> int:
    """Print the model's trace and table for ``--input-size`` (default: its natural size)."""
    spec = model_spec(args.model)
    model = create_model(args.model)
    if args.input_size is None:
        size = (1, model.in_channels, spec.image_size, spec.image_size)
    else:
        size = parse_input_size(args.input_size)
        if size[1] != model.in_channels:
            raise ResnetlabError(
                f"--input-size {args.input_size!r} has {size[1]} channel(s) but {args.model} takes "
                f"{model.in_channels}; use N,{model.in_channels},H,W"
            )
    if args.depth < 1:
        raise ResnetlabError(f"--depth {args.depth} must be at least 1")
    try:
        report = summary(model, size, depth=args.depth)
    except RuntimeError as exc:
        # Too small an image makes a conv or pool fail deep inside torch; say which flag to change.
        raise ResnetlabError(
            f"--input-size {','.join(map(str, size))} does not fit {args.model} ({first_line(exc)}); "
            f"try a larger H,W such as {spec.image_size},{spec.image_size}"
        ) from None
    print(report)
    return 0


def models_command(args: argparse.Namespace) -> int:
    """List the registered models with their natural image sizes and the ImageNet weights published for them."""
    from ..models.pretrained import IMAGENET_WEIGHTS, PRETRAINED_INITS

    inits = {version: init for init, version in PRETRAINED_INITS.items()}
    for name in list_models():
        weights = ", ".join(f"--init {inits[v]} ({w.top1:.1f}%)" for v, w in IMAGENET_WEIGHTS.get(name, {}).items())
        print(f"{name}\t{model_spec(name).image_size}px" + (f"\t{weights}" if weights else ""))
    return 0
