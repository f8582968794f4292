"""Every value a run uses that nobody gave, decided here, top to bottom.

A run starts from a :class:`TrainConfig`: what the user, a ``--config`` file or a caller gave.
What it leaves unset is decided in this order, the same for ``fit``, ``resnetlab.train`` and
``resnetlab train``:

1. **The preset** (:data:`PRESETS`): the one named, else ``folder`` for class folders, ``fast``
   with a CUDA GPU, ``cpu`` without. It fills the unset fields.
2. **The data** (:class:`DataFacts`): for class folders the model, stem and image size follow
   the images, and the ``folder`` recipe's batch, lr, warm-up, epochs and crop their number and
   size (:func:`folder_recipe`); the Fashion-MNIST presets fit their batch, lr and warm-up to a
   subset (:func:`fit_preset_to_data`); the small-map products are on for the CPU. A field the
   user gave is never changed.
3. **The base defaults** (:data:`BASE_DEFAULTS`): whatever is still unset, the book's
   ``train_ch6`` where it has a value.
4. **Validation**, and the resolved, frozen :class:`RunConfig` (``resolve``).

Reading the data needs a few of these answers first (the device, the validation split, a
folder's image size): :func:`before_data` gives them, decided by the same rules. A resumed run's
``config.json`` holds a resolved configuration, which resolves to itself.

The ``cpu`` preset and the ``folder`` recipe were chosen on validation splits (README and
``benchmarks/README.md`` give the measurements).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data import dataset_kind
from ..errors import ResnetlabError
from ..models import model_spec
from ..models.registry import is_custom
from ..runtime import resolve_device, resolve_precision
from .config import RunConfig, TrainConfig, validate

# --- 1. presets ----------------------------------------------------------------------------

PRESETS: dict[str, dict[str, Any]] = {
    # d2l.train_ch6 with the chapter's net: Xavier-uniform init of conv and linear weights,
    # plain SGD at lr 0.05, batch 256, images resized to 96, 10 epochs, no augmentation, no
    # normalisation, all 60,000 training images, test accuracy after every epoch, evaluated
    # with batch norm's running averages.
    "d2l": dict(
        model="d2l_resnet18", init="xavier", optimizer="sgd", lr=0.05, momentum=0.0,
        weight_decay=0.0, schedule="constant", batch_size=256, image_size=96, epochs=10,
        normalize=False, crop_padding=0, flip=False, erase_prob=0.0, val_split=0,
        label_smoothing=0.0, test_each_epoch=True, recalibrate_bn=0,
    ),
    # The best we reach in 10 minutes on 2 CPU cores: the book's network at the native 28 px
    # (fp32, or bf16 autocast where the CPU's bf16 is measured faster; small-map products),
    # batch 512 at lr 0.2 with Nesterov momentum, one-cycle, label smoothing, flip, no crop, and a
    # 10-minute budget for the whole command (on a slow CPU it buys fewer than the 8 epochs).
    # Chosen on the validation split (2-core Intel Xeon, fp32, 2026-11-28): at 4 epochs batch 512
    # gave 0.907 (256: 0.905) in 13% less time, lr 0.4 0.779, no crop 0.910 (crop 2: 0.907), no
    # label smoothing 0.906; at 8 epochs no crop 0.920, crop 2 0.913.
    "cpu": dict(
        model="d2l_resnet18", init="default", image_size=28, batch_size=512, epochs=8, time_budget=10.0,
        optimizer="sgd", lr=0.2, momentum=0.9, nesterov=True, weight_decay=5e-4,
        schedule="onecycle", warmup_epochs=1.0, label_smoothing=0.1,
        crop_padding=0, flip=True, erase_prob=0.0, val_split=5000,
    ),
    # One GPU, seconds: the torchvision ResNet-18 with the small stem (no early downsampling
    # of 28 px images), large batches, bf16 and channels-last. On one H200 (2026-11-28): test
    # 0.923/0.932/0.890 for seeds 0-2, about 10 s of training; not yet re-tuned (a lower lr at
    # batch 512 is the next candidate: seed 2's first epochs show the lr is at its edge).
    "fast": dict(
        model="resnet18", model_args={"stem": "small"}, image_size=28, batch_size=512, epochs=8,
        optimizer="sgd", lr=0.2, momentum=0.9, nesterov=True, weight_decay=5e-4,
        schedule="onecycle", warmup_epochs=1.0, label_smoothing=0.1,
        crop_padding=2, flip=True, erase_prob=0.0, val_split=5000,
    ),
    # One GPU, minutes: the fast recipe trained longer, with random erasing, an EMA of the
    # weights and flip test-time augmentation. On one H200 (2026-11-28): test 0.953 in 127 s.
    "best": dict(
        model="resnet18", model_args={"stem": "small"}, image_size=28, batch_size=256, epochs=40,
        optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
        schedule="cosine", warmup_epochs=2.0, label_smoothing=0.1,
        crop_padding=2, flip=True, erase_prob=0.25, ema_decay=0.999, tta=True, val_split=5000,
    ),
    # Your own images (the default for class folders): resnet18 with the stem and image size that
    # suit the images; batch size, learning rate, epochs, crop and (on the CPU) a 10-minute time
    # budget follow from the number and size of the images (folder_recipe below).
    "folder": dict(
        model="resnet18", model_args={"stem": "auto"}, init="default", optimizer="sgd", momentum=0.9, nesterov=True,
        weight_decay=5e-4, schedule="onecycle", label_smoothing=0.1, flip=True, erase_prob=0.0, val_split=5000,
    ),
}


def preset_names() -> list[str]:
    """The preset names, in the order they are documented."""
    return list(PRESETS)


def check_preset(name: str) -> str:
    """``name`` if it is a preset, else a :class:`ResnetlabError` listing them."""
    if name not in PRESETS:
        raise ResnetlabError(f"unknown preset {name!r}; valid presets: {', '.join(preset_names())}")
    return name


def from_preset(name: str) -> TrainConfig:
    """A :class:`TrainConfig` with the preset's fields set (the rest unset); unknown names raise :class:`ResnetlabError`."""
    return TrainConfig(preset=check_preset(name)).replace(**PRESETS[name])


# Class folders: the model, stem and image size follow the data even under a named preset (the
# presets' values for these are Fashion-MNIST's), unless they are given.
DATA_DECIDES = ("model", "model_args", "image_size")


def _with_preset(given: TrainConfig, device: torch.device) -> tuple[TrainConfig, str | None]:
    """Fill unset fields from the preset; return the config and a line saying which preset when none was named."""
    folder = dataset_kind(given.data) == "folder"
    name, note = given.preset, None
    if name is None:
        name = "folder" if folder else ("fast" if device.type == "cuda" else "cpu")
        why = "class folders" if folder else "a CUDA GPU" if device.type == "cuda" else "no CUDA GPU"
        note = f"no --preset given: using '{name}' ({why})"
    values = {k: v for k, v in PRESETS[check_preset(name)].items() if not (folder and k in DATA_DECIDES)}
    return given.replace(preset=name, **{k: v for k, v in values.items() if getattr(given, k) is None}), note


# --- 2. rules that follow the data --------------------------------------------------------

# stem "auto": no early downsampling up to this side (px), the ImageNet stem above. On the CPU the small
# stem costs 16x the work at the same side; measured on 1,000 Fashion-MNIST images (28 px, 15 epochs,
# 2 cores): validation 0.814 in 401 s with it, 0.794 in 63 s without, so there it is kept for the
# smallest images only (8 px digits lose everything to a stride-4 stem).
SMALL_STEM_MAX = {"cpu": 16}
SMALL_STEM_MAX_ACCELERATOR = 32
# The Fashion-MNIST presets whose batch and learning rate are fitted to a subset (d2l is the book's
# recipe: it only ever shrinks its batch to fit the images).
FITTED_PRESETS = ("cpu", "fast", "best")
# A preset's warm-up takes at most this share of the epochs (a one-epoch run would be all warm-up).
MAX_WARMUP_SHARE = 0.25


@dataclass(frozen=True)
class DataFacts:
    """What the rules need to know of the data once it is read."""

    kind: str  # "fashion-mnist" or "folder"
    source: Path  # the folder read
    train_images: int  # after --limit-train
    side: int  # the side the images were stored at (a folder's decoded size; 28 for Fashion-MNIST)


def stem_for(size: int, device: torch.device) -> str:
    """The stem for square images of side ``size``: ``small`` keeps small images' detail, ``imagenet`` is 16x cheaper."""
    return "small" if size <= SMALL_STEM_MAX.get(device.type, SMALL_STEM_MAX_ACCELERATOR) else "imagenet"


def batch_for(num_images: int, largest: int) -> int:
    """A power-of-two batch of about a 24th of the images, from 16 to ``largest``, and never more than the images.

    A dozen or more steps an epoch even for a few hundred images: one step an epoch at a
    large batch and a large learning rate is what made small sets blow up.
    """
    batch = min(largest, max(16, 2 ** round(math.log2(max(num_images, 1) / 24))))
    return min(batch, _power_of_two_at_most(num_images))


def _power_of_two_at_most(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)


def fit_preset_to_data(preset: str, num_images: int, epochs: int, typed: set[str]) -> tuple[dict[str, Any], str | None]:
    """A Fashion-MNIST preset's batch, lr and warm-up for ``num_images`` training images and ``epochs``; a line if changed.

    The presets' values are for the 55,000 training images: on 6,000 their batch 512 gave 11
    steps an epoch and lr 0.2 blew up (loss 5.8), and on 256 images the batch did not fit. So
    the batch follows :func:`batch_for` (at most the preset's), the learning rate scales with it
    (the preset's lr per image), and the warm-up takes at most a quarter of the epochs. A field
    in ``typed`` (given by flag, file or caller) is never changed; d2l only shrinks its batch to
    fit. Chosen on validation over three seeds against a square-root lr scaling
    (``benchmarks/preset_subsets.py``: on 1,000 images 0.825 against 0.795, on 6,000 0.864 against 0.818).
    """
    values = PRESETS[preset]
    changes: dict[str, Any] = {}
    if "batch_size" not in typed:
        largest = values["batch_size"]
        batch = batch_for(num_images, largest) if preset in FITTED_PRESETS else min(largest, _power_of_two_at_most(num_images))
        if batch != largest:
            changes["batch_size"] = batch
            if "lr" not in typed and preset in FITTED_PRESETS:
                changes["lr"] = values["lr"] * batch / largest
    warmup = values.get("warmup_epochs", 0.0)
    if "warmup_epochs" not in typed and warmup > MAX_WARMUP_SHARE * epochs:
        changes["warmup_epochs"] = MAX_WARMUP_SHARE * epochs
    if not changes:
        return changes, None
    was = {"batch_size": f"{values['batch_size']}", "lr": f"{values['lr']:g}", "warmup_epochs": f"{warmup:g}"}
    shown = {"batch_size": "batch {}", "lr": "lr {:g}", "warmup_epochs": "warm-up {:g} epochs"}
    said = ", ".join(shown[k].format(v) + f" (not {was[k]})" for k, v in changes.items())
    epochs_said = f"{epochs} epoch{'' if epochs == 1 else 's'}"
    return changes, f"the {preset} preset fitted to {num_images:,} training images and {epochs_said}: {said}"


def folder_recipe(num_images: int, size: int, device: torch.device) -> dict[str, Any]:
    """The ``folder`` recipe's values that follow from the number and side of the training images.

    Batch: :func:`batch_for` up to 256, so that even a few hundred images give a dozen steps
    an epoch (the old default, batch 256 at lr 0.1, gave 1,437 images 5 steps an epoch and blew
    up). The learning rate scales with the batch, 0.025 at 32 (chosen among 0.0125, 0.025, 0.05
    on scikit-learn's digits, Fashion-MNIST subsets of 1,000 and 5,000, scikit-image's textures,
    faces and photograph patches: ``benchmarks/small_folders.py``), at most 0.1. Warm-up: one
    epoch. Epochs: enough for about 2,000 steps, between 15 and 60 (40 epochs instead of 15
    raised validation accuracy from 0.794 to 0.832 on 1,000 Fashion-MNIST images and from 0.825
    to 0.847 on the photograph patches). Crop padding: a twelfth of the side (on 8 px digits 1
    px gave 0.989, 2 px 0.975). On the CPU a 10-minute time budget caps the run.
    """
    batch = batch_for(num_images, 256)
    steps_per_epoch = max(1, num_images // batch)
    return {
        "batch_size": batch,
        "lr": min(0.1, 0.2 * batch / 256),
        "warmup_epochs": 1.0,
        "epochs": int(min(60, max(15, math.ceil(2000 / steps_per_epoch)))),
        "crop_padding": max(1, round(size / 12)),
        "time_budget": 10.0 if device.type == "cpu" else 0.0,
    }


# --- 3. base defaults ----------------------------------------------------------------------

# What a field is when neither the preset nor the data decided it: the book's train_ch6 where it has one.
BASE_DEFAULTS: dict[str, Any] = dict(
    model="d2l_resnet18", model_args={}, init="default", init_non_strict=False, freeze_backbone=False,
    val_split=5000, val_fraction=0.2, strict=False, image_size=28, normalize=True, crop_padding=0, flip=False,
    erase_prob=0.0, feed="auto", epochs=10, time_budget=0.0, budget_plan=[], batch_size=256, optimizer="sgd", lr=0.05, momentum=0.0,
    nesterov=False, weight_decay=0.0, schedule="constant", warmup_epochs=0.0, step_epochs=30, step_gamma=0.1,
    label_smoothing=0.0, ema_decay=0.0, recalibrate_bn=2048, tta=False, test_each_epoch=False, device="auto",
    precision="auto", channels_last=True, compile=False, compile_mode="default", small_maps=False, seed=0, sync_bn=False, dist_timeout=300,
    deterministic=False, save_every=0, skip_nonfinite=False,
)


def with_base_defaults(config: TrainConfig) -> TrainConfig:
    """``config`` with its unset fields at :data:`BASE_DEFAULTS` and nothing else decided.

    For using the engine's parts on their own (a test of the schedule, a benchmark of a step);
    a run resolves its configuration with :func:`resolve`.
    """
    return config.replace(**{k: v for k, v in BASE_DEFAULTS.items() if getattr(config, k) is None})


# --- 4. resolving ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BeforeData:
    """What must be decided before the data are read: the device, how long ranks wait, how to read the data."""

    device: torch.device  # the kind of device (under torchrun each rank takes its own CUDA card of it)
    precision: str  # what "auto" (or the name given) is on that device; a precision it lacks is refused here
    dist_timeout: int
    data: str | None  # as given (None: $RESNETLAB_DATA, else Debian's Fashion-MNIST)
    image_size: int | None  # a class folder's decoded side, as given (None: the images' median, at most 224)
    channels: int | None  # None: as the images are
    val_split: int
    val_fraction: float
    seed: int
    strict: bool
    limit_train: int | None
    limit_test: int | None


def before_data(given: TrainConfig) -> BeforeData:
    """What reading the data needs, decided as :func:`resolve` decides it: the device, the preset, the base defaults."""
    device = resolve_device(given.device or BASE_DEFAULTS["device"])
    config = with_base_defaults(_with_preset(given, device)[0])
    return BeforeData(device=device, precision=resolve_precision(config.precision, device).name,
                      dist_timeout=config.dist_timeout, data=given.data, image_size=given.image_size,
                      channels=given.channels, val_split=config.val_split, val_fraction=config.val_fraction,
                      seed=config.seed, strict=config.strict, limit_train=config.limit_train,
                      limit_test=config.limit_test)


def resolve(given: TrainConfig, first: BeforeData, facts: DataFacts) -> tuple[RunConfig, list[str]]:
    """Decide every field ``given`` leaves unset (the module's four steps); return the run's configuration and what to tell the user.

    ``first`` is :func:`before_data`'s answer for ``given``. The lines say which preset was
    taken when none was named, and what a recipe fitted to the data. A value the user gave is
    never changed; only such a value can be refused.
    """
    device = first.device
    config, note = _with_preset(given, device)
    lines = [note] if note else []
    fill: dict[str, Any] = {}
    if facts.kind == "folder":
        fill["model"] = "resnet18"
        stems = not is_custom(config.model) and model_spec(config.model or "resnet18").stems
        fill["model_args"] = {"stem": "auto"} if stems else {}
        fill["image_size"] = facts.side
    if config.preset == "folder":
        fill.update(folder_recipe(facts.train_images, config.image_size or facts.side, device))
    # Small-map products pay on the CPU (models/small_maps.py); torch.compile would trace them apart.
    fill["small_maps"] = device.type == "cpu" and not config.compile
    config = config.replace(**{k: v for k, v in fill.items() if getattr(config, k) is None})
    if facts.kind != "folder" and config.preset != "folder":
        changes, fitted = fit_preset_to_data(config.preset, facts.train_images, config.epochs or BASE_DEFAULTS["epochs"],
                                             given.given())
        config = config.replace(**changes)
        lines += [fitted] if fitted else []
    config = with_base_defaults(config)
    args = dict(config.model_args)
    if args.get("stem") == "auto":
        args["stem"] = stem_for(config.image_size, device)
    config = config.replace(model_args=args, data=str(facts.source.resolve()), precision=first.precision)
    validate(config)
    if config.batch_size > facts.train_images:
        raise ResnetlabError(f"--batch-size {config.batch_size} is larger than the {facts.train_images} training images; "
                             "lower it")
    if config.preset == "folder":
        lines.append(_folder_line(config, facts))
    return RunConfig.from_given(config), lines


def _folder_line(config: TrainConfig, facts: DataFacts) -> str:
    """The ``folder`` recipe in one line, as the run prints it."""
    stem = f" ({config.model_args['stem']} stem)" if "stem" in config.model_args else ""
    budget = f", at most {config.time_budget:g} min" if config.time_budget else ""
    return (f"{facts.train_images:,} images of {facts.side} px: {config.model}{stem} at {config.image_size} px, "
            f"batch {config.batch_size}, lr {config.lr:g}, {config.epochs} epochs{budget}, warm-up {config.warmup_epochs:g}, "
            f"crop {config.crop_padding} px, " + ("flip on (--no-flip for digits or text)" if config.flip else "flip off"))
