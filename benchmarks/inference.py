"""Inference speed on this CPU: PyTorch eager (fp32, bf16), torch.compile and onnxruntime, batch 1 and 256.

Each row runs the same exported graph (``resnetlab.inference.export.Deployable``: standardisation,
model, softmax) on random pixels of the model's input size, in eval mode, under
``torch.inference_mode``; the figure is images per second over a timed stretch after warm-up
(best of three stretches, as the machine's speed drifts). Run it alone: anything else on the CPU
distorts it badly.

    python benchmarks/inference.py [--model d2l_resnet18] [--image-size 28]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from resnetlab.inference.export import Deployable  # noqa: E402
from resnetlab.models import create_model  # noqa: E402


def images_per_sec(run: Callable[[torch.Tensor], object], x: torch.Tensor, seconds: float = 3.0) -> float:
    """Best of three timed stretches of about ``seconds / 3`` each, after two warm-up calls."""
    for _ in range(2):
        run(x)
    best = 0.0
    for _ in range(3):
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 3:
            run(x)
            calls += 1
        best = max(best, calls * len(x) / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="d2l_resnet18")
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per cell")
    args = parser.parse_args()
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # the exporter logs skipped torchvision ops

    model = create_model(args.model, in_channels=1, num_classes=10)
    size = args.image_size
    metadata = {"input_size": [1, size, size], "normalization": {"mean": [0.286], "std": [0.353]}}
    net = Deployable(model, metadata).eval()
    print(describe("cpu"))
    print(f"model {args.model}, input 1x{size}x{size}, random weights (speed does not depend on them)\n")

    def eager(x):
        with torch.inference_mode():
            return net(x)

    def eager_bf16(x):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return net(x)

    runners: dict[str, Callable | str] = {"pytorch eager fp32": eager, "pytorch eager bf16": eager_bf16}
    try:
        compiled = torch.compile(net)
        with torch.inference_mode():
            compiled(torch.rand(2, 1, size, size))

        def run_compiled(x):
            with torch.inference_mode():
                return compiled(x)

        runners["torch.compile fp32"] = run_compiled
    except Exception as exc:  # needs a C++ compiler for the CPU backend
        runners["torch.compile fp32"] = f"n/a ({type(exc).__name__}: {str(exc).strip().splitlines()[0][:60]})"
    try:
        import onnxruntime

        path = Path(tempfile.mkdtemp()) / "m.onnx"
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(net, (torch.rand(2, 1, size, size),), dynamo=True, input_names=["pixels"],
                                        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))
        program.save(str(path))
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        runners["onnxruntime fp32"] = lambda x: session.run(None, {"pixels": x.numpy()})
    except ImportError:
        runners["onnxruntime fp32"] = "n/a (pip install 'resnetlab[onnx]')"

    print(f"{'runtime':<22s} {'batch 1 img/s':>14s} {'batch 256 img/s':>16s}")
    for name, run in runners.items():
        if isinstance(run, str):
            print(f"{name:<22s} {run}")
            continue
        cells = [images_per_sec(run, torch.rand(b, 1, size, size), args.seconds) for b in (1, 256)]
        print(f"{name:<22s} {cells[0]:14.1f} {cells[1]:16.1f}", flush=True)


if __name__ == "__main__":
    main()
