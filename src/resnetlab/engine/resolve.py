"""What a run leaves unset, decided: the preset (by device, or ``folder`` for class folders), then what follows from the data.

Used by every way of starting a run (``fit``, ``resnetlab.train``, ``resnetlab train``), so the
library and the command line train the same thing for the same fields. Two steps, because
reading the data needs some of the answers (the validation split, the image size of a folder):

1. :func:`apply_preset` before the data is read: the named preset's values, or the one the
   device and data call for, fill the fields that are unset;
2. :func:`apply_data` after: for class folders the model, stem and image size from the images,
   and for the ``folder`` recipe the batch size, learning rate, warm-up, epochs and crop from the
   number and size of the training images; for the Fashion-MNIST presets, a batch, learning
   rate and warm-up fitted to a subset or a short run (:func:`fit_preset_to_data`), never
   overriding a value the user gave; then :data:`BASE_DEFAULTS` for whatever is left.

The ``folder`` recipe was chosen on the validation splits of six small real sets
(``benchmarks/small_folders.py``): scikit-learn's digits (1,437 images of 8 px), Fashion-MNIST
subsets of 1,000 and 5,000, scikit-image's textures (600 of 48 px), faces (160 of 25 px) and
photograph patches (960 of 40 px, colour).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..data import ImageSet, dataset_kind
from ..models import model_spec
from .config import TrainConfig
from .presets import PRESETS, check_preset

# Class folders: the model, stem and image size follow the data even under a named preset (the
# presets' values for these are Fashion-MNIST's), unless they are set.
DATA_DECIDES = ("model", "model_args", "image_size")
# stem "auto": no early downsampling up to this side (px), the ImageNet stem above. On the CPU the small
# stem costs 16x the work at the same side; measured on 1,000 Fashion-MNIST images (28 px, 15 epochs,
# 2 cores): validation 0.814 in 401 s with it, 0.794 in 63 s without, so there it is kept for the
# smallest images only (8 px digits lose everything to a stride-4 stem).
SMALL_STEM_MAX = {"cpu": 16}
SMALL_STEM_MAX_ACCELERATOR = 32


def apply_preset(config: TrainConfig, device: torch.device) -> tuple[TrainConfig, str | None]:
    """Fill unset fields from the preset; return the config and a line saying which preset when none was named."""
    folder = dataset_kind(config.data) == "folder"
    name = config.preset
    note = None
    if name is None:
        name = "folder" if folder else ("fast" if device.type == "cuda" else "cpu")
        why = ("class folders" if folder else "a CUDA GPU" if device.type == "cuda" else "no CUDA GPU")
        note = f"no --preset given: using '{name}' ({why})"
    values = {k: v for k, v in PRESETS[check_preset(name)].items() if not (folder and k in DATA_DECIDES)}
    return config.replace(preset=name, **{k: v for k, v in values.items() if getattr(config, k) is None}), note


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
    return 2 ** int(math.log2(max(n, 1)))


# The Fashion-MNIST presets whose batch and learning rate are fitted to a subset (d2l is the book's
# recipe: it only ever shrinks its batch to fit the images).
FITTED_PRESETS = ("cpu", "fast", "best")
# A preset's warm-up takes at most this share of the epochs (a one-epoch run would be all warm-up).
MAX_WARMUP_SHARE = 0.25


def fit_preset_to_data(preset: str, num_images: int, epochs: int, typed: set[str]) -> tuple[dict[str, Any], str | None]:
    """A Fashion-MNIST preset's batch, lr and warm-up for ``num_images`` training images and ``epochs``; a line if changed.

    The presets' values are for the 55,000 training images: on 6,000 their batch 512 gave 11
    steps an epoch and lr 0.2 blew up (loss 5.8), and on 256 images the batch did not fit. So
    the batch follows :func:`batch_for` (at most the preset's), the learning rate scales with it
    (the preset's lr per image), and the warm-up takes at most a quarter of the epochs. A field
    in ``typed`` (given by flag, file or caller) is never changed; d2l only shrinks its batch to fit.
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

    Batch: about a 24th of the images, a power of two from 16 to 256, so that even a few
    hundred images give a dozen steps an epoch (the old default, batch 256 at lr 0.1, gave 1,437
    images 5 steps an epoch and blew up). The learning rate scales with the batch, 0.025 at 32
    (chosen among 0.0125, 0.025, 0.05 on the sets named above), at most 0.1. Warm-up: one
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


def apply_data(config: TrainConfig, train: ImageSet, device: torch.device,
               typed: set[str] | None = None) -> tuple[TrainConfig, str | None]:
    """Fill what follows from the training images, then the base defaults; return the config and a line saying what was fitted.

    ``typed``: the fields the user gave (flags, file or caller); None: all fields set before the
    preset was applied count as given, so nothing of the preset is fitted.
    """
    folder = dataset_kind(config.data) == "folder"
    size = int(train.images.shape[-1])
    fill: dict[str, Any] = {}
    fitted = None
    if not folder and typed is not None and config.preset in PRESETS and config.preset != "folder":
        changes, fitted = fit_preset_to_data(config.preset, len(train), config.epochs, typed)
        config = config.replace(**changes)
    if folder:
        fill["model"] = "resnet18"
        fill["model_args"] = {"stem": "auto"} if model_spec(config.model or "resnet18").stems else {}
        fill["image_size"] = size
    if config.preset == "folder":
        fill.update(folder_recipe(len(train), config.image_size or size, device))
    # Small-map products pay on the CPU (models/small_maps.py); torch.compile would trace them apart.
    fill["small_maps"] = device.type == "cpu" and not config.compile
    config = config.replace(**{k: v for k, v in fill.items() if getattr(config, k) is None}).with_defaults()
    args = dict(config.model_args)
    if args.get("stem") == "auto":
        args["stem"] = stem_for(config.image_size, device)
        config = config.replace(model_args=args)
    line = fitted
    if config.preset == "folder":
        stem = f" ({args['stem']} stem)" if "stem" in args else ""
        budget = f", at most {config.time_budget:g} min" if config.time_budget else ""
        line = (f"{len(train):,} images of {size} px: {config.model}{stem} at {config.image_size} px, batch {config.batch_size}, "
                f"lr {config.lr:g}, {config.epochs} epochs{budget}, warm-up {config.warmup_epochs:g}, crop {config.crop_padding} px, "
                + ("flip on (--no-flip for digits or text)" if config.flip else "flip off"))
    return config, line
