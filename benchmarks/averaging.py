"""How the cpu preset's run should be scored at its end: its last weights, or an average of its last weights (EMA), with or without flip test-time augmentation.

A paired comparison: each run (the cpu preset with ``--epochs E --seed S``, no time budget) keeps
exponential moving averages of its weights at several decays beside the model, and at the end
scores the last weights and each average (its decay warmed up as timm's: ``min(d, (1+t)/(10+t))`` at step t) on the validation split (5,000 training images held out),
each without and with flip TTA. Every variant sees the same training run, so the differences are
the variants' own, not the seeds'. Choices are made on validation; the test accuracy of each is
printed for the record only.

    python benchmarks/averaging.py --epochs 8,16 --seeds 0,1,2 --jobs 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

DECAYS = (0.99, 0.995, 0.998)


def run_one(task: tuple) -> list[dict]:
    """One run; returns a row per (weights, tta) variant with its validation and test accuracy."""
    epochs, seed, threads, data, limit = task
    import torch

    torch.set_num_threads(threads)
    from resnetlab.config import TrainConfig
    from resnetlab.engine import Hook, fit
    from resnetlab.engine.step import Ema
    from resnetlab.scoring import evaluate

    scores: list[dict] = []

    class Averages(Hook):
        def on_run_start(self, loop):
            self.averages = {d: Ema(loop.run.training.model, d) for d in DECAYS}

        def after_step(self, loop):
            t = loop.run.progress.global_step  # the steps done (the engine's own EMA counts one less: no difference seen)
            for ema in self.averages.values():
                ema.update(loop.last_applied, t)  # warmed up: min(d, (1+t)/(10+t))

        def on_run_end(self, loop, result):
            run = loop.run
            nets = {"last": run.training.model, **{f"ema {d}": e.module for d, e in self.averages.items()}}
            for name, net in nets.items():
                for tta in (False, True):
                    val = evaluate(net, run.loaders.val, precision=run.precision, tta=tta)["acc"]
                    test = evaluate(net, run.loaders.test, precision=run.precision, tta=tta)["acc"]
                    scores.append(dict(epochs=epochs, seed=seed, weights=name, tta=tta, val=val, test=test))

    fields = dict(preset="cpu", epochs=epochs, seed=seed, time_budget=0.0, data=data)
    if limit:
        fields.update(limit_train=limit, limit_test=limit)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        fit(TrainConfig(out=str(Path(tmp) / "run"), **fields), log=lambda line: None, hooks=[Averages()])
        seconds = time.perf_counter() - start
    for row in scores:
        row["seconds"] = seconds
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", default="8,16", help="epochs of each run, comma-separated")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, each with cores/jobs threads")
    parser.add_argument("--data", default=None, help="Fashion-MNIST folder")
    parser.add_argument("--limit-train", type=int, default=0, help="fewer training images (a quick try of the script)")
    args = parser.parse_args()
    threads = max(1, len(os.sched_getaffinity(0)) // args.jobs)
    print(describe("cpu"))
    print(f"{args.jobs} run(s) at once, {threads} thread(s) each; the cpu preset on all 55,000 training images, no "
          "budget; validation: 5,000 held out; test: Fashion-MNIST's 10,000 (for the record)\n")
    tasks = [(int(e), int(s), threads, args.data, args.limit_train) for e in args.epochs.split(",") for s in args.seeds.split(",")]
    print(f"{'epochs':>6s} {'seed':>4s} {'weights':>10s} {'tta':>4s} {'val acc':>8s} {'test acc':>8s} {'s':>6s}", flush=True)
    rows = []
    with ProcessPoolExecutor(args.jobs) as pool:
        for scores in pool.map(run_one, tasks):
            rows += scores
            for r in scores:
                print(f"{r['epochs']:6d} {r['seed']:4d} {r['weights']:>10s} {'yes' if r['tta'] else 'no':>4s} "
                      f"{r['val']:8.4f} {r['test']:8.4f} {r['seconds']:6.0f}", flush=True)
    print(f"\n{'epochs':>6s} {'weights':>10s} {'tta':>4s} {'mean val':>8s} {'worst':>6s} {'mean gain':>9s} "
          f"{'least gain':>10s} {'mean test':>9s}   (gain: over the last weights without TTA, same run)")
    for epochs in sorted({r["epochs"] for r in rows}):
        group = [r for r in rows if r["epochs"] == epochs]
        base = {r["seed"]: r["val"] for r in group if r["weights"] == "last" and not r["tta"]}
        for weights in ["last", *(f"ema {d}" for d in DECAYS)]:
            for tta in (False, True):
                sel = [r for r in group if r["weights"] == weights and r["tta"] == tta]
                gains = [r["val"] - base[r["seed"]] for r in sel]
                print(f"{epochs:6d} {weights:>10s} {'yes' if tta else 'no':>4s} {statistics.mean(r['val'] for r in sel):8.4f} "
                      f"{min(r['val'] for r in sel):6.4f} {statistics.mean(gains):+9.4f} {min(gains):+10.4f} "
                      f"{statistics.mean(r['test'] for r in sel):9.4f}")


if __name__ == "__main__":
    main()
