"""A run's configuration in its two states: what was given (:class:`TrainConfig`) and what runs (:class:`RunConfig`).

:class:`TrainConfig` is the partial configuration: one field per ``resnetlab train`` flag (the
help text lives in the field's metadata, which ``--help`` shows), each None until the user, a
``--config`` file or a caller gives it. ``recipe.resolve()`` decides every field left unset, in
one place (the preset, then the data, then the base defaults), checks the result and returns a
:class:`RunConfig`: the same fields with their values, frozen. That is what the run uses and
what ``config.json`` holds, so the library (``fit(TrainConfig(...))``) and the command line
train the same thing, and a ``config.json`` given back to ``--config`` repeats the run.

This module knows the fields, their types and their ranges (:func:`validate`); what the unset
ones become is ``recipe.py``'s business.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ResnetlabError, first_line
from ..data.feed import FEEDS
from ..runtime import DEVICES, PRECISIONS


def option(help: str, default: Any = None) -> Any:  # noqa: A002 - the argparse word
    """A config field with its help text (shown by ``resnetlab train --help``)."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Everything that defines a training run, as given. Units: pixels, images, epochs, minutes.

    None means "not given": ``recipe.resolve()`` decides it (the preset, the data, the base defaults).
    """

    # --- what is trained ---
    preset: str | None = option("the recipe to start from: d2l, cpu, fast, best or folder (default: fast on a CUDA GPU, "
                                "else cpu; folder for a class-folder data set)")
    model: str | None = option("a registered model name (see 'resnetlab models'); default: the preset's, resnet18 for class folders")
    model_args: dict[str, Any] | None = option('extra builder arguments as JSON, e.g. \'{"stem": "small"}\'; stem "auto": '
                                               "small for images up to 32 px (16 px on the CPU), imagenet above")
    init: str | None = option("default (the model's own init), xavier (the book's Xavier-uniform), or a weight file "
                              "(.safetensors, or .pth read weights-only) to start from")
    init_non_strict: bool | None = option("with --init FILE: keep the model's own values where the file's do not fit, instead of stopping")
    freeze_backbone: bool | None = option("train only the classifier head (the backbone's weights and batch-norm statistics stay fixed)")

    # --- data ---
    data: str | None = option("Fashion-MNIST folder, or a class-folder data set (DIR/train/<class>/*, DIR/val/..., or "
                              "DIR/<class>/*); default: $RESNETLAB_DATA, else Debian's /usr/share/datasets/fashion-mnist")
    val_split: int | None = option("Fashion-MNIST: training images held out (seeded) to pick the best epoch; 0: train on all 60,000")
    val_fraction: float | None = option("class folders without val/: the share of each class held out (seeded, stratified)")
    channels: int | None = option("1 or 3: force grayscale or RGB (default: as the data are)")
    strict: bool | None = option("class folders: stop on files that are not readable images instead of skipping them with a warning")
    limit_train: int | None = option("use only the first N training images (quick tries, tests)")
    limit_test: int | None = option("evaluate on only the first N test images")
    image_size: int | None = option("side of the square model input (images are resized, bilinear); default: the preset's, "
                                    "for class folders the median side of the images, at most 224")
    normalize: bool | None = option("standardise pixels with the training set's mean and std (else only scale to [0, 1])")
    crop_padding: int | None = option("augmentation: random crop after zero-padding by this many pixels (0: off)")
    flip: bool | None = option("augmentation: random horizontal flip (right for photos, wrong for digits or text)")
    erase_prob: float | None = option("augmentation: probability of random erasing of one rectangle")
    feed: str | None = option("auto (images resident on the device while they take under a quarter of its memory, else "
                              "streamed batch by batch from the folder's memory-mapped cache), resident, or stream; "
                              "the batches are the same")

    # --- optimisation ---
    epochs: int | None = option("passes over the training images (with --time-budget: the most it may do)")
    time_budget: float | None = option("minutes for the whole run, start-up to the last line: the run measures its speed on its "
                                       "first steps and then fixes its number of steps to fit (0: no budget)")
    budget_plan: list[list[int]] | None = field(default=None, metadata={
        "help": "the time budget's decisions, [[global step, total steps], ...] (written by the run into config.json; "
                "given, as when a run is repeated with --config from its config.json, the run follows them and measures nothing)",
        "flag": False,  # no command-line flag: it comes from a config file
    })
    batch_size: int | None = option("images per step (the global batch under torchrun)")
    optimizer: str | None = option("sgd or adamw")
    lr: float | None = option("peak learning rate for the global batch")
    momentum: float | None = option("SGD momentum (0: plain SGD, as the book)")
    nesterov: bool | None = option("Nesterov momentum (SGD)")
    weight_decay: float | None = option("L2 penalty (SGD) or decoupled decay (AdamW); not applied to norms and biases")
    schedule: str | None = option("learning-rate schedule: constant, step, cosine or onecycle")
    warmup_epochs: float | None = option("linear warm-up from 0 over this many epochs (all schedules)")
    step_epochs: int | None = option("step schedule: multiply the lr by --step-gamma every this many epochs")
    step_gamma: float | None = option("step schedule: the factor")
    label_smoothing: float | None = option("cross-entropy label smoothing")
    grad_clip: float | None = option("clip the global gradient norm to this value (default: off)")
    ema_decay: float | None = option("evaluate an exponential moving average of the weights with this decay (0: off)")

    # --- evaluation ---
    recalibrate_bn: int | None = option("before each evaluation, recompute batch-norm statistics from this many training "
                                        "images (0: keep the running averages, as the book does)")
    tta: bool | None = option("test-time augmentation: average the predictions for the image and its mirror")
    test_each_epoch: bool | None = option("also report test accuracy after every epoch (as the book); never used to choose anything")

    # --- speed and reproducibility ---
    device: str | None = option("auto (cuda, else mps, else cpu), cpu, cuda or mps")
    precision: str | None = option("auto (bf16 on CUDA cards with fast bf16 and CPUs with native bf16, fp16 on older CUDA "
                                   "cards, else fp32), fp32, bf16, fp16 (GPUs, with loss scaling), or fp64 (CPU, to check results)")
    channels_last: bool | None = option("channels-last memory format for the model and its input")
    compile: bool | None = option("torch.compile the model (slow start, faster steps on a GPU; no faster on a 2-core CPU)")
    compile_mode: str | None = option("with --compile: torch.compile's mode, default, reduce-overhead (CUDA graphs: fewer "
                                      "launches for small steps), max-autotune or max-autotune-no-cudagraphs")
    small_maps: bool | None = option("compute 3x3 convolutions of 1x1 and 2x2 feature maps as matrix products without the "
                                     "padding (default: on the CPU, where the seed's net at 28 px trains 1.4x faster)")
    seed: int | None = option("seeds the init, the validation split, the data order and augmentation")
    sync_bn: bool | None = option("under torchrun: batch-norm statistics over the global batch, not each process's share")
    dist_timeout: int | None = option("under torchrun: seconds a collective may wait for the other processes before failing")
    deterministic: bool | None = option("use only deterministic algorithms (bit-exact resume on CPU; CUDA warns where it cannot)")

    # --- saving and safety ---
    out: str | None = option("run folder (default: runs/<date-time>-<model>)")
    save_every: int | None = option("also save train_state.pt every N steps, not only after each epoch (0: epochs only)")
    skip_nonfinite: bool | None = option("skip a batch whose loss or gradients are NaN/inf (counted) instead of stopping with exit 3")

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain JSON-able values."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """The configuration as indented JSON (what ``config.json`` holds)."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some fields changed; unknown names raise :class:`ResnetlabError`."""
        unknown = sorted(set(changes) - set(field_names()))
        if unknown:
            raise ResnetlabError(f"unknown config field(s) {', '.join(unknown)}; valid fields: {', '.join(field_names())}")
        return dataclasses.replace(self, **changes)

    def given(self) -> set[str]:
        """The names of the fields that are set: what the user gave, which nothing may change."""
        return {k for k, v in self.to_dict().items() if v is not None}

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> "TrainConfig":
        """Build a configuration from a mapping, checking field names and types."""
        if not isinstance(values, dict):
            raise ResnetlabError(f"{source}: expected a mapping of config fields, got {type(values).__name__}")
        return check_types(cls().replace(**values), source)


@dataclass(frozen=True)
class RunConfig:
    """The configuration a run uses: every :class:`TrainConfig` field decided (``out`` aside), frozen.

    Made only by ``recipe.resolve()``; written to ``config.json`` and into every weight file's
    header. ``precision`` is what it resolved to (``bf16``), ``data`` the folder read (an absolute
    path; a resumed run may be told where the same files are now), ``model_args`` the stem
    chosen. Two fields bind a run to a machine or to its images rather than say what it
    computes, and stay as given, so that a run resumes on another machine and a ``config.json``
    given back with other ``--data`` reads those as they are: ``device`` (``auto`` unless given:
    the device used is in the run's first line and ``results.json``) and ``channels`` (None: as
    the images are; the weights' header records what they were). Where a run's files go (``out``)
    is not part of it: a ``config.json`` given back repeats the run in a new folder. Four fields
    hold None as a value, not as "unset": ``channels``, ``limit_train`` and ``limit_test`` (None:
    every image) and ``grad_clip`` (None: no clipping).
    """

    preset: str
    model: str
    model_args: dict[str, Any]
    init: str
    init_non_strict: bool
    freeze_backbone: bool
    data: str
    val_split: int
    val_fraction: float
    channels: int | None
    strict: bool
    limit_train: int | None
    limit_test: int | None
    image_size: int
    normalize: bool
    crop_padding: int
    flip: bool
    erase_prob: float
    feed: str
    epochs: int
    time_budget: float
    budget_plan: list[list[int]]  # given (a repeated run follows it); the run's own decisions are run state
    batch_size: int
    optimizer: str
    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float
    schedule: str
    warmup_epochs: float
    step_epochs: int
    step_gamma: float
    label_smoothing: float
    grad_clip: float | None
    ema_decay: float
    recalibrate_bn: int
    tta: bool
    test_each_epoch: bool
    device: str
    precision: str
    channels_last: bool
    compile: bool
    compile_mode: str
    small_maps: bool
    seed: int
    sync_bn: bool
    dist_timeout: int
    deterministic: bool
    save_every: int
    skip_nonfinite: bool

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain JSON-able values."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """The configuration as indented JSON (what ``config.json`` holds)."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def replace(self, **changes: Any) -> "RunConfig":
        """A copy with some fields changed (``budget_plan`` for the record the run writes)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_given(cls, config: TrainConfig) -> "RunConfig":
        """The resolved configuration from a :class:`TrainConfig` whose fields are all decided (``recipe.resolve``)."""
        values = {name: getattr(config, name) for name in run_field_names()}
        unset = [name for name, value in values.items() if value is None and name not in NONE_IS_A_VALUE]
        if unset:
            raise AssertionError(f"resolve() left field(s) {', '.join(unset)} undecided")  # a bug, not a user error
        return cls(**values)


# The RunConfig fields where None is a decided value (see RunConfig).
NONE_IS_A_VALUE = ("channels", "limit_train", "limit_test", "grad_clip")


def field_names() -> list[str]:
    """The names of all :class:`TrainConfig` fields."""
    return [f.name for f in dataclasses.fields(TrainConfig)]


def run_field_names() -> list[str]:
    """The names of all :class:`RunConfig` fields (TrainConfig's but ``out``)."""
    return [f.name for f in dataclasses.fields(RunConfig)]


def has_flag(name: str) -> bool:
    """Whether the field has a command-line flag (``budget_plan``, which the run writes, has none)."""
    return next(f for f in dataclasses.fields(TrainConfig) if f.name == name).metadata.get("flag", True)


def field_help() -> dict[str, str]:
    """Each field's help text, from its metadata."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(TrainConfig)}


_HINTS = typing.get_type_hints(TrainConfig)


def field_kind(name: str) -> type:
    """The value type of a field: bool, int, float, str, dict or list (None aside)."""
    args = [a for a in typing.get_args(_HINTS[name]) if a is not type(None)]
    kind = typing.get_origin(args[0]) or args[0]
    return kind


def check_types(config: TrainConfig, source: str) -> TrainConfig:
    """Raise :class:`ResnetlabError` naming the field if a value has the wrong type."""
    for name in field_names():
        value = getattr(config, name)
        if value is None:
            continue
        kind = field_kind(name)
        allowed: tuple[type, ...] = (int, float) if kind is float else (kind,)
        if not isinstance(value, allowed) or (kind is not bool and isinstance(value, bool)):
            declared = f"{kind.__name__} or null"
            raise ResnetlabError(f"{source}: field {name!r} must be {declared}, got {value!r}")
    return config


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a JSON or YAML (``.yaml``/``.yml``) config file into a dict of fields."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ResnetlabError(f"--config {path}: cannot read it ({exc.strerror})") from None
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ResnetlabError(f"--config {path}: YAML needs PyYAML; pip install pyyaml, or use JSON") from None
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ResnetlabError(f"--config {path}: not valid YAML ({first_line(exc)})") from None
    else:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ResnetlabError(f"--config {path}: not valid JSON ({exc})") from None
    if not isinstance(values, dict):
        raise ResnetlabError(f"--config {path}: expected a mapping of config fields")
    return values


INIT_SCHEMES = ("default", "xavier")
# Fields a resumed run may change: they decide how the run is saved and guarded, not what it computes.
# ``data`` may name where the same files are now (each split's fingerprint must still match).
RESUME_OVERRIDES = ("save_every", "skip_nonfinite", "data", "feed")
# torch.compile's modes, the four that PyTorch has long had (``torch._inductor.list_mode_options()``; 2.13 lists "lite" too).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CHOICES = {
    "optimizer": ("sgd", "adamw"),
    "schedule": ("constant", "step", "cosine", "onecycle"),
    "device": DEVICES,
    "precision": PRECISIONS,
    "feed": FEEDS,
    "compile_mode": COMPILE_MODES,
}


def flag(name: str) -> str:
    """The command-line flag of a config field (``batch_size`` -> ``--batch-size``)."""
    return "--" + name.replace("_", "-")


def check_init_file(config: TrainConfig) -> TrainConfig:
    """Raise :class:`ResnetlabError` if ``--init`` names a file that is not there; return ``config``.

    Checked when a run starts from the beginning, before any data is read; a resumed run holds
    its weights in its train state and no longer needs the file.
    """
    if config.init is not None and config.init not in INIT_SCHEMES and not Path(config.init).is_file():
        raise ResnetlabError(f"--init {config.init}: no such file; give default, xavier, or a .safetensors/.pth weight file")
    return config


def validate(config: TrainConfig) -> TrainConfig:
    """Raise :class:`ResnetlabError` naming the flag for a value out of range; return ``config``.

    Unset fields (None) pass: a partial configuration is checked as far as it goes.
    """
    def given(name: str) -> bool:
        return getattr(config, name) is not None

    for name, options in CHOICES.items():
        if given(name) and getattr(config, name) not in options:
            raise ResnetlabError(f"{flag(name)} {getattr(config, name)!r} is not one of: {', '.join(options)}")
    for name in ("epochs", "batch_size", "step_epochs", "dist_timeout", "limit_train", "limit_test", "image_size"):
        if given(name) and getattr(config, name) < 1:
            raise ResnetlabError(f"{flag(name)} {getattr(config, name)} must be at least 1")
    if config.channels not in (None, 1, 3):
        raise ResnetlabError(f"--channels {config.channels} must be 1 (grayscale) or 3 (RGB)")
    if given("val_fraction") and not 0 < config.val_fraction < 1:
        raise ResnetlabError(f"--val-fraction {config.val_fraction} must be between 0 and 1")
    for name in ("val_split", "save_every", "crop_padding", "momentum", "weight_decay", "warmup_epochs", "label_smoothing",
                 "recalibrate_bn", "time_budget", "ema_decay"):
        if given(name) and getattr(config, name) < 0:
            raise ResnetlabError(f"{flag(name)} {getattr(config, name)} must not be negative")
    if given("lr") and not config.lr > 0:
        raise ResnetlabError(f"--lr {config.lr} must be positive")
    if given("erase_prob") and not 0 <= config.erase_prob <= 1:
        raise ResnetlabError(f"--erase-prob {config.erase_prob} must be between 0 and 1")
    if given("label_smoothing") and not config.label_smoothing < 1:
        raise ResnetlabError(f"--label-smoothing {config.label_smoothing} must be below 1")
    if given("momentum") and config.momentum >= 1:
        raise ResnetlabError(f"--momentum {config.momentum} must be below 1")
    if given("grad_clip") and not config.grad_clip > 0:
        raise ResnetlabError(f"--grad-clip {config.grad_clip} must be positive")
    if given("ema_decay") and not config.ema_decay < 1:
        raise ResnetlabError(f"--ema-decay {config.ema_decay} must be below 1 (0: no EMA)")
    if given("warmup_epochs") and given("epochs") and config.warmup_epochs > config.epochs:
        raise ResnetlabError(f"--warmup-epochs {config.warmup_epochs} must not exceed --epochs {config.epochs}")
    if config.nesterov and config.momentum == 0:
        raise ResnetlabError("--nesterov needs a positive --momentum")
    if given("compile_mode") and config.compile_mode != "default" and config.compile is False:
        raise ResnetlabError(f"--compile-mode {config.compile_mode} needs --compile")
    if given("budget_plan") and not _is_plan(config.budget_plan):
        raise ResnetlabError(f"budget_plan {config.budget_plan!r} must be a list of [global step, total steps] pairs of "
                             "non-negative integers with rising steps, as a run writes it into config.json")
    return config


def _is_plan(plan: Any) -> bool:
    """Whether ``plan`` is a list of ``[step, total]`` integer pairs, steps rising, each total at least its step."""
    pairs = [p for p in plan if isinstance(p, list) and len(p) == 2 and all(type(v) is int and v >= 0 for v in p)]
    return len(pairs) == len(plan) and all(a <= t for a, t in pairs) and all(
        earlier[0] <= later[0] for earlier, later in zip(pairs, pairs[1:]))
