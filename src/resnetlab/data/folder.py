"""Class-folder data sets: a folder per class, as torchvision's ImageFolder and Keras expect.

Two layouts are read:

- ``ROOT/train/<class>/*`` with ``ROOT/val/<class>/*`` and optionally ``ROOT/test/<class>/*``
  (``train/`` alone: validation is carved from it as below);
- ``ROOT/<class>/*``: one level, split into train and validation per class (seeded, stratified).

Class names are the training folder's subfolder names, sorted. Images are decoded once with
Pillow (in threads), converted to grayscale or RGB (whatever the data is, unless forced),
resized to a square of the image size (unless given, what the recipe makes of the training
images' sides: their median, at most 224) and cached. Files Pillow cannot read are skipped and
listed in one warning, or refused with ``strict``.

Decoding a split, and its memory-mapped cache, are ``folder_cache.py``'s (:func:`read_split`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .folder_cache import CACHE_FORMAT, SideRule, cache_dir, read_split
from .imageset import DataError, ImageSet

__all__ = ["CACHE_FORMAT", "FolderData", "cache_dir", "is_class_folder", "load_class_folder", "read_split",
           "stratified_split"]


Warn = Callable[[str], None]


def is_class_folder(path: str | os.PathLike[str] | None) -> bool:
    """Whether ``path`` is a class-folder data set (``train/`` or class subfolders), not Fashion-MNIST's files."""
    if path is None:
        return False
    root = Path(path)
    if not root.is_dir() or (root / "FashionMNIST").is_dir():
        return False
    # IDX files, at the top or in torchvision's raw/ folder, make it Fashion-MNIST (complete or not: its errors say which).
    if any(folder.is_dir() and any(folder.glob("*-idx?-ubyte*")) for folder in (root, root / "raw")):
        return False
    return any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir())


@dataclass
class FolderData:
    """The splits of a class-folder data set (``test`` is None without ``test/``) and what was skipped."""

    train: ImageSet
    val: ImageSet | None
    test: ImageSet | None
    skipped: list[str] = field(default_factory=list)  # files that are not readable images, with the reason


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def stratified_split(data: ImageSet, fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """Hold out ``fraction`` of each class (at least one image of a class with two or more) as validation."""
    gen = torch.Generator().manual_seed(seed)
    train_idx, val_idx = [], []
    for label in range(len(data.class_names)):
        members = (data.labels == label).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=gen)]
        n_val = min(len(members) - 1, max(1, round(fraction * len(members)))) if len(members) >= 2 else 0
        val_idx.append(members[:n_val])
        train_idx.append(members[n_val:])
    train_order, val_order = torch.cat(train_idx).sort().values, torch.cat(val_idx).sort().values
    return data.subset(train_order), data.subset(val_order)


def load_class_folder(
    root: str | os.PathLike[str],
    *,
    image_size: int | None,
    channels: int | None,
    val_fraction: float,
    seed: int,
    strict: bool = False,
    warn: Warn | None = None,
    side_rule: SideRule | None = None,
) -> FolderData:
    """Read a class-folder data set (see the module's description) into uint8 splits.

    ``image_size`` None: the side ``side_rule`` makes of the training images' sides (the recipe's).
    """
    root = Path(root)
    train_dir = root / "train"
    layout = "split" if train_dir.is_dir() else "single"
    base = train_dir if layout == "split" else root
    classes = _class_dirs(base)
    if len(classes) < 2:
        raise DataError(f"--data {root}: found {len(classes)} class folder(s) in {base}; a classifier needs at least two, "
                        "one subfolder of images per class")
    class_names = [c.name for c in classes]
    train, skipped = read_split(base, class_names, image_size=image_size, channels=channels, side_rule=side_rule)
    size, channels = train.shape[-1], train.shape[1]
    counts = torch.bincount(train.labels, minlength=len(class_names))
    empty = [name for name, n in zip(class_names, counts.tolist()) if n == 0]
    if len(train) == 0:
        raise DataError(f"--data {root}: no images found in its class folders; add PNG, JPEG, ... files")
    if empty:
        raise DataError(f"--data {root}: class folder(s) {', '.join(empty)} in {base} hold no images; add some or remove the folder")
    val = test = None
    extra: dict[str, ImageSet] = {}
    for split in ("val", "test"):
        folder = root / split
        if layout == "split" and folder.is_dir():
            unknown = sorted({c.name for c in _class_dirs(folder)} - set(class_names))
            if unknown:
                raise DataError(f"--data {root}: {split}/ has class folder(s) {', '.join(unknown)} that train/ lacks; "
                                "every class needs training images")
            extra[split], more = read_split(folder, class_names, image_size=size, channels=channels)
            skipped += more
            if len(extra[split]) == 0:
                # An empty split would score a perfect 0 of 0, and eval would have nothing to measure.
                raise DataError(f"--data {root}: {split}/ holds no readable images; add images to {split}/<class>/, "
                                f"or remove {split}/" + (" to hold out a share of train/ instead" if split == "val" else ""))
    val, test = extra.get("val"), extra.get("test")
    if val is None:
        train, val = stratified_split(train, val_fraction, seed)
    if skipped:
        shown = "; ".join(skipped[:10]) + (f"; and {len(skipped) - 10} more" if len(skipped) > 10 else "")
        message = f"{len(skipped)} file(s) in {root} are not readable images: {shown}"
        if strict:
            raise DataError(f"--strict: {message}; remove them or leave out --strict to skip them")
        if warn is not None:
            warn(f"warning: skipped {message}")
    return FolderData(train=train, val=val, test=test, skipped=skipped)
