"""The default recipe for your own images on small real sets: ``resnetlab train --data SET --epochs N`` and nothing else.

The sets are made by ``small_sets.py`` from what scikit-learn, scikit-image and Debian ship
(digits, Fashion-MNIST subsets, textures, faces, photograph patches). Each is trained through
the command line, as a user would, with only ``--epochs`` (default 15, the issue's case; 0: the
recipe's own epochs) and ``--out``; the table gives the best validation accuracy (what the run
chooses by), the recipe the run printed, and the wall time. ``--src`` runs another checkout's
code (its ``src`` folder) for a before/after comparison.

    python benchmarks/small_folders.py ROOT [--sets digits,faces] [--epochs 15] [--src OTHER/src]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402
from small_sets import SETS, make  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="where the sets are (made there on first use)")
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--epochs", type=int, default=15, help="the one flag given (0: none, the recipe's epochs)")
    parser.add_argument("--src", default=None, help="run this src folder's resnetlab instead (a before/after comparison)")
    args = parser.parse_args()
    print(describe("cpu"))
    env = dict(os.environ)
    if args.src:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [args.src, env.get("PYTHONPATH")]))
        print(f"code: {args.src}")
    rows = []
    for name in args.sets.split(","):
        folder = make(Path(args.root), name)
        with tempfile.TemporaryDirectory() as tmp:
            command = [sys.executable, "-m", "resnetlab", "train", "--data", str(folder), "--out", str(Path(tmp) / "run")]
            command += ["--epochs", str(args.epochs)] if args.epochs else []
            start = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, env=env)
            wall = time.perf_counter() - start
            if done.returncode != 0:
                rows.append((name, "failed: " + (done.stderr.strip().splitlines() or ["?"])[-1], "", wall))
                continue
            results = json.loads((Path(tmp) / "run" / "results.json").read_text())
            recipe = next((line for line in done.stdout.splitlines() if " images of " in line), "")
            losses = [line.split("loss ")[1].split()[0] for line in done.stdout.splitlines() if line.startswith("epoch ")]
            rows.append((name, f"{results['best_val_acc']:.4f}", recipe or f"losses {' '.join(losses[:4])} ...", wall))
        print(f"{name}: done in {wall:.0f} s", flush=True)
    print(f"\n{'set':10s} {'val acc':>8s} {'wall s':>7s}  recipe")
    for name, acc, recipe, wall in rows:
        print(f"{name:10s} {acc:>8s} {wall:7.0f}  {recipe}")


if __name__ == "__main__":
    main()
