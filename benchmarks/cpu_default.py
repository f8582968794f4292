"""The default CPU run (`resnetlab train` without a preset on a machine without CUDA): time and accuracy.

Runs the ``cpu`` preset exactly as ``resnetlab train`` would, with one addition for this report:
test accuracy is measured after every epoch (``test_each_epoch``), which only reads the model
(eval mode, no gradients, no random numbers drawn), so the run trains exactly as without it; its
evaluation time is counted in the elapsed column. It prints one row per epoch and the time at
which test accuracy first reached the target.

    python benchmarks/cpu_default.py            # the full run, about 10 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from resnetlab.engine import fit, from_preset  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", type=float, default=0.91, help="test accuracy to time (default 0.91)")
    parser.add_argument("--data", default=None, help="Fashion-MNIST folder")
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's epochs (default: keep)")
    args = parser.parse_args()
    print(describe("cpu"))
    config = from_preset("cpu").replace(device="cpu", test_each_epoch=True, data=args.data)
    if args.epochs:
        config = config.replace(epochs=args.epochs)
    print(f"preset cpu: {config.model} {config.image_size}px, {config.epochs} epochs, batch {config.batch_size}, "
          f"{config.optimizer} lr {config.lr} {config.schedule}\n")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = fit(config.replace(out=str(Path(tmp) / "run")), log=lambda s: print(" ", s, flush=True))
        wall = time.perf_counter() - start

    print(f"\n{'epoch':>5s} {'elapsed s':>10s} {'train img/s':>12s} {'val acc':>8s} {'test acc':>9s}")
    elapsed, reached = 0.0, None
    for row in result.history:
        elapsed += row["seconds"]
        print(f"{row['epoch']:5d} {elapsed:10.1f} {row['examples_per_sec']:12.1f} {row['val_acc']:8.4f} {row['test_acc']:9.4f}")
        if reached is None and row["test_acc"] >= args.target:
            reached = (row["epoch"], elapsed)
    print(f"\nwhole run (data loading, training, evaluation, files): {wall:.1f} s")
    print(f"final test acc (best-by-validation weights, epoch {result.best_epoch}): {result.test_acc:.4f}")
    if reached:
        print(f"time to {args.target} test accuracy: {reached[1]:.1f} s (epoch {reached[0]})")
    else:
        print(f"time to {args.target} test accuracy: not reached")


if __name__ == "__main__":
    main()
