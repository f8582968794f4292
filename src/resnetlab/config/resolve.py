"""Every value a run uses that nobody gave, decided here in two stages: before the data are read, then after.

A run starts from a :class:`TrainConfig`: what the user, a ``--config`` file or a caller gave.
What it leaves unset is decided in this order, the same for ``fit``, ``resnetlab.train`` and
``resnetlab train``, and a value the user gave is never changed:

1. **The preset** (``presets.py``): the one named, else ``folder`` for class folders, ``fast``
   with a CUDA GPU, ``cpu`` without. It fills the unset fields.
2. **The data** (``rules.py``): the fields in :data:`DATA_DECIDES` follow the images; trained
   weights (``--init``) bring the ``folder`` preset's fine-tuning rate and, when published
   (``--init imagenet``), their stem and normalisation.
3. **The base defaults** (each field's ``base`` in ``fields.py``): whatever is still unset.

Stage one, :func:`plan` (before the data): the preset, the device (``auto`` resolved), the
precision, and the base defaults of every field the data do not decide, which include what
reading the data needs. Stage two, :func:`resolve` (after the data are read, given their
:class:`~resnetlab.config.rules.DataFacts`): the data's rules, the remaining base defaults,
the checks, the feed (``auto`` resolved), and the frozen :class:`RunConfig`. Nothing is
decided twice. A resumed run's ``config.json`` holds a resolved configuration, which resolves
to itself.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import torch

from ..data import dataset_kind
from ..data.feed import Feed, choose_feed
from ..errors import ResnetlabError
from ..models import model_spec
from ..models.pretrained import is_pretrained_init
from ..models.registry import is_custom
from ..util.runtime import resolve_device, resolve_precision
from .fields import BASE_DEFAULTS, RunConfig, TrainConfig, validate
from .presets import PRESETS, check_preset
from .rules import DataFacts, fine_tune_rules, fit_preset_to_data, folder_recipe, pretrained_rules, stem_for

# The fields the data may decide (stage two); the rest take their base defaults before the data are read.
DATA_DECIDES = ("model", "model_args", "image_size", "batch_size", "lr", "backbone_lr_scale", "warmup_epochs", "epochs",
                "crop_padding", "time_budget", "small_maps")
# Class folders: the model, stem and image size follow the data even under a named preset (the
# presets' values for these are Fashion-MNIST's), unless they are given.
FOLDER_DECIDES = ("model", "model_args", "image_size")

# Where runs go when --out is not given, and the link to the newest.
RUNS = Path("runs")
LATEST = RUNS / "latest"


def default_out(model_name: str) -> Path:
    """``runs/<date-time>-<model>`` under the working folder (a custom module's name keeps only portable characters)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", model_name).strip("-")
    return RUNS / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{safe}"


def with_base_defaults(config: TrainConfig, names: tuple[str, ...] | None = None) -> TrainConfig:
    """``config`` with its unset fields (of ``names``, default all) at their base defaults and nothing else decided.

    Also for using the engine's parts on their own (a test of the schedule, a benchmark of a
    step); a run resolves its configuration with :func:`plan` and :func:`resolve`.
    """
    fill = {k: copy.deepcopy(v) for k, v in BASE_DEFAULTS.items()
            if getattr(config, k) is None and (names is None or k in names)}
    return config.replace(**fill)


@dataclass(frozen=True)
class Plan:
    """Stage one: what is decided before the data are read."""

    config: TrainConfig  # the given fields, the preset's, and the base defaults of the fields the data do not decide
    typed: frozenset[str]  # the fields the user gave: nothing changes them
    device: torch.device  # the kind of device ("auto" resolved; under torchrun each rank takes its own CUDA card of it)
    note: str | None  # which preset was taken when none was named


@dataclass(frozen=True)
class Resolved:
    """Stage two: the run's configuration, how the images reach it, and what to tell the user."""

    config: RunConfig
    feed: Feed
    lines: list[str]


def plan(given: TrainConfig) -> Plan:
    """Stage one: the preset, the device and precision, and the base defaults of what the data do not decide."""
    device = resolve_device(given.device or BASE_DEFAULTS["device"])
    folder = dataset_kind(given.data) == "folder"
    name, note = given.preset, None
    if name is None:
        name = "folder" if folder else ("fast" if device.type == "cuda" else "cpu")
        why = "class folders" if folder else "a CUDA GPU" if device.type == "cuda" else "no CUDA GPU"
        note = f"no --preset given: using '{name}' ({why})"
    preset = {k: v for k, v in PRESETS[check_preset(name)].items() if not (folder and k in FOLDER_DECIDES)}
    config = given.replace(preset=name, **{k: copy.deepcopy(v) for k, v in preset.items() if getattr(given, k) is None})
    config = with_base_defaults(config, tuple(k for k in BASE_DEFAULTS if k not in DATA_DECIDES))
    # A precision the device lacks is refused here, before any data is read.
    config = config.replace(precision=resolve_precision(config.precision, device).name)
    return Plan(config=config, typed=frozenset(given.given()), device=device, note=note)


def resolve(first: Plan, facts: DataFacts, device: torch.device | None = None,
            init_stem: Callable[[], str | None] | None = None) -> Resolved:
    """Stage two: decide what the data decide, then the rest; check; return the run's configuration.

    ``device``: this process's own device (under torchrun its CUDA card; default the plan's),
    whose memory decides the feed. ``init_stem``: reads the stem the ``--init`` file's weights were
    trained with (None: not telling), which a stem left to ``auto`` takes; called only for such a
    stem, so the file is read only where it decides something. Only a value the user gave can be refused.
    """
    device = device if device is not None else first.device
    config = first.config
    lines = [first.note] if first.note else []
    fill: dict[str, Any] = {}
    if facts.kind == "folder":
        fill["model"] = "resnet18"
        stems = not is_custom(config.model) and model_spec(config.model or "resnet18").stems
        fill["model_args"] = {"stem": "auto"} if stems else {}
        fill["image_size"] = facts.side
    if config.preset == "folder":
        fill.update(folder_recipe(facts.train_images, config.image_size or facts.side, first.device))
        changes, said = fine_tune_rules(config.init or "default", set(first.typed))
        fill.update(changes)
        lines += [said] if said else []
    # Small-map products pay on the CPU (models/small_maps.py); torch.compile would trace them apart.
    fill["small_maps"] = first.device.type == "cpu" and not config.compile
    config = config.replace(**{k: v for k, v in fill.items() if getattr(config, k) is None})
    if facts.kind != "folder" and config.preset != "folder":
        changes, fitted = fit_preset_to_data(config.preset, facts.train_images, config.epochs or BASE_DEFAULTS["epochs"],
                                             set(first.typed))
        config = config.replace(**changes)
        lines += [fitted] if fitted else []
    if is_pretrained_init(config.init) and not is_custom(config.model):
        # Published weights bring their stem and normalisation (and are refused for a model that has none).
        model = config.model or BASE_DEFAULTS["model"]
        changes, said = pretrained_rules(model, config.model_args or {}, config.init, set(first.typed),
                                         facts.num_classes, model_spec(model).stems)
        config = config.replace(**changes)
        lines.append(said)
    config = with_base_defaults(config)
    args = dict(config.model_args)
    if args.get("stem") == "auto":
        args["stem"] = by_size = stem_for(config.image_size, first.device)
        file_stem = init_stem() if init_stem is not None else None
        if file_stem is not None and file_stem != by_size:
            # The file's first convolution only fits the stem it was trained with.
            args["stem"] = file_stem
            lines.append(f"--init {config.init}: its first convolution is the {file_stem} stem's, so the {file_stem} stem "
                         f"(at {config.image_size} px the {by_size} stem would have been chosen)")
    config = config.replace(model_args=args, data=str(facts.source.resolve()))
    validate(config)
    if config.batch_size > facts.train_images:
        raise ResnetlabError(f"--batch-size {config.batch_size} is larger than the {facts.train_images} training images; "
                             "lower it")
    if config.preset == "folder":
        lines.append(_folder_line(config, facts))
    return Resolved(config=RunConfig.from_given(config), feed=choose_feed(facts.nbytes, device, config.feed), lines=lines)


def _folder_line(config: TrainConfig, facts: DataFacts) -> str:
    """The ``folder`` recipe in one line, as the run prints it."""
    stem = f" ({config.model_args['stem']} stem)" if "stem" in config.model_args else ""
    budget = f", at most {config.time_budget:g} min" if config.time_budget else ""
    return (f"{facts.train_images:,} images of {facts.side} px: {config.model}{stem} at {config.image_size} px, "
            f"batch {config.batch_size}, lr {config.lr:g}, {config.epochs} epochs{budget}, warm-up {config.warmup_epochs:g}, "
            f"crop {config.crop_padding} px, " + ("flip on (--no-flip for digits or text)" if config.flip else "flip off"))
