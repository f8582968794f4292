"""Shared test set-up: CPU only, few threads, and a tiny generated Fashion-MNIST look-alike.

The tiny data set has the real files' names and IDX format but only a few hundred 28x28 images,
drawn so that each class is learnable (a class-specific bar pattern plus noise); tests that need
the real Fashion-MNIST skip where it is not installed.
"""

from __future__ import annotations

import gzip
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

# Let test modules import each other's constants (e.g. the seed's trace in test_blocks).
sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(min(2, torch.get_num_threads()))

REAL_DATA = Path("/usr/share/datasets/fashion-mnist")


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the IDX format."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    """Write ``array`` as an IDX file (gzip-compressed when ``compress``)."""
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def make_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` learnable 28x28 images: class k is a bright bar at row band k, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
    for i, k in enumerate(labels):
        images[i, 2 + 2 * k : 4 + 2 * k, 4:24] = 220
    return images, labels.astype(np.uint8)


def write_fashion_mnist(folder: Path, n_train: int = 600, n_test: int = 200) -> Path:
    """Write the four Fashion-MNIST file names with generated content into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        images, labels = make_images(n, seed)
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels)
    return folder


SHAPES = ("circle", "square", "triangle")


def draw_shape(kind: str, size: int, rng: np.random.Generator, rgb: bool):
    """A PIL image of one filled shape at a random place and size on a noisy background."""
    from PIL import Image, ImageDraw

    background = tuple(int(v) for v in rng.integers(0, 70, 3)) if rgb else int(rng.integers(0, 70))
    image = Image.new("RGB" if rgb else "L", (size, size), background)
    draw = ImageDraw.Draw(image)
    r = rng.uniform(0.25, 0.4) * size
    cx, cy = rng.uniform(r, size - r, 2)
    fill = tuple(int(v) for v in rng.integers(150, 256, 3)) if rgb else int(rng.integers(150, 256))
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif kind == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return image


def write_shape_folder(root: Path, per_class: int = 30, layout: str = "single", seed: int = 0,
                       sizes: tuple[int, ...] = (32,), classes: tuple[str, ...] = SHAPES) -> Path:
    """A class-folder data set of drawn shapes as PNGs, half RGB and half grayscale.

    ``layout`` "single": ``root/<class>/``; "split": ``root/{train,val,test}/<class>/`` with
    ``per_class`` training images and a third as many validation and test images.
    """
    rng = np.random.default_rng(seed)
    splits = {"": per_class} if layout == "single" else {"train": per_class, "val": per_class // 3, "test": per_class // 3}
    for split, n in splits.items():
        for kind in classes:
            folder = root / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                draw_shape(kind, sizes[i % len(sizes)], rng, rgb=i % 2 == 0).save(folder / f"{kind}{i:03d}.png")
    return root


# What TrainConfig's unset fields become when a test wants none of a preset's recipe: a constant lr,
# no augmentation, no label smoothing or weight decay, no time budget (fit() would otherwise fill them
# from the cpu preset, as `resnetlab train` does).
PLAIN = dict(schedule="constant", warmup_epochs=0.0, crop_padding=0, flip=False, label_smoothing=0.0, nesterov=False,
             weight_decay=0.0, time_budget=0.0)


def plain_config(**fields):
    """A TrainConfig with ``fields`` and the plain recipe (:data:`PLAIN`) for what they leave unset."""
    from resnetlab.engine import TrainConfig

    return TrainConfig(**{**PLAIN, **fields})


def one_line_error(capsys, argv, *needles, code=2):
    """Run the CLI with ``argv``: it must exit with ``code`` and print one stderr line holding every needle."""
    from resnetlab.cli import main

    assert main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for needle in needles:
        assert needle in err[0], err[0]
    return err[0]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A folder holding a tiny generated Fashion-MNIST (600 train, 200 test images)."""
    return write_fashion_mnist(tmp_path_factory.mktemp("fmnist"))


@pytest.fixture
def real_data() -> Path:
    """Debian's Fashion-MNIST folder; the test is skipped where it is not installed."""
    if not (REAL_DATA / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    return REAL_DATA


@pytest.fixture(scope="session")
def trained(tiny_data, tmp_path_factory):
    """A finished tiny run (fp32, so figures can be compared exactly), trained once for the whole test run; its folder."""
    from resnetlab.engine import fit

    out = tmp_path_factory.mktemp("trained") / "run"
    config = plain_config(
        model="resnet18", data=str(tiny_data), val_split=100, limit_train=500,
        batch_size=50, epochs=2, lr=0.05, momentum=0.9, precision="fp32", out=str(out),
    )
    fit(config, log=lambda line: None)
    return out


@pytest.fixture(scope="session")
def ckpt(trained):
    return trained / "best.safetensors"
