"""A run's data: Fashion-MNIST or a class folder, split and limited as configured, and its channel statistics."""

from __future__ import annotations

import torch

from ..data import ImageSet, open_dataset
from ..log import Log, warn_stderr
from .config import TrainConfig


def load_data(config: TrainConfig, warn: Log = warn_stderr) -> tuple[ImageSet, ImageSet | None, ImageSet | None]:
    """(train, validation or None, test or None) as configured (``open_dataset``), limited to ``limit_train``/``limit_test``."""
    splits = open_dataset(config.data, image_size=config.image_size, channels=config.channels, val_split=config.val_split,
                          val_fraction=config.val_fraction, seed=config.seed, strict=config.strict, warn=warn)
    test = splits.test.limit(config.limit_test) if splits.test is not None else None
    return splits.train.limit(config.limit_train), splits.val, test


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of uint8 images scaled to [0, 1]."""
    x = images.transpose(0, 1).reshape(images.shape[1], -1).double() / 255
    return x.mean(1).tolist(), x.std(1).tolist()
