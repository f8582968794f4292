"""``resnetlab train``: from flags to a :class:`TrainConfig` (``--config FILE``, then flags), then ``fit`` or ``resume``.

Every config field gets a flag of the same name (``batch_size`` -> ``--batch-size``) with the
field's help text, generated from the dataclass so the two never drift apart. Flags and the
file only set fields; what they leave unset the run decides, as for ``fit(TrainConfig(...))``
(``config/resolve.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from ..config import LATEST, RESUME_OVERRIDES, TrainConfig, check_preset, load_config_file, preset_names
from ..config.fields import check_types, choices, field_help, field_kind, field_names, flag, has_flag
from ..engine import fit, resume
from ..errors import ResnetlabError
from ..models import model_spec


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the ``train`` command: ``--resume``, ``--config`` and one flag per config field."""
    p = sub.add_parser("train", help="train a model on Fashion-MNIST or your class folders (presets: d2l, cpu, fast, best, folder)")
    p.add_argument("--resume", nargs="?", const=str(LATEST), metavar="RUN_DIR",
                   help="continue a stopped run from its train_state.pt, with its own config (default: runs/latest)")
    add_train_arguments(p)
    p.set_defaults(func=train_command)


def train_command(args: argparse.Namespace) -> int:
    """Start a run, or continue one with ``--resume``; its time budget counts from ``args.started``."""
    if args.resume is not None:
        resume(args.resume, started=args.started, **resume_overrides_from_args(args))
        return 0
    fit(config_from_args(args), started=args.started)
    return 0


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and one flag per :class:`TrainConfig` field to ``parser``."""
    parser.add_argument("--config", metavar="FILE", help="JSON or YAML file of config fields (flags override it)")
    helps, fixed = field_help(), choices()
    for name in filter(has_flag, field_names()):
        kind = field_kind(name)
        kwargs: dict[str, Any] = {"dest": name, "default": None, "help": helps[name].replace("%", "%%")}
        if name == "preset":
            kwargs["choices"] = preset_names()
        elif name in fixed:
            kwargs["choices"] = list(fixed[name])
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind is dict:
            kwargs["metavar"] = "JSON"
        else:
            kwargs["type"] = kind
            if kind in (int, float):
                kwargs["metavar"] = "N" if kind is int else "X"
        parser.add_argument(flag(name), **kwargs)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The fields ``--config FILE`` and the flags set (flags win); everything else stays unset for the run to decide."""
    values = load_config_file(args.config) if args.config else {}
    config = check_types(TrainConfig().replace(**values), f"--config {args.config}") if values else TrainConfig()
    flags = {name: getattr(args, name) for name in field_names() if getattr(args, name, None) is not None}
    if "model_args" in flags:
        try:
            flags["model_args"] = json.loads(flags["model_args"])
        except json.JSONDecodeError as exc:
            raise ResnetlabError(f"--model-args is not valid JSON ({exc}); write it like '{{\"stem\": \"small\"}}'") from None
        if not isinstance(flags["model_args"], dict):
            raise ResnetlabError('--model-args must be a JSON object, like \'{"stem": "small"}\'')
    config = check_types(config.replace(**flags), "flags")
    if config.preset is not None:
        check_preset(config.preset)
    if config.model is not None:
        model_spec(config.model)  # an unknown --model is reported before any data is read
    return config  # fit() checks the values, as for any caller


def resume_overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The flags given with ``--resume``: only those a resumed run may change, else a one-line error."""
    if args.config:
        raise ResnetlabError("--config cannot be used with --resume: the run continues with its own config.json")
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if getattr(args, f.name, None) is not None}
    for name in given:
        if name not in RESUME_OVERRIDES:
            raise ResnetlabError(
                f"{flag(name)} cannot be changed when resuming: the run continues with its own config.json; "
                f"start a new run to change it (with --resume only {', '.join(map(flag, RESUME_OVERRIDES))} may be given)"
            )
    return given
