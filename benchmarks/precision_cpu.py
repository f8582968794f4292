"""Training speed of the seed's ResNet-18 on this CPU: fp32 vs bf16 autocast, with and without channels-last.

The evidence behind precision ``auto`` (bf16 on CPUs with native bf16) and ``channels_last``
defaulting to on. Each row trains two short epochs through ``fit`` and reports the second
(warm) epoch's images/s. Run it alone: anything else on the CPU distorts it badly.

    python benchmarks/precision_cpu.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from resnetlab.engine import TrainConfig, fit  # noqa: E402
from resnetlab.util.runtime import cpu_has_native_bf16  # noqa: E402


def images_per_sec(image_size: int, precision: str, channels_last: bool, limit_train: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(
            model="d2l_resnet18", image_size=image_size, precision=precision, channels_last=channels_last,
            limit_train=limit_train, limit_test=256, val_split=256, epochs=2, device="cpu", out=str(Path(tmp) / "r"),
        )
        return fit(config, log=lambda s: None).history[-1]["examples_per_sec"]


def main() -> None:
    print(describe("cpu"))
    print(f"native bf16 (avx512_bf16 / amx_bf16): {cpu_has_native_bf16()}\n")
    print(f"{'size':>5s} {'precision':>9s} {'channels_last':>13s} {'img/s':>8s}")
    for size, limit in ((28, 5120), (96, 768)):
        for precision, channels_last in (("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)):
            speed = images_per_sec(size, precision, channels_last, limit)
            print(f"{size:5d} {precision:>9s} {str(channels_last):>13s} {speed:8.1f}", flush=True)


if __name__ == "__main__":
    main()
