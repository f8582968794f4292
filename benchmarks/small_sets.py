"""Small real image sets as class folders, made from what Python packages and Debian ship (no download).

Each set is written as ``ROOT/<name>/train/<class>/*.png`` and ``ROOT/<name>/val/<class>/*.png``:

- ``digits``: scikit-learn's handwritten digits (UCI optdigits), 8x8 gray, 10 classes, 1,437
  training and 360 validation images (scikit-learn's usual 80/20 split, stratified, seed 0).
  Flipping them is wrong (a mirrored 2 is no 2).
- ``fashion1k``, ``fashion5k``: the first 1,000 / 5,000 Fashion-MNIST training images (28x28
  gray, 10 classes) for training, the next 500 / 1,000 for validation (Debian's
  dataset-fashion-mnist; the test set is never touched).
- ``textures``: scikit-image's brick, grass and gravel photographs (512x512 gray), 48x48 crops
  at random places: 200 per class for training from the left 60% of each photograph, 60 per
  class for validation from the right 40% (no overlap).
- ``faces``: scikit-image's ``lfw_subset``, 100 faces from Labeled Faces in the Wild and 100
  patches that are not faces, 25x25 gray; 160 training, 40 validation images.
- ``photos``: 40x40 colour crops of eight of scikit-image's photographs (astronaut, cat, coffee,
  rocket, ...), the class being the photograph: 120 per class for training from its left 60%,
  40 for validation from its right 40%.

    python benchmarks/small_sets.py ROOT            # needs: pip install scikit-learn scikit-image
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SETS = ("digits", "fashion1k", "fashion5k", "textures", "faces", "photos")


def _save(root: Path, split: str, label: str, index: int, array: np.ndarray) -> None:
    folder = root / split / label
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(folder / f"{index:05d}.png")


def digits(root: Path) -> None:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = np.rint(d.images * (255 / 16)).astype(np.uint8)
    train, val = train_test_split(np.arange(len(images)), test_size=0.2, stratify=d.target, random_state=0)
    for split, index in (("train", train), ("val", val)):
        for i in index:
            _save(root, split, str(d.target[i]), int(i), images[i])


def fashion(root: Path, n_train: int, n_val: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    from resnetlab.data import load_fashion_mnist

    train, _ = load_fashion_mnist()
    names = [n.replace("/", "-") for n in train.class_names]
    for split, start, count in (("train", 0, n_train), ("val", n_train, n_val)):
        for i in range(start, start + count):
            _save(root, split, names[int(train.labels[i])], i, train.images[i, 0].numpy())


def _crops(image: np.ndarray, count: int, size: int, x_range: tuple[float, float], rng) -> list[np.ndarray]:
    h, w = image.shape[:2]
    x0, x1 = int(x_range[0] * w), int(x_range[1] * w) - size
    return [image[y : y + size, x : x + size] for y, x in zip(rng.integers(0, h - size, count), rng.integers(x0, x1, count))]


def textures(root: Path) -> None:
    import skimage.data as sd

    rng = np.random.default_rng(0)
    for name in ("brick", "grass", "gravel"):
        image = getattr(sd, name)()
        for split, count, xs in (("train", 200, (0.0, 0.6)), ("val", 60, (0.6, 1.0))):
            for i, crop in enumerate(_crops(image, count, 48, xs, rng)):
                _save(root, split, name, i, np.ascontiguousarray(crop))


def faces(root: Path) -> None:
    import skimage.data as sd

    images = sd.lfw_subset()  # 200 x 25 x 25 floats in [0, 1]: 100 faces, then 100 non-faces
    labels = ["face"] * 100 + ["not-face"] * 100
    rng = np.random.default_rng(0)
    order = np.concatenate([rng.permutation(100), 100 + rng.permutation(100)])
    for k, i in enumerate(order):
        split = "val" if k % 100 < 20 else "train"
        _save(root, split, labels[i], int(i), np.rint(images[i] * 255).astype(np.uint8))


def photos(root: Path) -> None:
    import skimage.data as sd

    rng = np.random.default_rng(0)
    for name in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina", "immunohistochemistry",
                 "stereo_motorcycle"):
        image = getattr(sd, name)()
        image = image[0] if isinstance(image, tuple) else image  # stereo_motorcycle gives three arrays
        for split, count, xs in (("train", 120, (0.0, 0.6)), ("val", 40, (0.6, 1.0))):
            for i, crop in enumerate(_crops(image[..., :3], count, 40, xs, rng)):
                _save(root, split, name, i, np.ascontiguousarray(crop))


def make(root: Path, name: str) -> Path:
    """Write set ``name`` under ``root`` (once); return its folder."""
    folder = root / name
    if (folder / "val").is_dir():
        return folder
    builders = {"digits": digits, "fashion1k": lambda r: fashion(r, 1000, 500), "fashion5k": lambda r: fashion(r, 5000, 1000),
                "textures": textures, "faces": faces, "photos": photos}
    builders[name](folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root")
    parser.add_argument("--sets", default=",".join(SETS))
    args = parser.parse_args()
    for name in args.sets.split(","):
        folder = make(Path(args.root), name)
        counts = {split: sum(1 for _ in (folder / split).rglob("*.png")) for split in ("train", "val")}
        print(f"{name}: {counts['train']:,} training, {counts['val']:,} validation images in {folder}")


if __name__ == "__main__":
    main()
