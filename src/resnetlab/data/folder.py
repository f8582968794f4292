"""Class-folder data sets: a folder per class, as torchvision's ImageFolder and Keras expect.

Two layouts are read:

- ``ROOT/train/<class>/*`` with ``ROOT/val/<class>/*`` and optionally ``ROOT/test/<class>/*``
  (``train/`` alone: validation is carved from it as below);
- ``ROOT/<class>/*``: one level, split into train and validation per class (seeded, stratified).

Class names are the training folder's subfolder names, sorted. Images are decoded once with
Pillow (in threads), converted to grayscale or RGB (whatever the data is, unless forced),
resized to a square of the image size (the median of the training images' sides unless given,
at most 224) and kept as a uint8 cache file (safetensors). The cache is used again while the
split's files are unchanged (same names, sizes and modification times) and rebuilt otherwise.
Files Pillow cannot read are skipped and listed in one warning, or refused with ``strict``.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..fileio import atomic_path
from ..images import GRAY_MODES, ImageError, probe_image, read_image
from .imageset import DataError, ImageSet

MAX_AUTO_SIZE = 224
CACHE_FORMAT = "resnetlab.folder-cache/2"  # 2: 16-bit gray scaled to 8 bits, not clipped
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


def cache_dir() -> Path:
    """Where decoded data sets are cached: ``$RESNETLAB_CACHE``, else ``$XDG_CACHE_HOME/resnetlab``, else ``~/.cache/resnetlab``."""
    if os.environ.get("RESNETLAB_CACHE"):
        return Path(os.environ["RESNETLAB_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "resnetlab"


@dataclass
class FolderData:
    """The splits of a class-folder data set (``test`` is None without ``test/``) and what was skipped."""

    train: ImageSet
    val: ImageSet | None
    test: ImageSet | None
    skipped: list[str] = field(default_factory=list)  # files that are not readable images, with the reason


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def _listing_hash(items: list[tuple[Path, int]], class_names: list[str]) -> str:
    digest = hashlib.sha256(json.dumps(class_names).encode())
    for path, label in items:
        st = path.stat()
        digest.update(f"{path}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _probe(path: Path) -> tuple[str, int, int] | str:
    """(mode, width, height) from the header, or the reason the file is not an image."""
    try:
        return probe_image(path)
    except ImageError as exc:
        return exc.reason


def _decode(path: Path, size: int, channels: int) -> np.ndarray | str:
    """The image as uint8 [C, size, size], or the reason it cannot be decoded (a truncated file, say)."""
    try:
        return read_image(path, channels, size).numpy()
    except ImageError as exc:
        return exc.reason


def _threads() -> int:
    return max(1, min(16, os.cpu_count() or 1))


def read_split(
    folder: Path,
    class_names: list[str],
    *,
    image_size: int | None,
    channels: int | None,
) -> tuple[ImageSet, list[str]]:
    """Decode (or take from the cache) the images under ``folder/<class>/``; return them and the skipped files.

    ``image_size`` and ``channels`` None mean: from the data (median side capped at 224;
    grayscale only if every image is).
    """
    items = [(path, label) for label, name in enumerate(class_names) if (folder / name).is_dir()
             for path in _files(folder / name)]
    listing = _listing_hash(items, class_names)
    # Left to the data, the size and channels are found again from the alias of the last decoding,
    # so a run and a later eval (which asks for them by number) share one cache file.
    alias = _cache_path(folder, image_size, channels).with_suffix(".json") if None in (image_size, channels) else None
    if alias is not None:
        image_size, channels = _read_alias(alias, listing) or (image_size, channels)
    cached = _read_cache(_cache_path(folder, image_size, channels), listing)
    if cached is not None:
        return cached
    with ThreadPoolExecutor(_threads()) as pool:
        probes = list(pool.map(_probe, [path for path, _ in items]))
    skipped = [f"{path} ({probe})" for (path, _), probe in zip(items, probes) if isinstance(probe, str)]
    good = [(item, probe) for item, probe in zip(items, probes) if not isinstance(probe, str)]
    if channels is None:
        channels = 1 if good and all(mode in GRAY_MODES for (mode, _, _) in (p for _, p in good)) else 3
    if image_size is None:
        sides = [side for _, (_, w, h) in good for side in (w, h)]
        image_size = min(MAX_AUTO_SIZE, int(statistics.median(sides))) if sides else MAX_AUTO_SIZE
    with ThreadPoolExecutor(_threads()) as pool:
        decoded = list(pool.map(lambda item: _decode(item[0][0], image_size, channels), good))
    images, labels = [], []
    for ((path, label), _), array in zip(good, decoded):
        if isinstance(array, str):
            skipped.append(f"{path} ({array})")
        else:
            images.append(array)
            labels.append(label)
    data = ImageSet(
        images=torch.from_numpy(np.stack(images)) if images else torch.empty(0, channels, image_size, image_size, dtype=torch.uint8),
        labels=torch.tensor(labels, dtype=torch.int64),
        class_names=tuple(class_names),
    )
    _write_cache(_cache_path(folder, image_size, channels), data, listing, skipped)
    if alias is not None:
        _write_alias(alias, listing, image_size, channels)
    return data, skipped


def _cache_path(folder: Path, image_size: int | None, channels: int | None) -> Path:
    key = hashlib.sha256(f"{folder.resolve()}\0{image_size}\0{channels}".encode()).hexdigest()[:24]
    return cache_dir() / f"{key}.safetensors"


def _read_alias(path: Path, listing: str) -> tuple[int, int] | None:
    try:
        values = json.loads(path.read_text())
        if values.get("listing") == listing:
            return int(values["image_size"]), int(values["channels"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # missing or damaged: decide again
    return None


def _write_alias(path: Path, listing: str, image_size: int, channels: int) -> None:
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({"listing": listing, "image_size": image_size, "channels": channels}))
    except Exception:  # like the cache: one that cannot be written only costs time  # noqa: BLE001
        pass


def _read_cache(path: Path, listing: str) -> tuple[ImageSet, list[str]] | None:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != CACHE_FORMAT or meta.get("listing") != listing:
            return None  # another version of the folder: rebuild
        tensors = load_file(str(path))
        data = ImageSet(tensors["images"], tensors["labels"], tuple(json.loads(meta["class_names"])))
        return data, json.loads(meta["skipped"])
    except (FileNotFoundError, SafetensorError, OSError, ValueError, KeyError):
        return None  # missing or damaged: rebuild


def _write_cache(path: Path, data: ImageSet, listing: str, skipped: list[str]) -> None:
    from safetensors.torch import save_file

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        return  # no cache then; the data were decoded all the same
    meta = {"format": CACHE_FORMAT, "listing": listing, "class_names": json.dumps(list(data.class_names)),
            "skipped": json.dumps(skipped)}
    try:
        with atomic_path(path) as tmp:
            save_file({"images": data.images.contiguous(), "labels": data.labels}, str(tmp), metadata=meta)
    except Exception:  # a cache that cannot be written only costs time next run  # noqa: BLE001
        pass


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
    image_size: int | None = None,
    channels: int | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    strict: bool = False,
    warn: Warn | None = None,
) -> FolderData:
    """Read a class-folder data set (see the module's description) into uint8 splits."""
    root = Path(root)
    train_dir = root / "train"
    layout = "split" if train_dir.is_dir() else "single"
    base = train_dir if layout == "split" else root
    classes = _class_dirs(base)
    if len(classes) < 2:
        raise DataError(f"--data {root}: found {len(classes)} class folder(s) in {base}; a classifier needs at least two, "
                        "one subfolder of images per class")
    class_names = [c.name for c in classes]
    train, skipped = read_split(base, class_names, image_size=image_size, channels=channels)
    size, channels = train.images.shape[-1], train.images.shape[1]
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
