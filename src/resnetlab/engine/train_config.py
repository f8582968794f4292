"""From command-line flags to a :class:`TrainConfig`: preset, then ``--config FILE``, then flags.

Every config field gets a flag of the same name (``batch_size`` -> ``--batch-size``), generated
from the dataclass so the two never drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
from typing import Any

import torch

from ..errors import ResnetlabError
from .config import CHOICES, TrainConfig, check_types, flag, load_config_file, validate
from .presets import from_preset, preset_names

# Flags whose help differs from the field's comment in TrainConfig.
_HELP_OVERRIDES = {
    "preset": "recipe to start from: " + ", ".join(preset_names()) + " (default: fast on CUDA, cpu otherwise)",
    "model_args": 'extra model arguments as JSON, e.g. \'{"stem": "small"}\'',
}


def field_comments() -> dict[str, str]:
    """Each TrainConfig field's trailing comment in the source: the one description of a field."""
    source = inspect.getsource(TrainConfig)
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^\s+(\w+): [^#\n]*#\s*(.+)$", source, re.M)}


def _field_type(declared: str):
    if declared.startswith("int"):
        return int
    if declared.startswith("float"):
        return float
    return str


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and one flag per :class:`TrainConfig` field to ``parser``."""
    parser.add_argument("--config", metavar="FILE", help="JSON or YAML file of config fields (flags override it)")
    comments = field_comments()
    for f in dataclasses.fields(TrainConfig):
        name, declared = f.name, str(f.type)
        help_text = _HELP_OVERRIDES.get(name, comments.get(name, "")).replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": name, "default": None, "help": help_text}
        if name == "preset":
            kwargs["choices"] = preset_names()
        elif name in CHOICES:
            kwargs["choices"] = list(CHOICES[name])
        if declared.startswith("bool"):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif name == "model_args":
            kwargs["metavar"] = "JSON"
        else:
            kwargs["type"] = _field_type(declared)
            if kwargs["type"] in (int, float):
                kwargs["metavar"] = "N" if kwargs["type"] is int else "X"
        parser.add_argument(flag(name), **kwargs)


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, str | None]:
    """Build the run's config: the preset, then ``--config FILE``, then flags. Returns (config, note).

    The note says which preset was picked when none was named.
    """
    file_values = load_config_file(args.config) if args.config else {}
    preset = args.preset or file_values.get("preset")
    note = None
    if preset is None:
        device = args.device or file_values.get("device") or "auto"
        cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
        preset = "fast" if cuda else "cpu"
        note = f"no --preset given: using '{preset}' ({'CUDA GPU found' if cuda else 'no CUDA GPU'})"
    config = from_preset(preset)
    if file_values:
        config = check_types(config.replace(**{**file_values, "preset": preset}), f"--config {args.config}")
    flags = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainConfig)
        if getattr(args, f.name, None) is not None and f.name != "preset"
    }
    if "model_args" in flags:
        try:
            flags["model_args"] = json.loads(flags["model_args"])
        except json.JSONDecodeError as exc:
            raise ResnetlabError(f"--model-args is not valid JSON ({exc}); write it like '{{\"stem\": \"small\"}}'") from None
        if not isinstance(flags["model_args"], dict):
            raise ResnetlabError('--model-args must be a JSON object, like \'{"stem": "small"}\'')
    config = check_types(config.replace(**flags), "flags")
    from ..data.folder import is_class_folder

    if is_class_folder(config.data):
        # The presets are Fashion-MNIST recipes; for your own images the model and size follow the data
        # unless you chose them.
        chosen = set(file_values) | set(flags)
        defaults: dict[str, Any] = {}
        if "model" not in chosen:
            defaults["model"] = "resnet18"
            if "model_args" not in chosen:
                defaults["model_args"] = {"stem": "auto"}
        if "image_size" not in chosen:
            defaults["image_size"] = None
        config = config.replace(**defaults)
        note = (note + "; " if note else "") + (
            f"class folders in {config.data}: model {config.model}"
            + (" (stem by image size)" if config.model_args.get("stem") == "auto" else "")
            + (", image size from the data" if config.image_size is None else "")
        )
    from ..models import model_spec

    model_spec(config.model)  # an unknown --model is reported before any data is read
    return validate(config), note


def resume_overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The flags given with ``--resume``: only those a resumed run may change, else a one-line error."""
    from .train import RESUME_OVERRIDES

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
