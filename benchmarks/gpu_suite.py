"""The whole GPU check in one command: speed and accuracy goals, then the tests marked ``gpu``; one table.

    python benchmarks/gpu_suite.py --data DIR              # on a CUDA machine, about 6 minutes on one H100
    python benchmarks/gpu_suite.py --data DIR --tune       # then candidate recipes for fast and best, on validation
    python benchmarks/gpu_suite.py --smoke --device cpu    # the same code on tiny limits, a minute on a CPU

What it runs, each part on its own (one that fails is reported and the rest go on):

1. the card's bf16 matrix-multiply peak (8192^3, the mean of ten products after warm-up);
2. ``vs_d2l.py``: the book's ``train_ch6`` loop beside our ``d2l`` preset, full 10 epochs
   (goal: our wall time at most 1/5 of the book's, at equal test accuracy);
3. the ``fast`` preset with seeds 0, 1, 2 (goal: test accuracy >= 0.94 within 5 s of training);
4. the ``best`` preset, seed 0 (goal: >= 0.955 within 30 s of training);
5. achieved model FLOP/s of the ``fast`` training step (conv and linear MACs x 2 x 3 per image,
   timed over 50 steps after warm-up, the device waited for) against the measured peak (goal: >= 40%);
6. the same step eager beside ``--compile --compile-mode reduce-overhead`` (inductor and CUDA
   graphs), with its compilation timed on its own;
7. one epoch each of ``fast``, ``best`` and ``d2l`` with ``torch.cuda.set_sync_debug_mode("error")``
   over the epoch's steps (``host_syncs.py``: the guard's readings and the epoch's end aside):
   whether the host waited for the device inside a step, and where (n/a on the CPU);
8. ``pytest -m gpu`` (bf16 and fp16 steps, stop and resume, eval/predict/ONNX export of a GPU
   checkpoint, ``--compile``, torchrun with NCCL).

With ``--tune``, candidate recipes for ``fast`` and ``best`` follow, each reporting validation
accuracy (what a preset is chosen by) and test accuracy (reported only). Every line is printed as
it comes and copied to ``--log`` (for a machine whose output may be cut off).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from machine import describe  # noqa: E402

from resnetlab.engine import fit, from_preset  # noqa: E402

ROWS: list[tuple[str, str, str, str]] = []  # (what, figure, goal, verdict)
LOG: Path | None = None
EAGER_STEP: dict[str, Any] = {}  # the fast step's eager timing (fast_step), measured once for the FLOP/s and compile rows


def say(text: str = "") -> None:
    """Print a line now and append it to the log file."""
    print(text, flush=True)
    if LOG is not None:
        with LOG.open("a") as f:
            f.write(text + "\n")


def part(name: str, run: Callable[[], None]) -> None:
    """Run one part of the suite; a failure is reported as a row and the suite goes on."""
    say(f"\n== {name}")
    start = time.perf_counter()
    try:
        run()
    except Exception as exc:  # noqa: BLE001 - one broken part must not hide the others
        say("".join(traceback.format_exception(exc))[-3000:])
        ROWS.append((name, f"FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''}", "", "no"))
    say(f"({name}: {time.perf_counter() - start:.1f} s)")


def verdict(ok: bool) -> str:
    return "yes" if ok else "no"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: torch.device, smoke: bool) -> float:
    """bf16 matrix-multiply TFLOP/s on ``device``: the mean of ten n^3 products after three warm-ups."""
    n = 1024 if smoke else 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    sync(device)
    return 2 * n**3 * 10 / (time.perf_counter() - start) / 1e12


def run_preset(name: str, args: argparse.Namespace, tmp: Path, **changes: Any):
    """One run of a preset (with ``changes``) on the suite's device and data; returns the TrainResult."""
    config = from_preset(name).replace(device=args.device, data=args.data, out=str(tmp / f"{name}-{time.monotonic_ns()}"),
                                       **changes)
    if args.smoke:
        config = config.replace(limit_train=256, limit_test=128, val_split=100, epochs=1, warmup_epochs=0, batch_size=64)
    return fit(config, log=lambda line: say("   " + line))


def preset_part(name: str, seeds: list[int], goal_acc: float, goal_s: float, args, tmp) -> None:
    """A preset over ``seeds``: test accuracy, training seconds per epoch and in all."""
    results = []
    for seed in seeds:
        r = run_preset(name, args, tmp, seed=seed)
        per_epoch = [row["seconds"] for row in r.history]
        say(f"   seed {seed}: test acc {r.test_acc:.4f}, val acc {r.best_val_acc:.4f}, training {r.train_seconds:.1f} s "
            f"({statistics.mean(per_epoch):.2f} s/epoch over {len(per_epoch)}), {r.examples_per_sec:,.0f} img/s, "
            f"whole run {r.total_seconds:.1f} s")
        results.append(r)
    accs = [r.test_acc for r in results]
    secs = [r.train_seconds for r in results]
    figure = (f"test {min(accs):.4f}-{max(accs):.4f} (mean {statistics.mean(accs):.4f}), training {statistics.mean(secs):.1f} s, "
              f"{statistics.mean(r.examples_per_sec for r in results):,.0f} img/s")
    ok = min(accs) >= goal_acc and max(secs) <= goal_s
    ROWS.append((f"{name} preset, seed(s) {','.join(map(str, seeds))}", figure, f">= {goal_acc} within {goal_s:g} s", verdict(ok)))


def vs_d2l_part(args, tmp) -> None:
    """The book's loop beside the d2l preset (benchmarks/vs_d2l.py)."""
    import vs_d2l
    from resnetlab.data import load_fashion_mnist

    device = torch.device(args.device)
    train, test = load_fashion_mnist(args.data)
    epochs = 1 if args.smoke else 10
    n_train, n_test = (256, 128) if args.smoke else (len(train), len(test))
    book = vs_d2l.book_train(
        vs_d2l.ResizedFashionMNIST(train.images[:n_train, 0].numpy(), train.labels[:n_train].numpy(), 96),
        vs_d2l.ResizedFashionMNIST(test.images[:n_test, 0].numpy(), test.labels[:n_test].numpy(), 96),
        epochs, device,
    )
    say(f"   book: {book['wall']:.1f} s, {book['examples_per_sec']:,.0f} img/s, test acc {book['test_acc']:.4f}")
    config = from_preset("d2l").replace(epochs=epochs, limit_train=n_train, limit_test=n_test, data=args.data,
                                        device=args.device, out=str(tmp / "d2l"))
    start = time.perf_counter()
    ours = fit(config, log=lambda line: say("   ours: " + line))
    wall = time.perf_counter() - start
    say(f"   ours: {wall:.1f} s, {ours.examples_per_sec:,.0f} img/s, test acc {ours.test_acc:.4f}")
    ratio = book["wall"] / wall
    ROWS.append(("d2l preset vs the book's loop, 10 epochs" if not args.smoke else "d2l vs book (smoke)",
                 f"book {book['wall']:.1f} s, acc {book['test_acc']:.4f}; ours {wall:.1f} s, acc {ours.test_acc:.4f}; "
                 f"{ratio:.1f}x", ">= 5x at equal accuracy",
                 verdict(ratio >= 5 and ours.test_acc >= book["test_acc"] - 0.005)))


def fast_step(args, compile_mode: str | None = None) -> dict[str, Any]:
    """The fast preset's training step on one fixed batch: its time after warm-up (CUDA-synchronised) and what it computes.

    ``compile_mode``: the step's model under ``torch.compile(mode=...)``, as ``--compile --compile-mode`` runs it;
    its first three steps (compilation, and with CUDA graphs a warm-up run and the recording) are timed on their own.
    On the CPU the smoke run compiles with dynamo's eager backend (seconds, not inductor's minutes) to check the code.
    """
    from torch import nn

    from resnetlab.engine.initialize import build_model
    from resnetlab.config import with_base_defaults
    from resnetlab.engine.schedule import make_optimizer, make_scheduler
    from resnetlab.util.runtime import resolve_precision
    from resnetlab.engine.step import Training
    from resnetlab.models.summary import summary

    device = torch.device(args.device)
    config = with_base_defaults(from_preset("fast"))
    batch = 64 if args.smoke else config.batch_size
    torch.manual_seed(0)
    model = build_model(config, 1, 10).to(device)
    macs = summary(model, (1, 1, config.image_size, config.image_size)).total_macs
    model = model.to(memory_format=torch.channels_last)
    precision = resolve_precision("auto", device)
    optimizer = make_optimizer(config, model)
    step_model = model
    if compile_mode is not None:
        torch._dynamo.reset()  # each compiled step starts from nothing: its first steps are its own compilation
        step_model = (torch.compile(model, mode=compile_mode) if device.type == "cuda"
                      else torch.compile(model, backend="eager"))
    training = Training(config, model, step_model, optimizer, make_scheduler(config, optimizer, 100),
                        nn.CrossEntropyLoss(label_smoothing=config.label_smoothing), None, device, precision)
    x = torch.randn(batch, 1, config.image_size, config.image_size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)
    sync(device)
    start = time.perf_counter()
    first = 3 if compile_mode is not None else 0
    for i in range(first):
        training.train_step(x, y, i)
    sync(device)
    first_seconds = time.perf_counter() - start
    steps = 2 if args.smoke else 50
    for i in range(first, first + (1 if args.smoke else 20)):
        training.train_step(x, y, i)
    sync(device)
    start = time.perf_counter()
    for i in range(steps):
        training.train_step(x, y, i)
    sync(device)
    return {"seconds": (time.perf_counter() - start) / steps, "first_seconds": first_seconds, "macs": macs,
            "batch": batch, "precision": precision.name}


def flops_part(args, peak: float) -> None:
    """Achieved model FLOP/s of the fast preset's training step."""
    EAGER_STEP.update(fast_step(args))
    step = EAGER_STEP
    seconds, macs, batch = step["seconds"], step["macs"], step["batch"]
    flops = 6 * macs * batch / seconds / 1e12  # forward 2 FLOP per MAC, backward twice the forward
    share = flops / peak
    say(f"   {macs / 1e6:.1f} M MACs per image, batch {batch}, {step['precision']}, {seconds * 1000:.2f} ms per step, "
        f"{batch / seconds:,.0f} img/s, {flops:.1f} TFLOP/s of model work = {share:.1%} of the measured bf16 peak")
    ROWS.append(("fast step: model FLOP/s vs bf16 matmul peak", f"{flops:.1f} of {peak:.1f} TFLOP/s = {share:.1%}",
                 ">= 40%", verdict(share >= 0.4)))


def compile_part(args) -> None:
    """The fast step eager beside ``--compile --compile-mode reduce-overhead`` (inductor and CUDA graphs)."""
    from torch._dynamo.utils import counters

    cuda = torch.device(args.device).type == "cuda"
    eager = EAGER_STEP or fast_step(args)
    skips_before = counters["inductor"]["cudagraph_skips"]  # PyTorch counts the graphs it would not capture
    compiled = fast_step(args, compile_mode="reduce-overhead")
    skips = counters["inductor"]["cudagraph_skips"] - skips_before
    how = "reduce-overhead" if cuda else "dynamo, eager backend (cpu smoke: checks the code only)"
    say(f"   eager {eager['seconds'] * 1000:.2f} ms per step; {how} {compiled['seconds'] * 1000:.2f} ms per step "
        f"after its first 3 steps took {compiled['first_seconds']:.1f} s; CUDA-graph skips counted: {skips}")
    ratio = eager["seconds"] / compiled["seconds"]
    ROWS.append(("fast step: eager vs --compile-mode reduce-overhead",
                 f"{eager['seconds'] * 1000:.2f} vs {compiled['seconds'] * 1000:.2f} ms ({ratio:.2f}x), "
                 f"compile {compiled['first_seconds']:.1f} s" + ("" if cuda else " (cpu: dynamo, eager backend)"),
                 "faster", verdict(ratio > 1) if cuda else ""))


def syncs_part(args, tmp) -> None:
    """One epoch of fast, best and d2l with every host sync inside the steps an error (``host_syncs.py``)."""
    what = "host syncs inside steps, 1 epoch of fast/best/d2l"
    if torch.device(args.device).type != "cuda":
        say("   n/a on cpu (torch.cuda.set_sync_debug_mode is a CUDA setting)")
        ROWS.append((what, "n/a on cpu", "none", ""))
        return
    from host_syncs import is_sync_error, syncs_are_errors, where_synced

    found = []
    for name in ("fast", "best", "d2l"):
        try:
            with syncs_are_errors():
                run_preset(name, args, tmp, epochs=1)
        except RuntimeError as exc:
            if not is_sync_error(exc):
                raise
            say(f"   {name}: a host sync inside a step, at {where_synced(exc)}")
            found.append(f"{name} at {where_synced(exc, short=True)}")
        else:
            say(f"   {name}: no host sync inside the epoch's steps")
    ROWS.append((what, "; ".join(found) or "none", "none", verdict(not found)))


def tests_part(args) -> None:
    """``pytest -m gpu`` in a subprocess; skipped tests (no CUDA) count as such."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parent / "src"), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-rfEs",
                           str(HERE.parent / "tests")], cwd=HERE.parent, env=env, capture_output=True, text=True,
                          timeout=900)
    tail = (done.stdout + done.stderr).strip().splitlines()
    for line in [line for line in tail if line.startswith(("FAILED", "ERROR", "SKIPPED"))] + tail[-40:]:
        say("   " + line)
    summary_line = tail[-1] if tail else "no output"
    ok = done.returncode == 0
    ROWS.append(("pytest -m gpu", summary_line.strip("= "), "all pass", verdict(ok) if "passed" in summary_line else "skipped"))


def tune_part(args, tmp) -> None:
    """Candidate recipes, chosen by validation accuracy; test accuracy is reported, never used to choose."""
    candidates = [
        ("fast", {"epochs": 5}),
        ("fast", {"epochs": 5, "batch_size": 1024, "lr": 0.4}),
        ("fast", {"epochs": 12}),
        ("fast", {"compile": True}),
        ("fast", {"compile": True, "compile_mode": "reduce-overhead"}),
        ("best", {"batch_size": 512, "lr": 0.2, "epochs": 25}),
        ("best", {"batch_size": 1024, "lr": 0.4, "epochs": 30}),
    ]
    if args.smoke:
        candidates = candidates[:2]
    for name, changes in candidates:
        r = run_preset(name, args, tmp, **changes)
        label = f"tune {name} {changes or '(as is)'}"
        figure = f"val {r.best_val_acc:.4f}, test {r.test_acc:.4f}, training {r.train_seconds:.1f} s"
        say(f"   {label}: {figure}")
        ROWS.append((label, figure, "choose on val", ""))


def main() -> None:
    global LOG
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data", default=None, help="Fashion-MNIST folder (default: $RESNETLAB_DATA, then Debian's)")
    parser.add_argument("--smoke", action="store_true", help="tiny limits: check that the suite works (a minute on a CPU)")
    parser.add_argument("--tune", action="store_true", help="also run candidate recipes for fast and best")
    parser.add_argument("--skip", default="", help="comma-separated parts to leave out: peak,d2l,fast,best,flops,compile,syncs,tests")
    parser.add_argument("--log", default=None, help="also append every line to this file")
    args = parser.parse_args()
    LOG = Path(args.log) if args.log else None
    skip = set(filter(None, args.skip.split(",")))
    device = torch.device(args.device)
    started = time.perf_counter()
    say(describe(args.device))
    if device.type == "cuda":
        say(f"cuda {torch.version.cuda}, cudnn {torch.backends.cudnn.version()}, "
            f"bf16 in hardware: {torch.cuda.is_bf16_supported(including_emulation=False)}")
    peak = float("nan")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)

        def peak_part() -> None:
            nonlocal peak
            peak = matmul_peak(device, args.smoke)
            say(f"   bf16 matmul: {peak:.1f} TFLOP/s")
            ROWS.append(("bf16 matmul peak (measured)", f"{peak:.1f} TFLOP/s", "", ""))

        seeds = [0] if args.smoke else [0, 1, 2]
        parts = [
            ("peak", "bf16 matmul peak", peak_part),
            ("fast", "fast preset", lambda: preset_part("fast", seeds, 0.94, 5.0, args, tmp)),
            ("flops", "model FLOP/s of the fast step", lambda: flops_part(args, peak)),
            ("compile", "fast step eager vs reduce-overhead", lambda: compile_part(args)),
            ("syncs", "host syncs inside steps", lambda: syncs_part(args, tmp)),
            ("d2l", "book loop vs d2l preset", lambda: vs_d2l_part(args, tmp)),
            ("best", "best preset", lambda: preset_part("best", [0], 0.955, 30.0, args, tmp)),
            ("tests", "pytest -m gpu", lambda: tests_part(args)),
        ]
        for key, name, run in parts:
            if key not in skip:
                part(name, run)
        if args.tune:
            part("tuning candidates", lambda: tune_part(args, tmp))
    say(f"\n== GPU suite, {datetime.date.today().isoformat()}, "
        f"{torch.cuda.get_device_name(0) if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}, "
        f"cuda {torch.version.cuda}; {time.perf_counter() - started:.0f} s in all\n")
    widths = [max(len(r[i]) for r in ROWS + [("what", "figure", "goal", "met")]) for i in range(4)]
    for row in [("what", "figure", "goal", "met"), *ROWS]:
        say(" | ".join(cell.ljust(w) for cell, w in zip(row, widths)))


if __name__ == "__main__":
    main()
