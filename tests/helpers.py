"""What the tests share besides fixtures: generated data, the seed's trace, a fake clock, command-line helpers.

The tiny data set has the real files' names and IDX format but only a few hundred 28x28 images,
drawn so that each class is learnable (a class-specific bar pattern plus noise). Test modules
import from here (``from helpers import ...``; pytest puts ``tests/`` on the import path).
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

REAL_DATA = Path("/usr/share/datasets/fashion-mnist")

# Cell 6 of shared/seed/000_283b2a181a464ce9.txt, character for character.
SEED_TRACE = """\
Sequential output shape:\t torch.Size([1, 64, 64, 64])
Sequential output shape:\t torch.Size([1, 64, 64, 64])
Sequential output shape:\t torch.Size([1, 128, 32, 32])
Sequential output shape:\t torch.Size([1, 256, 16, 16])
Sequential output shape:\t torch.Size([1, 512, 8, 8])
AdaptiveAvgPool2d output shape:\t torch.Size([1, 512, 1, 1])
Flatten output shape:\t torch.Size([1, 512])
Linear output shape:\t torch.Size([1, 10])"""


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


def read_folder(root, **fields):
    """``load_class_folder(root)`` as a run reads it: the recipe's side rule and base defaults for what ``fields`` leave out."""
    from resnetlab.config import BASE_DEFAULTS, folder_side
    from resnetlab.data.folder import load_class_folder

    choices = dict(image_size=None, channels=None, val_fraction=BASE_DEFAULTS["val_fraction"], seed=BASE_DEFAULTS["seed"],
                   side_rule=folder_side)
    return load_class_folder(root, **{**choices, **fields})


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
# from the cpu preset, as `resnetlab train` does). A test's outcome must not depend on the machine's
# speed, so runs in tests never have a time budget on the real clock (test_budget.py uses FakeClock).
PLAIN = dict(schedule="constant", warmup_epochs=0.0, crop_padding=0, flip=False, label_smoothing=0.0, nesterov=False,
             weight_decay=0.0, grad_clip=0.0, ema_decay=0.0, tta=False, time_budget=0.0)


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




# Large models take about a second each to build and run on 2 cores: the quick suite (-m "not slow")
# leaves their forward passes to the full one.
LARGE_MODELS = {"resnet101", "resnet152", "wide_resnet50_2", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet101_2"}


def every_model():
    """Every registered name, the large ones marked slow."""
    from resnetlab import list_models

    return [pytest.param(name, marks=pytest.mark.slow) if name in LARGE_MODELS else name for name in list_models()]


class FakeClock:
    """A monotonic clock that moves only when told (``advance``): time-budget logic tested without waiting or racing."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# `resnetlab train` in a child process that, right after its N-th train-state save, either sends itself
# a signal ("send") or writes a marker file and waits until a signal arrives ("wait", for a test that
# sends the signal itself, to the child or to torchrun). Either way the signal lands while the run
# has steps left, whatever the machine's speed: a broken signal path fails instead of finishing first.
# "pause" writes the marker and waits until the file TEST_RELEASE exists, then trains on to the end:
# a run that is certainly alive, mid-way, while the test does something beside it.
SIGNAL_CHILD = """
import os, signal, sys, threading
import resnetlab.engine.stop as stop
import resnetlab.engine.loop as train
from resnetlab.cli import run

after, mode = int(os.environ["TEST_AFTER_SAVES"]), os.environ["TEST_MODE"]
received = threading.Event()
handle = stop.StopSignals._handle
def noting(self, signum, frame):
    received.set()
    handle(self, signum, frame)
stop.StopSignals._handle = noting
real, saves = train.save_train_state, 0
def save(*args, **kwargs):
    global saves
    real(*args, **kwargs)
    saves += 1
    if saves == after:
        if mode == "send":
            os.kill(os.getpid(), int(os.environ["TEST_SIGNAL"]))
        elif mode == "pause":
            import time
            open(os.environ["TEST_MARKER"], "w").close()
            deadline = time.monotonic() + 300
            while not os.path.exists(os.environ["TEST_RELEASE"]) and time.monotonic() < deadline:
                time.sleep(0.02)
        else:
            open(os.environ["TEST_MARKER"], "w").close()
            received.wait(120)
train.save_train_state = save
sys.argv = ["resnetlab", *sys.argv[1:]]
run()
"""


def signal_child_env(after_saves: int, *, send: int | None = None, marker: Path | None = None,
                     release: Path | None = None) -> dict[str, str]:
    """The environment that makes :data:`SIGNAL_CHILD` send ``send`` after its save, or write ``marker`` and wait
    (for a signal, or with ``release`` until that file exists)."""
    import os

    if send is not None:
        mode = {"TEST_MODE": "send", "TEST_SIGNAL": str(int(send))}
    elif release is not None:
        mode = {"TEST_MODE": "pause", "TEST_MARKER": str(marker), "TEST_RELEASE": str(release)}
    else:
        mode = {"TEST_MODE": "wait", "TEST_MARKER": str(marker)}
    return {**os.environ, "TEST_AFTER_SAVES": str(after_saves), **mode}


def train_child(args: list[str], after_saves: int, *, send: int | None = None, marker: Path | None = None,
                release: Path | None = None, env: dict | None = None):
    """``resnetlab train ARGS`` as :data:`SIGNAL_CHILD` (see there), stdout and stderr piped."""
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-c", SIGNAL_CHILD, "train", *args],
                            env={**signal_child_env(after_saves, send=send, marker=marker, release=release), **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc, timeout: float = 300) -> None:
    """Wait until ``path`` exists; fail (with the child's stderr) if the child ends first."""
    import time

    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before {path.name} appeared: {proc.stderr.read()}")
        assert time.monotonic() < deadline, f"no {path.name} after {timeout} s"
        time.sleep(0.02)


def read_events(folder: Path):
    """TensorBoard's own reader over ``folder``'s event files (purges applied), everything kept."""
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"tensors": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of a run folder's TensorBoard events as (step, value) pairs, in the order TensorBoard keeps them."""
    from tensorboard.util import tensor_util

    events = read_events(folder)
    series = {}
    for tag in events.Tags()["tensors"]:
        if events.SummaryMetadata(tag).plugin_data.plugin_name == "scalars":
            series[tag] = [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in events.Tensors(tag)]
    return series


def plugin_tags(folder: Path, plugin: str) -> list[str]:
    """The tags of one TensorBoard plugin (images, text, hparams ...) in ``folder``'s event files."""
    return sorted(read_events(folder).PluginTagToContent(plugin))

