"""Fashion-MNIST: where it is on disk, and its splits as uint8 image and int64 label tensors.

The data is looked for in ``--data DIR``, else ``$RESNETLAB_DATA``, else Debian's
``/usr/share/datasets/fashion-mnist`` (package ``dataset-fashion-mnist``). Inside that folder
the four IDX files may lie directly, or in torchvision's ``FashionMNIST/raw/`` layout, each
either ``.gz`` or decompressed.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .idx import read_idx
from .imageset import DataError, ImageSet

CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
STEMS = [stem for pair in FILES.values() for stem in pair]
INSTALL_HINT = (
    "install it with 'apt-get install dataset-fashion-mnist' (Debian), "
    "fetch it with 'resnetlab download fashion-mnist DIR', or point --data at a folder holding "
    "the four IDX files"
)


def _find_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the folder that holds the four Fashion-MNIST files, or raise :class:`DataError`.

    ``data_dir`` (the ``--data`` flag) wins over ``$RESNETLAB_DATA``, which wins over Debian's
    folder. A torchvision-style root (``DIR/FashionMNIST/raw``) is accepted too.
    """
    if data_dir is not None:
        root, source = Path(data_dir), "--data"
    elif os.environ.get("RESNETLAB_DATA"):
        root, source = Path(os.environ["RESNETLAB_DATA"]), "$RESNETLAB_DATA"
    else:
        root, source = DEBIAN_DIR, "the default location"
    if not root.exists():
        raise DataError(f"Fashion-MNIST not found: {root} ({source}) does not exist; {INSTALL_HINT}")
    if not root.is_dir():
        raise DataError(f"Fashion-MNIST not found: {root} ({source}) is not a folder; {INSTALL_HINT}")
    for folder in (root, root / "FashionMNIST" / "raw", root / "raw"):
        if all(_find_file(folder, stem) for stem in STEMS):
            return folder
    raise DataError(
        f"Fashion-MNIST not found in {root} ({source}): it needs {', '.join(STEMS[:-1])} and {STEMS[-1]} "
        f"(.gz or raw); {INSTALL_HINT}"
    )


def load_split(folder: str | os.PathLike[str], split: str) -> ImageSet:
    """Read the ``"train"`` or ``"test"`` split from ``folder`` as an :class:`ImageSet`.

    Checks that images are 3-D uint8, that image and label counts agree and that every label is
    one of the ten classes; a failure raises :class:`DataError` naming the file.
    """
    folder = Path(folder)
    image_stem, label_stem = FILES[split]
    image_path = _find_file(folder, image_stem) or folder / f"{image_stem}.gz"
    label_path = _find_file(folder, label_stem) or folder / f"{label_stem}.gz"
    images = read_idx(image_path)
    labels = read_idx(label_path)
    if images.ndim != 3 or images.dtype.name != "uint8":
        raise DataError(f"{image_path}: expected uint8 images [N, H, W], found {images.dtype.name} {list(images.shape)}")
    if labels.ndim != 1:
        raise DataError(f"{label_path}: expected a 1-D label array, found shape {list(labels.shape)}")
    if len(images) != len(labels):
        raise DataError(
            f"{image_path.name} holds {len(images):,} images but {label_path.name} holds "
            f"{len(labels):,} labels; the two files must come from the same split"
        )
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(CLASS_NAMES)):
        bad = int(labels.max()) if int(labels.max()) >= len(CLASS_NAMES) else int(labels.min())
        raise DataError(f"{label_path}: label {bad} is out of range; Fashion-MNIST labels are 0-9")
    return ImageSet(
        images=torch.from_numpy(images).unsqueeze(1),
        labels=torch.from_numpy(labels.astype("int64")),
        class_names=CLASS_NAMES,
    )


def load_fashion_mnist(data_dir: str | os.PathLike[str] | None = None) -> tuple[ImageSet, ImageSet]:
    """Return Fashion-MNIST's ``(train, test)`` sets: 60,000 and 10,000 images of 1x28x28."""
    folder = resolve_data_dir(data_dir)
    return load_split(folder, "train"), load_split(folder, "test")


def split_train_val(train: ImageSet, val_size: int, seed: int) -> tuple[ImageSet, ImageSet]:
    """Carve a seeded random validation set of ``val_size`` examples from ``train``.

    The validation set picks the best epoch and tunes recipes; the test set is only reported.
    """
    if not 0 <= val_size < len(train):
        raise DataError(f"--val-split {val_size} must be between 0 and {len(train) - 1} (the training set's size minus one)")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    return train.subset(order[val_size:]), train.subset(order[:val_size])
