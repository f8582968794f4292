"""A Fashion-MNIST preset on subsets: its own batch and lr (before) against the values fitted to the subset (after).

Runs ``resnetlab train --preset cpu --limit-train N --epochs E`` as a user types it, for each size,
seed and recipe, through ``fit()`` in this process (no time budget, so every recipe gets its epochs):

- ``before``: the preset's batch 512, lr 0.2 and warm-up 1 epoch, typed, as every run got them before
  the presets were fitted to the data (so nothing is fitted);
- ``after``: no flag: the batch from ``recipe.batch_for``, the lr scaled with it, the warm-up at most a
  quarter of the epochs (``recipe.fit_preset_to_data``);
- ``after-sqrt``: the same batch with the lr scaled by the square root of the batch ratio instead,
  the alternative the rule was chosen against.

It prints one row per run (validation accuracy of the best epoch, the last epoch's training loss),
then the mean and the worst over seeds per size and recipe. Choices are made on validation; the test
accuracy is printed for the record only.

    python benchmarks/preset_subsets.py [--sizes 1000:8,6000:2,6000:8] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from resnetlab.engine import PRESETS, TrainConfig, fit  # noqa: E402
from resnetlab.config.rules import batch_for  # noqa: E402

RECIPES = ("before", "after", "after-sqrt")


def fields(recipe: str, preset: str, size: int) -> dict:
    """The fields a user would type for ``recipe`` (nothing for ``after``)."""
    values = PRESETS[preset]
    if recipe == "before":
        return {"batch_size": values["batch_size"], "lr": values["lr"], "warmup_epochs": values["warmup_epochs"]}
    if recipe == "after-sqrt":
        batch = batch_for(size, values["batch_size"])
        return {"batch_size": batch, "lr": values["lr"] * (batch / values["batch_size"]) ** 0.5}
    return {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--sizes", default="1000:8,6000:2,6000:8", help="training images:epochs, comma-separated")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    args = parser.parse_args()
    print(describe("cpu"))
    sizes = [tuple(int(v) for v in item.split(":")) for item in args.sizes.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    recipes = args.recipes.split(",")
    print(f"\npreset {args.preset}; validation: Fashion-MNIST's seeded 5,000 held out of its training images\n")
    print(f"{'images':>7s} {'epochs':>6s} {'recipe':>10s} {'seed':>4s} {'batch':>5s} {'lr':>8s} {'val acc':>8s} "
          f"{'loss':>7s} {'test acc':>8s} {'s':>6s}", flush=True)
    found: dict[tuple, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size, epochs in sizes:
            for recipe in recipes:
                for seed in seeds:
                    out = Path(tmp) / f"{size}-{epochs}-{recipe}-{seed}"
                    config = TrainConfig(preset=args.preset, limit_train=size, epochs=epochs, seed=seed, time_budget=0.0,
                                         out=str(out), **fields(recipe, args.preset, size))
                    start = time.perf_counter()
                    lines: list[str] = []
                    result = fit(config, log=lines.append)
                    saved = TrainConfig.from_dict(__import__("json").loads((out / "config.json").read_text()))
                    found.setdefault((size, epochs, recipe), []).append(result.best_val_acc)
                    print(f"{size:7d} {epochs:6d} {recipe:>10s} {seed:4d} {saved.batch_size:5d} {saved.lr:8.5f} "
                          f"{result.best_val_acc:8.4f} {result.train_loss:7.3f} {result.test_acc:8.4f} "
                          f"{time.perf_counter() - start:6.1f}", flush=True)
    print(f"\n{'images':>7s} {'epochs':>6s} {'recipe':>10s} {'mean val':>8s} {'worst':>6s}")
    for (size, epochs, recipe), accs in found.items():
        print(f"{size:7d} {epochs:6d} {recipe:>10s} {statistics.mean(accs):8.4f} {min(accs):6.4f}")


if __name__ == "__main__":
    main()
