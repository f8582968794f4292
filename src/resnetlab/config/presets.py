"""The presets: named recipes that fill what a run leaves unset, before the data's rules and the base defaults.

Each was chosen on a validation split (README and ``benchmarks/README.md`` give the measurements).
"""

from __future__ import annotations

from typing import Any

from ..errors import ResnetlabError
from .fields import TrainConfig

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
    # batch 512 at lr 0.2 with Nesterov momentum, one-cycle, label smoothing, flip, no crop, the
    # gradient norm clipped at 2, evaluated as an EMA of the weights with flip TTA, and a 10-minute
    # budget for the whole command that buys as many of 16 epochs as fit (all 16 on a fast 2-core
    # CPU, about 8 on a slow one).
    # Chosen on the validation split (2-core Intel Xeon, fp32, 2026-11-28): at 4 epochs batch 512
    # gave 0.907 (256: 0.905) in 13% less time, lr 0.4 0.779, no crop 0.910 (crop 2: 0.907), no
    # label smoothing 0.906; at 8 epochs no crop 0.920, crop 2 0.913. Issue 28 (2-core AMD EPYC,
    # bf16, 2026-12-03, benchmarks/recipes.py and README): without clipping the loss spiked above
    # its start on some seeds at every size from 6,000 images up (the notes' own net at 3 epochs:
    # 0.821 on one seed of three); clipped at 2 (scaled with the batch on subsets) no seed spiked.
    # At 12 epochs crop 2 with random erasing gave 0.918 against 0.923, lr 0.4 0.924 with a loss jump.
    # Scored by an EMA of the weights (decay 0.99, warmed up) with flip TTA (benchmarks/averaging.py, same runs
    # scored both ways, 2026-12-04, AMD EPYC): +0.004/+0.011/+0.004 validation at 8 epochs (seeds 0-2), of which
    # TTA +0.002/+0.007/+0.003; at 16 epochs +0.004/+0.013 (seeds 0-1), of which TTA +0.004/+0.005.
    # The ceiling of 16 is where more stops helping (same machine, scored as shipped, seeds 0-1, mean validation):
    # 8 epochs 0.9288, 16 0.9333, 20 0.9333; at 16 epochs random erasing 0.25 gave 0.9326, lr 0.3 0.9255.
    "cpu": dict(
        model="d2l_resnet18", init="default", image_size=28, batch_size=512, epochs=16, time_budget=10.0,
        optimizer="sgd", lr=0.2, momentum=0.9, nesterov=True, weight_decay=5e-4,
        schedule="onecycle", warmup_epochs=1.0, label_smoothing=0.1, grad_clip=2.0,
        crop_padding=0, flip=True, erase_prob=0.0, ema_decay=0.99, tta=True, val_split=5000,
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
