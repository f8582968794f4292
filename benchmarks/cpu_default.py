"""The default CPU run, exactly as ``make train`` starts it: wall time, what the time budget bought, accuracy.

It runs ``resnetlab train`` in a subprocess with no flag but ``--out`` (and ``--data``, ``--seed`` if given),
so the preset is ``cpu`` with its 10-minute budget for the whole command, and times it from
outside. It prints the machine (CPU model and speed flags, whether bf16 is native or forced off
with ``RESNETLAB_CPU_BF16=0``), the run's lines, a table per epoch with the achieved GFLOP/s of
training (6 x 33.0 M FLOP per image) against a 2048^3 matrix product measured in the same run,
and the final test accuracy with the weights chosen on validation.

With ``--test-each-epoch`` the run also measures test accuracy after every epoch (the budget
plans for that evaluation too), which gives the time to ``--target``. With ``--load-after S``
a process started S seconds into the run keeps one core busy ``--load-share`` of the time (on 2
cores, 0.3 of one slowed the step by about a third): the machine slowing down mid-run, which the
budget must survive.

    python benchmarks/cpu_default.py                        # about 10 minutes
    RESNETLAB_CPU_BF16=0 python benchmarks/cpu_default.py   # as on a CPU without native bf16
    python benchmarks/cpu_default.py --load-after 120       # a slowdown two minutes in
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_step import MACS, matmul_gflops  # noqa: E402
from machine import describe  # noqa: E402

import torch  # noqa: E402


# A competing load: after a delay, keep one core busy a share of every 100 ms (a shared machine that slows down).
LOAD = """
import sys, time
delay, share = float(sys.argv[1]), float(sys.argv[2])
time.sleep(delay)
while True:
    end = time.perf_counter() + 0.1 * share
    while time.perf_counter() < end:
        pass
    time.sleep(0.1 * (1 - share))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", type=float, default=0.91, help="test accuracy to time (with --test-each-epoch)")
    parser.add_argument("--data", default=None, help="Fashion-MNIST folder")
    parser.add_argument("--test-each-epoch", action="store_true", help="also measure test accuracy after every epoch")
    parser.add_argument("--load-after", type=float, help="seconds into the run at which a competing load starts")
    parser.add_argument("--load-share", type=float, default=0.3, help="share of one core the load keeps busy")
    parser.add_argument("--src", default=None, help="run this src folder's resnetlab instead (a before/after comparison)")
    parser.add_argument("--seed", type=int, default=None, help="--seed for the run (default: the preset's, 0, as make train)")
    args = parser.parse_args()
    print(describe("cpu"))
    from resnetlab.util.runtime import cpu_has_native_bf16

    peak = matmul_gflops(torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
    print(f"precision auto: {'bf16' if cpu_has_native_bf16() else 'fp32'}; 2048^3 matmul in it: {peak:.0f} GFLOP/s\n")
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        command = [sys.executable, "-m", "resnetlab", "train", "--out", str(run)]
        command += ["--data", args.data] if args.data else []
        command += ["--test-each-epoch"] if args.test_each_epoch else []
        command += ["--seed", str(args.seed)] if args.seed is not None else []
        start = time.perf_counter()
        load = None
        if args.load_after is not None:
            load = subprocess.Popen([sys.executable, "-c", LOAD, str(args.load_after), str(args.load_share)])
        env = dict(os.environ)
        if args.src:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [args.src, env.get("PYTHONPATH")]))
            print(f"code: {args.src}")
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        wall = time.perf_counter() - start
        if load is not None:
            load.kill()
        print("".join(f"  {line}\n" for line in done.stdout.splitlines()), end="")
        if load is not None:
            print(f"  (a load of {args.load_share:.0%} of one core ran from {args.load_after:g} s on)")
        if done.returncode != 0:
            sys.exit(f"resnetlab train failed with status {done.returncode}")
        with open(run / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        results = json.loads((run / "results.json").read_text())
        config = json.loads((run / "config.json").read_text())
    print(f"\n{'epoch':>5s} {'elapsed s':>10s} {'img/s':>7s} {'GFLOP/s':>8s} {'of peak':>7s} {'val acc':>8s} {'test acc':>9s}")
    elapsed, reached = 0.0, None
    for row in rows:
        elapsed += float(row["seconds"])
        rate = float(row["examples_per_sec"])
        gflops = rate * 6 * MACS / 1e9
        test = float(row["test_acc"]) if row["test_acc"] else None
        print(f"{int(row['epoch']):5d} {elapsed:10.1f} {rate:7.0f} {gflops:8.1f} {gflops / peak:7.1%} "
              f"{float(row['val_acc']):8.4f} {'' if test is None else f'{test:9.4f}'}")
        if reached is None and test is not None and test >= args.target:
            reached = (int(row["epoch"]), elapsed)
    # Code from before 2026-12-01 (--src) fixed one figure, max_steps, instead of a list of decisions.
    plan = config.get("budget_plan") or ([[20, config["max_steps"]]] if config.get("max_steps") else [])
    per_epoch = (60_000 - config["val_split"]) // config["batch_size"]  # training steps per epoch (the last partial batch dropped)
    print(f"\nwhole command (start-up, data, training, evaluation, files): {wall:.1f} s; budget {config['time_budget']:g} min"
          + (f", bought {plan[-1][1]} steps of the {config['epochs']} epochs' {config['epochs'] * per_epoch}" if plan else ""))
    if plan:
        print("budget decisions [global step, total steps]: " + ", ".join(f"[{at}, {total}]" for at, total in plan))
    print(f"final test acc (weights chosen on validation, epoch {results['best_epoch']}): {results['test_acc']:.4f}")
    if args.test_each_epoch:
        print(f"time to {args.target} test accuracy: "
              + (f"{reached[1]:.1f} s of training (epoch {reached[0]})" if reached else "not reached"))


if __name__ == "__main__":
    main()
