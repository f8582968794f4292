"""The training configuration: one dataclass, saved as ``config.json`` in every run.

Presets fill it in (``d2l``: the book's ``train_ch6`` exactly; ``cpu``, ``fast``, ``best``);
``--config FILE`` (JSON or YAML) and then command-line flags override single fields.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ResnetlabError, first_line
from .runtime import DEVICES, PRECISIONS


@dataclass
class TrainConfig:
    """Everything that defines a training run. Units: pixels, images, epochs."""

    # --- what is trained ---
    preset: str | None = None  # the preset these values started from (d2l, cpu, fast, best), or None
    model: str = "d2l_resnet18"  # a registered model name (see `resnetlab models`)
    model_args: dict[str, Any] = field(default_factory=dict)  # extra builder arguments, e.g. {"stem": "small"}
    init: str = "default"  # "default" (the model's own init), "xavier" (the book's: Xavier-uniform conv and linear weights), or a weight file (.safetensors, or .pth read weights-only) to start from
    init_non_strict: bool = False  # with --init FILE: keep the model's own values where the file's do not fit, instead of stopping
    freeze_backbone: bool = False  # train only the classifier head (the backbone's weights and batch-norm statistics stay fixed)

    # --- data ---
    data: str | None = None  # Fashion-MNIST folder, or a class-folder data set (DIR/train/<class>/*, DIR/val/..., or DIR/<class>/*); None: $RESNETLAB_DATA, else Debian's /usr/share/datasets/fashion-mnist
    val_split: int = 5000  # Fashion-MNIST: training images held out (seeded) to pick the best epoch; 0: train on all 60,000
    val_fraction: float = 0.2  # class folders without val/: the share of each class held out (seeded, stratified)
    channels: int | None = None  # 1 or 3: force grayscale or RGB; None: as the data are
    strict: bool = False  # class folders: stop on files that are not readable images instead of skipping them with a warning
    limit_train: int | None = None  # use only the first N training images (quick tries, tests)
    limit_test: int | None = None  # evaluate on only the first N test images
    image_size: int | None = 28  # side of the square model input (images are resized, bilinear); None: the data's own (class folders: median side, at most 224)
    normalize: bool = True  # standardise pixels with the training set's mean and std; False: only scale to [0, 1]
    crop_padding: int = 0  # augmentation: random crop after zero-padding by this many pixels (0: off)
    flip: bool = False  # augmentation: random horizontal flip
    erase_prob: float = 0.0  # augmentation: probability of random erasing of one rectangle

    # --- optimisation ---
    epochs: int = 10  # passes over the training images
    batch_size: int = 256  # images per step (the global batch under torchrun)
    optimizer: str = "sgd"  # "sgd" or "adamw"
    lr: float = 0.05  # peak learning rate for the global batch
    momentum: float = 0.0  # SGD momentum (0: plain SGD, as the book)
    nesterov: bool = False  # Nesterov momentum (SGD)
    weight_decay: float = 0.0  # L2 penalty (SGD) or decoupled decay (AdamW); not applied to norms and biases
    schedule: str = "constant"  # learning-rate schedule: constant, step, cosine or onecycle
    warmup_epochs: float = 0.0  # linear warm-up from 0 over this many epochs (all schedules)
    step_epochs: int = 30  # step schedule: multiply the lr by step_gamma every this many epochs
    step_gamma: float = 0.1  # step schedule: the factor
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    grad_clip: float | None = None  # clip the global gradient norm to this value (None: off)
    ema_decay: float | None = None  # keep an exponential moving average of the weights and evaluate it (None: off)

    # --- evaluation ---
    recalibrate_bn: int = 2048  # before each evaluation, recompute batch-norm statistics from this many training images (0: keep the running averages, as the book does)
    tta: bool = False  # test-time augmentation: average the predictions for the image and its mirror
    test_each_epoch: bool = False  # also report test accuracy after every epoch (as the book); never used to choose anything

    # --- speed and reproducibility ---
    device: str = "auto"  # auto (cuda if present, else mps, else cpu), cpu, cuda or mps
    precision: str = "auto"  # fp32; bf16 or fp16 autocast (fp16 with loss scaling, GPUs only); fp64 (CPU, to check results); auto: bf16 on CUDA cards with fast bf16 and on CPUs with native bf16, fp16 on older CUDA cards, else fp32
    channels_last: bool = True  # channels-last memory format for the model and its input
    compile: bool = False  # torch.compile the model (slow start, faster steps)
    seed: int = 0  # seeds the init, the validation split, the data order and augmentation
    sync_bn: bool = False  # under torchrun: batch-norm statistics over the global batch, not each process's share
    dist_timeout: int = 300  # under torchrun: seconds a collective may wait for the other processes before failing
    deterministic: bool = False  # use only deterministic algorithms (bit-exact resume on CPU; CUDA warns where it cannot)

    # --- saving and safety ---
    out: str | None = None  # run folder; None: runs/<date-time>-<model>
    save_every: int = 0  # also save train_state.pt every N steps, not only after each epoch (0: epochs only)
    skip_nonfinite: bool = False  # skip a batch whose loss or gradients are NaN/inf (counted) instead of stopping with exit 3

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain JSON-able values."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """The configuration as indented JSON (what ``config.json`` holds)."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some fields changed; unknown names raise :class:`ResnetlabError`."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ResnetlabError(f"unknown config field(s) {', '.join(unknown)}; valid fields: {', '.join(field_names())}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> "TrainConfig":
        """Build a configuration from a mapping, checking field names and types."""
        if not isinstance(values, dict):
            raise ResnetlabError(f"{source}: expected a mapping of config fields, got {type(values).__name__}")
        return check_types(cls().replace(**values), source)


def field_names() -> list[str]:
    """The names of all :class:`TrainConfig` fields."""
    return [f.name for f in dataclasses.fields(TrainConfig)]


_TYPES = {f.name: f.type for f in dataclasses.fields(TrainConfig)}


def check_types(config: TrainConfig, source: str) -> TrainConfig:
    """Raise :class:`ResnetlabError` naming the field if a value has the wrong type."""
    for name, declared in _TYPES.items():
        value = getattr(config, name)
        allowed: tuple[type, ...]
        if "dict" in declared:
            allowed = (dict,)
        elif declared.startswith("bool"):
            allowed = (bool,)
        elif declared.startswith("int"):
            allowed = (int,)
        elif declared.startswith("float"):
            allowed = (int, float)
        else:
            allowed = (str,)
        if value is None and "None" in declared:
            continue
        if not isinstance(value, allowed) or (allowed != (bool,) and isinstance(value, bool)):
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
CHOICES = {
    "optimizer": ("sgd", "adamw"),
    "schedule": ("constant", "step", "cosine", "onecycle"),
    "device": DEVICES,
    "precision": PRECISIONS,
}


def flag(name: str) -> str:
    """The command-line flag of a config field (``batch_size`` -> ``--batch-size``)."""
    return "--" + name.replace("_", "-")


def validate(config: TrainConfig) -> TrainConfig:
    """Raise :class:`ResnetlabError` naming the flag for a value out of range; return ``config``."""
    for name, options in CHOICES.items():
        if getattr(config, name) not in options:
            raise ResnetlabError(f"{flag(name)} {getattr(config, name)!r} is not one of: {', '.join(options)}")
    positive = ["epochs", "batch_size", "step_epochs", "dist_timeout"]
    for name in positive:
        if getattr(config, name) < 1:
            raise ResnetlabError(f"{flag(name)} {getattr(config, name)} must be at least 1")
    if config.init not in INIT_SCHEMES and not Path(config.init).is_file():
        raise ResnetlabError(f"--init {config.init}: no such file; give default, xavier, or a .safetensors/.pth weight file")
    if config.channels not in (None, 1, 3):
        raise ResnetlabError(f"--channels {config.channels} must be 1 (grayscale) or 3 (RGB)")
    if not 0 < config.val_fraction < 1:
        raise ResnetlabError(f"--val-fraction {config.val_fraction} must be between 0 and 1")
    for name in ("limit_train", "limit_test", "image_size"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise ResnetlabError(f"{flag(name)} {value} must be at least 1")
    non_negative = ["val_split", "save_every", "recalibrate_bn", "crop_padding", "momentum", "weight_decay", "warmup_epochs", "label_smoothing"]
    for name in non_negative:
        if getattr(config, name) < 0:
            raise ResnetlabError(f"{flag(name)} {getattr(config, name)} must not be negative")
    if not config.lr > 0:
        raise ResnetlabError(f"--lr {config.lr} must be positive")
    if not 0 <= config.erase_prob <= 1:
        raise ResnetlabError(f"--erase-prob {config.erase_prob} must be between 0 and 1")
    if not config.label_smoothing < 1:
        raise ResnetlabError(f"--label-smoothing {config.label_smoothing} must be below 1")
    if config.momentum >= 1:
        raise ResnetlabError(f"--momentum {config.momentum} must be below 1")
    if config.grad_clip is not None and not config.grad_clip > 0:
        raise ResnetlabError(f"--grad-clip {config.grad_clip} must be positive")
    if config.ema_decay is not None and not 0 < config.ema_decay < 1:
        raise ResnetlabError(f"--ema-decay {config.ema_decay} must be between 0 and 1")
    if config.warmup_epochs > config.epochs:
        raise ResnetlabError(f"--warmup-epochs {config.warmup_epochs} must not exceed --epochs {config.epochs}")
    if config.nesterov and config.momentum == 0:
        raise ResnetlabError("--nesterov needs a positive --momentum")
    return config
