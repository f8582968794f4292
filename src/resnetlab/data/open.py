"""One way to open data for every command: Fashion-MNIST's IDX files or a class-folder data set, split the same way.

``open_dataset(data, ...)`` returns :class:`Splits`: train, validation (None when there is none)
and test (None for a class folder without ``test/``). Fashion-MNIST's validation split is a
seeded ``val_split`` of its training images; a class folder's is its ``val/`` folder, else a
seeded, stratified ``val_fraction`` of each class. ``train``, ``eval``, ``export`` and
``show-data`` all open their data here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .fashion_mnist import load_fashion_mnist, resolve_data_dir, split_train_val
from .folder import is_class_folder, load_class_folder
from .folder_cache import SideRule
from .imageset import ImageSet

Warn = Callable[[str], None]


@dataclass
class Splits:
    """A data set's splits, where they came from, and the files skipped on the way."""

    train: ImageSet
    val: ImageSet | None
    test: ImageSet | None
    source: Path  # the folder read
    skipped: list[str] = field(default_factory=list)

    @property
    def held_out(self) -> tuple[ImageSet, str]:
        """The split to measure a finished model on: test, else validation; and its name."""
        if self.test is not None:
            return self.test, "test"
        if self.val is not None:
            return self.val, "val"
        raise AssertionError("a data set always has a test or a validation split")


def dataset_kind(data: str | os.PathLike[str] | None) -> str:
    """``folder`` for a class-folder data set, else ``fashion-mnist`` (also when ``data`` is None: the default)."""
    return "folder" if is_class_folder(data) else "fashion-mnist"


def open_dataset(
    data: str | os.PathLike[str] | None,
    *,
    image_size: int | None,
    channels: int | None,
    val_split: int,
    val_fraction: float,
    seed: int,
    strict: bool = False,
    warn: Warn | None = None,
    side_rule: SideRule | None = None,
) -> Splits:
    """Open ``data`` (None: ``$RESNETLAB_DATA``, else Debian's Fashion-MNIST) as its splits.

    Every choice is the caller's (the run's recipe, or a checkpoint's header): ``image_size``
    and ``channels`` apply to class folders as they are decoded (``image_size`` None: what
    ``side_rule`` makes of the training images' sides; ``channels`` None: gray only if every
    image is); Fashion-MNIST's 1-channel images are repeated to ``channels=3`` when asked.
    ``val_split`` (Fashion-MNIST) and ``val_fraction`` (a class folder without ``val/``) carve
    the validation split, seeded by ``seed``.
    """
    if is_class_folder(data):
        found = load_class_folder(data, image_size=image_size, channels=channels, val_fraction=val_fraction, seed=seed,
                                  strict=strict, warn=warn, side_rule=side_rule)
        return Splits(found.train, found.val, found.test, Path(data), found.skipped)
    folder = resolve_data_dir(data)
    # --channels 3 (to fine-tune an RGB model, say): the gray channel three times.
    train, test = (split.with_channels(channels) for split in load_fashion_mnist(folder))
    val = None
    if val_split > 0:
        train, val = split_train_val(train, val_split, seed)
    return Splits(train, val, test, folder)
