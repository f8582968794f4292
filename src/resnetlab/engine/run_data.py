"""A run's data: Fashion-MNIST or a class folder, split and limited as configured, and what follows from it."""

from __future__ import annotations

import hashlib
import sys
from typing import Callable

import torch

from ..data import ImageSet, load_fashion_mnist, split_train_val
from ..data.folder import is_class_folder, load_class_folder
from .config import TrainConfig

Log = Callable[[str], None]


def silent(message: str) -> None:
    """A log that drops everything (ranks other than 0 under torchrun)."""


def warn_stderr(message: str) -> None:
    """Print a warning on stderr."""
    print(message, file=sys.stderr)


def load_data(config: TrainConfig, warn: Log = warn_stderr) -> tuple[ImageSet, ImageSet | None, ImageSet | None]:
    """(train, validation or None, test or None): Fashion-MNIST or a class folder, split and limited as configured.

    A class folder without ``test/`` has no test split: its runs report validation accuracy only.
    """
    if is_class_folder(config.data):
        folder = load_class_folder(
            config.data, image_size=config.image_size, channels=config.channels, val_fraction=config.val_fraction,
            seed=config.seed, strict=config.strict, warn=warn,
        )
        train, val, test = folder.train, folder.val, folder.test
    else:
        # --channels 3 (to fine-tune an RGB model, say): the gray channel three times.
        train, test = (split.with_channels(config.channels) for split in load_fashion_mnist(config.data))
        val = None
        if config.val_split > 0:
            train, val = split_train_val(train, config.val_split, config.seed)
    if config.limit_train is not None:
        train = train.subset(torch.arange(min(config.limit_train, len(train))))
    if config.limit_test is not None and test is not None:
        test = test.subset(torch.arange(min(config.limit_test, len(test))))
    return train, val, test


def resolve_from_data(config: TrainConfig, train: ImageSet) -> TrainConfig:
    """Fill in what the config leaves to the data: the image size (None) and the stem ("auto": small up to 64 px)."""
    size = config.image_size or int(train.images.shape[-1])
    args = dict(config.model_args)
    if args.get("stem") == "auto":
        args["stem"] = "small" if size <= 64 else "imagenet"
    return config.replace(image_size=size, model_args=args)


def data_fingerprint(*sets: ImageSet | None) -> str:
    """A SHA-256 over the images and labels of the splits: a resumed run must see the same data."""
    digest = hashlib.sha256()
    for data in sets:
        if data is not None:
            digest.update(str(tuple(data.images.shape)).encode())
            digest.update(data.images.numpy().tobytes())
            digest.update(data.labels.numpy().tobytes())
    return digest.hexdigest()


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of uint8 images scaled to [0, 1]."""
    x = images.transpose(0, 1).reshape(images.shape[1], -1).double() / 255
    return x.mean(1).tolist(), x.std(1).tolist()
