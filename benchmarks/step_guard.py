"""What the non-finite guard costs a training step on this CPU: guarded ``Training.train_step`` beside a plain step.

The guard (``engine/step.py``) copies the batch-norm buffers before the step, computes the
global gradient norm, judges the step on the device and masks what a bad step would change
(fused optimiser skip, buffers, EMA); it reads no flag from the device. The plain step is
forward, backward, optimiser and schedule only. Same model, batch and recipe (the ``cpu``
preset: the seed's ResNet-18 at 28 px, batch 256, bf16 autocast where native, channels-last),
interleaved in six rounds of five steps; the table gives the median step time. Run it alone.

    python benchmarks/step_guard.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from resnetlab.engine import from_preset  # noqa: E402
from resnetlab.engine.initialize import build_model  # noqa: E402
from resnetlab.config import with_base_defaults  # noqa: E402
from resnetlab.engine.schedule import make_optimizer, make_scheduler  # noqa: E402
from resnetlab.util.runtime import resolve_precision  # noqa: E402
from resnetlab.engine.step import Training  # noqa: E402


def main() -> None:
    config = with_base_defaults(from_preset("cpu"))
    device = torch.device("cpu")
    precision = resolve_precision(config.precision, device)
    model = build_model(config, 1, 10).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(config, model)
    training = Training(config, model, model, optimizer, make_scheduler(config, optimizer, 214),
                        nn.CrossEntropyLoss(label_smoothing=config.label_smoothing), None, device, precision)
    x = torch.randn(config.batch_size, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (config.batch_size,))

    def plain() -> None:
        with precision.autocast(device):
            loss = training.criterion(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        training.scheduler.step()

    steps = iter(range(10**9))

    def guarded() -> None:
        training.train_step(x, y, next(steps))

    for _ in range(3):
        guarded()
        plain()
    times: dict[str, list[float]] = {"guarded train_step": [], "plain step": []}
    for _ in range(6):
        for name, step in (("guarded train_step", guarded), ("plain step", plain)):
            start = time.perf_counter()
            for _ in range(5):
                step()
            times[name].append((time.perf_counter() - start) / 5)
    print(describe("cpu"))
    print(f"{'cpu'} preset step: batch {config.batch_size}, 28 px, {precision.name}, channels-last\n")
    print(f"{'step':<20s} {'median ms':>10s}")
    medians = {name: statistics.median(v) * 1000 for name, v in times.items()}
    for name, ms in medians.items():
        print(f"{name:<20s} {ms:10.1f}")
    print(f"\nguard overhead: {medians['guarded train_step'] / medians['plain step'] - 1:+.1%}")


if __name__ == "__main__":
    main()
