"""Fine-tuning measured with a real transfer made here (no ImageNet weights can be downloaded on these machines).

A ResNet-18 with the ImageNet stem (the stem ``--init imagenet`` uses) is pretrained on
Fashion-MNIST's classes 0-4 (T-shirt ... Coat) as 3-channel images, through ``resnetlab train``;
its best weights, without the classifier, are saved as a torchvision-layout ``.pth``, as
torchvision's ImageNet files are. Then classes 5-9 (Sandal ... Ankle boot), gray, are learned
from 10, 50 and 500 training images per class, each recipe through the command line a user
types, with ``--time-budget 0`` so that the machine's speed changes nothing:

- ``scratch``: ``resnetlab train --data SET`` (the folder recipe, from a random init);
- ``head``: ``--init source.pth --freeze-backbone`` (only the new classifier learns);
- ``finetune-same``: ``--init source.pth --backbone-lr-scale 1``: every layer at the folder recipe's rate;
- ``finetune``: ``--init source.pth`` as shipped (the recipe ``--init`` switches to: since 2026-12-04 the same
  as ``finetune-same``, chosen by this benchmark);
- ``finetune-disc``: ``--init source.pth --backbone-lr-scale 0.1`` (the backbone at a tenth).

The first convolution is adapted from 3 channels to 1 (kernels summed) and the classifier
re-initialised, as with ImageNet weights. Validation: 200 images per class held out of the
training images; test: the 5,000 test images of classes 5-9. The table gives the best
validation accuracy (what a run chooses by), mean and worst over seeds, and the test accuracy
of the same runs (reported, never chosen by). Each seed draws its own training subset.

    python benchmarks/transfer.py ROOT [--per-class 10,50,500] [--seeds 0,1,2] [--recipes ...] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from resnetlab.data.fashion_mnist import CLASS_NAMES, resolve_data_dir  # noqa: E402
from resnetlab.data.idx import read_idx  # noqa: E402

SOURCE_CLASSES = range(0, 5)
TARGET_CLASSES = range(5, 10)
VAL_PER_CLASS = 200
RECIPES = {
    "scratch": [],
    "head": ["--init", "{source}", "--freeze-backbone"],
    "finetune-same": ["--init", "{source}", "--backbone-lr-scale", "1"],
    "finetune": ["--init", "{source}"],
    "finetune-disc": ["--init", "{source}", "--backbone-lr-scale", "0.1"],
}


def fashion_mnist() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder = resolve_data_dir(None)
    out = {}
    for split, stem in (("train", "train"), ("test", "t10k")):
        images = read_idx(next(folder.glob(f"{stem}-images-idx3-ubyte*")))
        labels = read_idx(next(folder.glob(f"{stem}-labels-idx1-ubyte*")))
        out[split] = (images, labels)
    return out


def write(folder: Path, images: np.ndarray, labels: np.ndarray, classes: range) -> None:
    for c in classes:
        target = folder / CLASS_NAMES[c].replace("/", "-")
        target.mkdir(parents=True, exist_ok=True)
        for i, index in enumerate(np.flatnonzero(labels == c)):
            Image.fromarray(images[index]).save(target / f"{i:05d}.png")


def make_sets(root: Path, per_class: list[int], seeds: list[int]) -> None:
    """The source set (classes 0-4) and one target set per size and seed (classes 5-9), made once."""
    if (root / "done").exists() and json.loads((root / "done").read_text()) == {"per_class": per_class, "seeds": seeds}:
        return
    data = fashion_mnist()
    (train_x, train_y), (test_x, test_y) = data["train"], data["test"]
    rng = np.random.default_rng(1234)
    # Per target class: the last VAL_PER_CLASS training images are validation, the rest a pool to draw from.
    val_index, pool = [], {}
    for c in TARGET_CLASSES:
        index = rng.permutation(np.flatnonzero(train_y == c))
        val_index.append(index[-VAL_PER_CLASS:])
        pool[c] = index[:-VAL_PER_CLASS]
    val_index = np.concatenate(val_index)
    source = np.flatnonzero(np.isin(train_y, list(SOURCE_CLASSES)))
    source_val = np.concatenate([np.flatnonzero(train_y == c)[-500:] for c in SOURCE_CLASSES])
    source_train = np.setdiff1d(source, source_val)
    write(root / "source" / "train", train_x[source_train], train_y[source_train], SOURCE_CLASSES)
    write(root / "source" / "val", train_x[source_val], train_y[source_val], SOURCE_CLASSES)
    for n in per_class:
        for seed in seeds:
            picked = np.concatenate([np.random.default_rng(seed).permutation(pool[c])[:n] for c in TARGET_CLASSES])
            folder = root / f"target-{n}-seed{seed}"
            write(folder / "train", train_x[picked], train_y[picked], TARGET_CLASSES)
            write(folder / "val", train_x[val_index], train_y[val_index], TARGET_CLASSES)
            write(folder / "test", test_x, test_y, TARGET_CLASSES)
    (root / "done").write_text(json.dumps({"per_class": per_class, "seeds": seeds}))


def pretrain(root: Path, epochs: int) -> Path:
    """The source network, trained once: its weights without the classifier as a torchvision-layout .pth."""
    pth = root / "source.pth"
    if pth.exists():
        return pth
    run = root / "source-run"
    command = [sys.executable, "-m", "resnetlab", "train", "--data", str(root / "source"), "--out", str(run),
               "--model", "resnet18", "--model-args", '{"stem": "imagenet"}', "--channels", "3",
               "--epochs", str(epochs), "--time-budget", "0"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"pretraining failed: {done.stderr.strip()[-500:]}")
    from safetensors.torch import load_file

    state = {k: v for k, v in load_file(str(run / "best.safetensors")).items() if not k.startswith("fc.")}
    torch.save(state, pth)
    results = json.loads((run / "results.json").read_text())
    print(f"source: resnet18 (ImageNet stem), classes 0-4 at 3 channels, {epochs} epochs, {time.perf_counter() - start:.0f} s, "
          f"validation {results['best_val_acc']:.4f}", flush=True)
    return pth


def one(job: tuple[str, int, int, str, str, int]) -> tuple[str, int, int, float, float, float, str]:
    recipe, n, seed, folder, source, threads = job
    import tempfile

    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "resnetlab", "train", "--data", folder, "--out", f"{tmp}/run",
                   "--seed", str(seed), "--channels", "1", "--time-budget", "0", "--no-tensorboard"]
        command += [a.format(source=source) for a in RECIPES[recipe]]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            return recipe, n, seed, float("nan"), float("nan"), wall, done.stderr.strip()[-300:]
        results = json.loads(Path(f"{tmp}/run/results.json").read_text())
        said = next((line for line in done.stdout.splitlines() if line.startswith("fine-tuning")), "")
        return recipe, n, seed, results["best_val_acc"], results["test_acc"], wall, said


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="where the sets and the source network go (made there on first use)")
    parser.add_argument("--per-class", default="10,50,500")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--recipes", default="scratch,head,finetune-same,finetune-disc")
    parser.add_argument("--pretrain-epochs", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, each with cores/jobs threads")
    args = parser.parse_args()
    per_class = [int(v) for v in args.per_class.split(",")]
    seeds = [int(v) for v in args.seeds.split(",")]
    recipes = args.recipes.split(",")
    root = Path(args.root)
    print(describe("cpu"))
    make_sets(root, per_class, seeds)
    source = pretrain(root, args.pretrain_epochs)
    threads = max(1, len(os.sched_getaffinity(0)) // args.jobs)
    jobs = [(r, n, s, str(root / f"target-{n}-seed{s}"), str(source), threads)
            for n in per_class for s in seeds for r in recipes]
    print(f"{len(jobs)} runs, {args.jobs} at once with {threads} thread(s) each", flush=True)
    rows = []
    with ProcessPoolExecutor(args.jobs) as pool:
        for row in pool.map(one, jobs):
            rows.append(row)
            recipe, n, seed, val, test, wall, said = row
            print(f"{recipe:14s} {n:4d}/class seed {seed}: val {val:.4f} test {test:.4f} {wall:5.0f} s  {said}", flush=True)
    print(f"\n{'images/class':>12s} {'recipe':14s} {'val mean':>8s} {'val worst':>9s} {'test mean':>9s} "
          f"{'test worst':>10s} {'s/run':>6s}")
    for n in per_class:
        for recipe in recipes:
            got = [r for r in rows if r[0] == recipe and r[1] == n]
            val, test = [r[3] for r in got], [r[4] for r in got]
            print(f"{n:12d} {recipe:14s} {np.mean(val):8.4f} {min(val):9.4f} {np.mean(test):9.4f} {min(test):10.4f} "
                  f"{np.mean([r[5] for r in got]):6.0f}")


if __name__ == "__main__":
    main()
