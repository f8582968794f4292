"""How far float32 runs part: 2 processes against 1, and 2 threads against 1, after a few steps (README's "what is equal").

Runs ``resnetlab train`` three times on tiny generated data (the test suite's), as ``tests/test_distributed.py``
does in float64: one process with 1 thread, one with 2 threads, and ``torchrun --nproc_per_node 2`` (1 thread
each), all with ``--sync-bn``, then prints the largest relative difference of the final weights between them.
In float64 both are rounding (1e-13); in float32 a ReLU whose input lies within rounding of zero can flip, and
the next steps amplify it, by an amount that depends on the CPU's kernels.

    python benchmarks/fp32_ranks.py [--model resnet18] [--steps 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from machine import describe  # noqa: E402


def worst_relative_difference(a: dict, b: dict) -> float:
    """max over float tensors of ||a - b|| / ||a||."""
    worst = 0.0
    for k in a:
        if a[k].is_floating_point():
            x, y = a[k].double(), b[k].double()
            worst = max(worst, ((x - y).norm() / x.norm().clamp_min(1e-300)).item())
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--steps", type=int, default=2, help="training steps (batch 64 of 320 images: 5 per epoch)")
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()
    from helpers import write_fashion_mnist
    from safetensors.torch import load_file

    print(describe("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        data = write_fashion_mnist(Path(tmp) / "data")
        common = ["train", "--data", str(data), "--preset", "cpu", "--model", args.model, "--sync-bn", "--seed", "5",
                  "--batch-size", "64", "--lr", "0.01", "--precision", args.precision, "--no-channels-last",
                  "--val-split", "100", "--limit-train", str(64 * args.steps), "--limit-test", "64", "--epochs", "1",
                  "--device", "cpu", "--time-budget", "0"]
        runs = {"1 process, 1 thread": ([sys.executable, "-m", "resnetlab"], "1"),
                "1 process, 2 threads": ([sys.executable, "-m", "resnetlab"], "2"),
                "2 processes, 1 thread each": ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                "--nproc_per_node=2", "-m", "resnetlab"], "1")}
        weights = {}
        for i, (name, (program, threads)) in enumerate(runs.items()):
            out = Path(tmp) / f"run{i}"
            done = subprocess.run([*program, *common, "--out", str(out)], capture_output=True, text=True,
                                  env={**os.environ, "OMP_NUM_THREADS": threads})
            if done.returncode:
                sys.exit(f"{name} failed: {done.stderr}")
            weights[name] = load_file(str(out / "last.safetensors"))
    one = weights["1 process, 1 thread"]
    print(f"\n{args.model}, {args.precision}, {args.steps} steps of batch 64, --sync-bn: the final weights' largest relative "
          "difference from 1 process with 1 thread")
    for name in list(runs)[1:]:
        print(f"  {name:28s} {worst_relative_difference(one, weights[name]):.1e}")


if __name__ == "__main__":
    main()
