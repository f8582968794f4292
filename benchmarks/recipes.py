"""The ``cpu`` preset over seeds and data sizes: mean and worst validation accuracy, and the loss curve's largest jump.

A recipe is judged by its worst seed (issue 28). Each run is ``fit()`` in a worker process with only
the fields a user types (``--limit-train N --epochs E --seed S``, no time budget, so every recipe gets
its epochs); the recipe is varied by patching the preset (:data:`RECIPES`), and a hook records the
loss of every step. ``jump`` is the largest rise of the loss (averaged over 5 steps) above its lowest
point so far; ``over start`` says whether it ever rose above where it started (after the first 5
steps); ``val acc`` is the best epoch's, ``last val`` the last epoch's. Choices are made on validation;
test accuracy is printed for the record only. ``--notes``
trains the notes' own network, built verbatim from the seed (drawn afresh from seed 1000 + S), instead
of ``d2l_resnet18``; ``--book`` adds the book's recipe (``--preset d2l``, 96 px, with the same
5,000 images held out) as a reference row.

    python benchmarks/recipes.py --sizes 300:10,1000:8,6000:2,6000:8,20000:3 --seeds 0,1,2 --jobs 2
    python benchmarks/recipes.py --sizes 55000:3 --notes --recipes shipped,no-clip
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

# Each recipe: changes to the cpu preset (a value of None removes the field, leaving it to the base default).
RECIPES = {
    "shipped": {},  # the preset as it is
    "no-clip": {"grad_clip": None},  # as before issue 28: no gradient clipping (removed from the preset: base 0, off)
    "clip-1": {"grad_clip": 1.0},
    "no-avg": {"ema_decay": None, "tta": None},  # as before 2026-12-04: the last weights, no flip TTA
    "lr-0.3": {"lr": 0.3},  # a higher peak rate, 0.3 per 512 (measured at 16 epochs: worse)
    "erase": {"erase_prob": 0.25},  # random erasing, as the GPU's best preset (measured at 16 epochs: not better)
}
SMOOTH = 5
_SHIPPED: dict = {}  # the cpu preset as shipped, kept by each worker before it patches it


def notes_net():
    """The notes' ResNet-18, cell for cell (shared/seed/000_283b2a181a464ce9.txt, cells 1 and 5)."""
    from torch import nn
    from torch.nn import functional as F

    class Residual(nn.Module):
        def __init__(self, input_channels, num_channels, use_lxlconv=False, strides=1):
            super().__init__()
            self.conv1 = nn.Conv2d(input_channels, num_channels, kernel_size=3, padding=1, stride=strides)
            self.conv2 = nn.Conv2d(num_channels, num_channels, kernel_size=3, padding=1)
            self.conv3 = nn.Conv2d(input_channels, num_channels, kernel_size=1, stride=strides) if use_lxlconv else None
            self.bn1 = nn.BatchNorm2d(num_channels)
            self.bn2 = nn.BatchNorm2d(num_channels)
            self.relu = nn.ReLU(inplace=True)

        def forward(self, X):
            Y = F.relu(self.bn1(self.conv1(X)))
            Y = self.bn2(self.conv2(Y))
            if self.conv3:
                X = self.conv3(X)
            Y += X
            return F.relu(Y)

    def resnet_block(input_channels, num_channels, num_residuals, first_block=False):
        blk = []
        for i in range(num_residuals):
            if i == 0 and not first_block:
                blk.append(Residual(input_channels, num_channels, use_lxlconv=True, strides=2))
            else:
                blk.append(Residual(num_channels, num_channels))
        return blk

    b1 = nn.Sequential(nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3), nn.BatchNorm2d(64), nn.ReLU(),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b2 = nn.Sequential(*resnet_block(64, 64, 2, first_block=True))
    b3 = nn.Sequential(*resnet_block(64, 128, 2))
    b4 = nn.Sequential(*resnet_block(128, 256, 2))
    b5 = nn.Sequential(*resnet_block(256, 512, 2))
    return nn.Sequential(b1, b2, b3, b4, b5, nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(512, 10))


def loss_shape(losses: list[float]) -> tuple[float, bool]:
    """(the largest rise of the smoothed loss above its lowest point so far, whether it rose above its start)."""
    smooth = [statistics.mean(losses[max(0, i - SMOOTH + 1):i + 1]) for i in range(len(losses))]
    lowest, jump = float("inf"), 0.0
    for value in smooth:
        lowest = min(lowest, value)
        jump = max(jump, value - lowest)
    start = smooth[min(SMOOTH - 1, len(smooth) - 1)]
    return jump, any(v > start for v in smooth[SMOOTH:])


def run_one(task: tuple) -> dict:
    """One run in this worker: the recipe patched into the preset, the loss of every step recorded."""
    recipe, size, epochs, seed, notes, threads, data = task
    import torch

    torch.set_num_threads(threads)
    from resnetlab.config import TrainConfig, presets
    from resnetlab.engine import Hook, fit

    class Losses(Hook):
        def __init__(self):
            self.values = []

        def at_check(self, loop):  # every step on the CPU
            if bool(loop.last_applied):
                self.values.append(float(loop.last_loss))

    book = recipe == "book"
    if not book:
        _SHIPPED.setdefault("cpu", dict(presets.PRESETS["cpu"]))
        patched = {**_SHIPPED["cpu"], **RECIPES[recipe]}
        presets.PRESETS["cpu"] = {k: v for k, v in patched.items() if v is not None}
    losses = Losses()
    fields = dict(preset="d2l" if book else "cpu", epochs=epochs, seed=seed, time_budget=0.0, limit_test=2000,
                  data=data, **({"val_split": 5000} if book else {}))
    if size < 55_000:
        fields["limit_train"] = size
    model = None
    if notes:
        # Drawn from another seed: at the run's own seed the verbatim net takes the same random draws
        # as d2l_resnet18 and is the same network, weight for weight (measured: equal to the last digit).
        torch.manual_seed(1000 + seed)
        model = notes_net()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = fit(TrainConfig(out=str(Path(tmp) / "run"), **fields), log=lambda line: None, model=model, hooks=[losses])
        seconds = time.perf_counter() - start
    jump, over = loss_shape(losses.values)
    return dict(recipe=recipe, size=size, epochs=epochs, seed=seed, val=result.best_val_acc, test=result.test_acc,
                last=result.history[-1]["val_acc"],
                jump=jump, over=over, first=losses.values[0], seconds=seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="300:10,1000:8,6000:2,6000:8,20000:3", help="training images:epochs, ...")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--recipes", default="shipped,no-clip")
    parser.add_argument("--notes", action="store_true", help="train the notes' own net, built verbatim")
    parser.add_argument("--book", action="store_true", help="add the book's recipe (--preset d2l) as a reference")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, each with cores/jobs threads")
    parser.add_argument("--data", default=None, help="Fashion-MNIST folder")
    args = parser.parse_args()
    threads = max(1, len(os.sched_getaffinity(0)) // args.jobs)  # the cores this process may use
    print(describe("cpu"))
    print(f"{args.jobs} run(s) at once, {threads} thread(s) each; model: "
          f"{'the notes own net, built verbatim' if args.notes else 'd2l_resnet18'}; validation: Fashion-MNIST's seeded "
          "5,000 held out of its training images; test: its first 2,000 (for the record)\n")
    sizes = [tuple(int(v) for v in item.split(":")) for item in args.sizes.split(",")]
    recipes = args.recipes.split(",") + (["book"] if args.book else [])
    tasks = [(recipe, size, epochs, int(seed), args.notes, threads, args.data) for size, epochs in sizes
             for recipe in recipes for seed in args.seeds.split(",")]
    print(f"{'recipe':>8s} {'images':>6s} {'epochs':>6s} {'seed':>4s} {'val acc':>8s} {'jump':>5s} {'over start':>10s} "
          f"{'first loss':>10s} {'test acc':>8s} {'last val':>8s} {'s':>6s}", flush=True)
    rows = []
    with ProcessPoolExecutor(args.jobs) as pool:
        for r in pool.map(run_one, tasks):
            rows.append(r)
            print(f"{r['recipe']:>8s} {r['size']:6d} {r['epochs']:6d} {r['seed']:4d} {r['val']:8.4f} {r['jump']:5.2f} "
                  f"{'yes' if r['over'] else 'no':>10s} {r['first']:10.3f} {r['test']:8.4f} {r['last']:8.4f} {r['seconds']:6.0f}", flush=True)
    print(f"\n{'recipe':>8s} {'images':>6s} {'epochs':>6s} {'mean val':>8s} {'worst':>6s} {'largest jump':>12s} "
          f"{'over start':>10s}")
    for size, epochs in sizes:
        for recipe in recipes:
            group = [r for r in rows if (r["recipe"], r["size"], r["epochs"]) == (recipe, size, epochs)]
            vals = [r["val"] for r in group]
            print(f"{recipe:>8s} {size:6d} {epochs:6d} {statistics.mean(vals):8.4f} {min(vals):6.4f} "
                  f"{max(r['jump'] for r in group):12.2f} {sum(r['over'] for r in group):4d} of {len(group)}")


if __name__ == "__main__":
    main()
