"""The cpu preset's training step on this CPU, in variants side by side: images/s and achieved GFLOP/s against the matmul peak.

The seed's ResNet-18 at 28 px (33.0 M MACs per image: 6 x 33.0 M FLOP per trained image), batch
256, the preset's recipe, through ``Training.train_step`` (guard included), on random data. The
variants (precision, channels-last, the small-map matrix products of ``models/small_maps.py``,
batch size, ``torch.compile``) are interleaved over several rounds and the median is kept, since
a shared 2-core machine drifts; each measurement is printed as it is taken, then the table of
medians. The peak is a 2048^3 matrix product in the same precision. bf16 is measured only where
the CPU computes it natively and fast (as precision ``auto`` decides); elsewhere it is emulated,
many times slower, and skipped with a line saying so (``--emulated`` measures it anyway).
Run it alone; ``RESNETLAB_CPU_BF16=0`` makes ``auto`` choose fp32, as on a CPU without native bf16.

    python benchmarks/cpu_step.py [--rounds 5] [--compile] [--precisions fp32,bf16]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_flags, describe  # noqa: E402

from resnetlab.engine import from_preset  # noqa: E402
from resnetlab.engine.initialize import build_model  # noqa: E402
from resnetlab.config import with_base_defaults  # noqa: E402
from resnetlab.engine.schedule import make_optimizer, make_scheduler  # noqa: E402
from resnetlab.util.runtime import cpu_has_native_bf16, resolve_precision  # noqa: E402
from resnetlab.engine.step import Training  # noqa: E402
from resnetlab.models.small_maps import use_small_map_products  # noqa: E402

MACS = 33.0e6  # conv and linear MACs of the seed's net per 28 px image (resnetlab summary d2l_resnet18 --input-size 1,1,28,28)


def matmul_gflops(dtype: torch.dtype, n: int = 2048) -> float:
    """GFLOP/s of an n^3 matrix product on this CPU: the best of five after a warm-up."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(5))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def make_step(precision_name: str, channels_last: bool, small_maps: bool, batch: int, compile_model: bool):
    """A closure running one training step of the variant, and its precision."""
    config = with_base_defaults(from_preset("cpu")).replace(batch_size=batch, channels_last=channels_last)
    device = torch.device("cpu")
    precision = resolve_precision(precision_name, device)
    torch.manual_seed(0)
    model = build_model(config, 1, 10)
    if small_maps:
        use_small_map_products(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(config, model)
    training = Training(config, model, torch.compile(model) if compile_model else model, optimizer,
                        make_scheduler(config, optimizer, 214), nn.CrossEntropyLoss(label_smoothing=0.1), None, device,
                        precision)
    x = torch.randn(batch, 1, 28, 28)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    y = torch.randint(0, 10, (batch,))
    counter = iter(range(10**9))
    return (lambda: training.train_step(x, y, next(counter))), precision.name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4, help="steps per round and variant")
    parser.add_argument("--compile", action="store_true", help="add torch.compile variants (compile time reported apart)")
    parser.add_argument("--precisions", default="fp32,bf16", help="fp32 and/or bf16 (bf16 only where it is native)")
    parser.add_argument("--emulated", action="store_true", help="measure bf16 even where the CPU only emulates it")
    args = parser.parse_args()
    print(describe("cpu"))
    print(f"cpu flags: {' '.join(cpu_flags())}", flush=True)
    precisions = args.precisions.split(",")
    if "bf16" in precisions and not (cpu_has_native_bf16() or args.emulated):
        precisions.remove("bf16")
        print("bf16: skipped: this CPU has no fast native bf16 (precision auto uses fp32 here); --emulated measures it",
              flush=True)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peaks = {name: matmul_gflops(dtypes[name]) for name in precisions}
    print("2048^3 matmul: " + ", ".join(f"{name} {peak:.0f} GFLOP/s" for name, peak in peaks.items()) + "\n", flush=True)
    variants = []
    for precision in precisions:
        for channels_last in (False, True):
            for small_maps in (False, True):
                variants.append((precision, channels_last, small_maps, 256, False))
        variants.append((precision, True, True, 512, False))
        if args.compile:
            variants.append((precision, True, False, 256, True))
            variants.append((precision, True, True, 256, True))
    steps, compile_seconds = {}, {}
    for variant in variants:
        start = time.perf_counter()
        step, name = make_step(*variant)
        for _ in range(2):
            step()  # warm-up (and compilation)
        compile_seconds[variant] = time.perf_counter() - start
        steps[variant] = (step, name)
    times: dict[tuple, list[float]] = {v: [] for v in variants}
    for round_ in range(args.rounds):
        for variant, (step, name) in steps.items():
            seconds = _timed(lambda: [step() for _ in range(args.steps)]) / args.steps
            times[variant].append(seconds)
            precision, channels_last, small_maps, batch, compiled = variant
            print(f"round {round_ + 1}/{args.rounds}: {name} ch-last {channels_last} small maps {small_maps} batch {batch}"
                  f"{' compiled' if compiled else ''}: {seconds * 1000:.1f} ms/step, {batch / seconds:.0f} img/s", flush=True)
    print(f"\nmedians over {args.rounds} rounds:")
    print(f"{'precision':>9s} {'ch-last':>7s} {'small maps':>10s} {'batch':>5s} {'compile':>7s} {'ms/step':>8s} "
          f"{'img/s':>7s} {'GFLOP/s':>8s} {'of peak':>7s} {'set-up s':>8s}")
    for variant, samples in times.items():
        precision, channels_last, small_maps, batch, compiled = variant
        name = steps[variant][1]
        ms = statistics.median(samples) * 1000
        rate = batch / ms * 1000
        gflops = rate * 6 * MACS / 1e9
        print(f"{name:>9s} {str(channels_last):>7s} {str(small_maps):>10s} {batch:5d} {str(compiled):>7s} {ms:8.1f} "
              f"{rate:7.0f} {gflops:8.1f} {gflops / peaks[name]:7.1%} {compile_seconds[variant]:8.1f}")


if __name__ == "__main__":
    main()
