"""The rules that follow the data: what a run leaves unset that depends on the images it trains on.

Applied in ``resolve.py`` after the preset and before the base defaults, never to a field the
user gave: for class folders the model, stem and image size follow the images and the
``folder`` recipe's batch, lr, warm-up, epochs and crop their number and size
(:func:`folder_recipe`); the Fashion-MNIST presets fit their batch, lr and warm-up to a subset
(:func:`fit_preset_to_data`); a folder's images are decoded at :func:`folder_side`.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ResnetlabError
from ..models.pretrained import published, weights_url
from .presets import PRESETS

# A class folder's images are decoded at the median side of its training images, at most this (px).
MAX_FOLDER_SIDE = 224


def folder_side(sides: list[int]) -> int:
    """The side a class folder is decoded at, from its training images' sides (width and height of each)."""
    return min(MAX_FOLDER_SIDE, int(statistics.median(sides))) if sides else MAX_FOLDER_SIDE


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
    nbytes: int  # the pixels of all splits (what resident images take)
    num_classes: int = 0  # the classes the data have


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
    """A Fashion-MNIST preset's batch, lr, clipping and warm-up for ``num_images`` training images and ``epochs``; a line
    if changed.

    The presets' values are for the 55,000 training images: on 6,000 their batch 512 gave 11
    steps an epoch and lr 0.2 blew up (loss 5.8), and on 256 images the batch did not fit. So
    the batch follows :func:`batch_for` (at most the preset's), the learning rate scales with it
    (the preset's lr per image), the gradient clipping with the square root of the batch ratio
    (a gradient's noise grows as the batch shrinks), and the warm-up takes at most a quarter of the epochs. A field
    in ``typed`` (given by flag, file or caller) is never changed; d2l only shrinks its batch to
    fit. The lr scaling was chosen on validation over three seeds against a square-root one (on 1,000
    images 0.825 against 0.795, on 6,000 0.864 against 0.818, 2026-11-28); the clipping's in
    ``benchmarks/recipes.py`` (README: at 1,000 images 0.834 against 0.813 unclipped and 0.792 at a
    fixed norm of 1).
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
            if "grad_clip" not in typed and values.get("grad_clip") and preset in FITTED_PRESETS:
                # A gradient's noise, and so its norm, grows as the batch shrinks (about as 1/sqrt(batch)).
                changes["grad_clip"] = round(values["grad_clip"] * math.sqrt(largest / batch), 2)
    warmup = values.get("warmup_epochs", 0.0)
    if "warmup_epochs" not in typed and warmup > MAX_WARMUP_SHARE * epochs:
        changes["warmup_epochs"] = MAX_WARMUP_SHARE * epochs
    if not changes:
        return changes, None
    was = {"batch_size": f"{values['batch_size']}", "lr": f"{values['lr']:g}", "warmup_epochs": f"{warmup:g}",
           "grad_clip": f"{values.get('grad_clip') or 0:g}"}
    shown = {"batch_size": "batch {}", "lr": "lr {:g}", "warmup_epochs": "warm-up {:g} epochs",
             "grad_clip": "gradient clipped at norm {:g}"}
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


def pretrained_rules(model: str, model_args: dict[str, Any], init: str, typed: set[str], num_classes: int,
                     stems: bool) -> tuple[dict[str, Any], str]:
    """What published weights (``--init imagenet``) decide: the stem they were trained with and ImageNet's
    normalisation, unless given; and the line that says so. A model without such weights is refused here,
    before any training.
    """
    weights = published(model, init)  # raises for a model torchvision publishes nothing for
    weights_url(weights)  # and for a mirror variable that is not a URL, before any training is set up
    changes: dict[str, Any] = {}
    if stems:
        stem = model_args.get("stem", "imagenet")
        if stem not in ("imagenet", "auto") and "model_args" in typed:
            raise ResnetlabError(f"--init {init}: the ImageNet weights need the ImageNet stem (a 7x7 stride-2 "
                                 f"convolution and max-pool), not stem {stem!r}; leave the stem out of --model-args")
        changes["model_args"] = {**model_args, "stem": "imagenet"}
    if "normalize" not in typed:
        changes["normalize"] = True
    line = (f"--init {init}: {model}'s ImageNet weights ({weights.file}, top-1 {weights.top1:.1f}% on ImageNet), "
            f"the ImageNet stem and ImageNet's mean and std; its 1,000-class classifier is replaced by a new one for "
            f"the {num_classes} classes here")
    return changes, line


# The folder recipe started from trained weights (``--init imagenet`` or a weight file): every layer learns, at one
# rate. Chosen in benchmarks/transfer.py (AMD EPYC, 2026-12-04; README, "Starting from trained weights"): a network
# pretrained on Fashion-MNIST's classes 0-4, fine-tuned on classes 5-9 at 10, 50 and 500 images per class, worst
# validation accuracy of 3 seeds: one rate 0.815 / 0.928 / 0.953, the backbone at a tenth of it 0.794 / 0.918 (500
# not run), head only 0.746 / 0.876 / 0.925, from scratch 0.804 / 0.904 / 0.916. (A lower backbone rate is the usual advice for ImageNet weights, whose
# features are broader than this stand-in's; --backbone-lr-scale gives it.)
FINE_TUNE_BACKBONE_LR_SCALE = 1.0


def fine_tune_rules(init: str, typed: set[str]) -> tuple[dict[str, Any], str | None]:
    """The ``folder`` recipe's changes for a run that starts from trained weights, and the line that says so."""
    if init in ("default", "xavier") or "backbone_lr_scale" in typed or "freeze_backbone" in typed:
        return {}, None
    scale = FINE_TUNE_BACKBONE_LR_SCALE
    rates = "every layer at the folder recipe's rate" if scale == 1 else \
        f"the new classifier at the folder recipe's rate, the trained backbone at {scale:g} of it"
    return {"backbone_lr_scale": scale}, (f"fine-tuning recipe (--init {init}): {rates}, measured ahead of a slower "
                                          "backbone and of the head alone (--backbone-lr-scale X for a slower "
                                          "backbone, --freeze-backbone for the head alone)")
