"""Where and how a run computes: the device, the precision, seeding and determinism."""

from __future__ import annotations

import functools
import os
import random
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ResnetlabError

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "fp64")


def mps_available() -> bool:
    """Whether Apple's Metal (MPS) backend is usable here."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda, else mps, else cpu; asking for a device that is not there is a user error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ResnetlabError("--device cuda: no CUDA GPU is available here; use --device cpu or auto")
    if name == "mps" and not mps_available():
        built = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_built()
        why = "this Mac's macOS is older than 12.3 or it has no Metal GPU" if built else "this PyTorch build has no MPS support (it exists only on Apple silicon Macs)"
        raise ResnetlabError(f"--device mps: Apple's MPS is not available here ({why}); use --device cpu or auto")
    if name not in DEVICES:
        raise ResnetlabError(f"--device {name!r} is not one of: {', '.join(DEVICES)}")
    return torch.device(name)


def cpu_has_bf16_flags() -> bool:
    """Whether this CPU reports AVX512-BF16 or AMX-BF16 (without them bf16 is emulated, always slower)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


@functools.lru_cache(maxsize=1)
def cpu_bf16_is_faster() -> bool:
    """Whether bf16 matrix products run at least 1.3x faster than fp32 ones here (measured once, about 0.1 s).

    The flags alone do not tell: a 2-core AMD EPYC with avx512_bf16 trained the seed's net 1.5x
    faster in bf16 (2026-11-26), while a 2-core Intel Xeon reporting avx512_bf16 ran bf16
    products at half the fp32 speed and trained 1.3x slower in bf16 (2026-11-28).
    """
    def best(dtype: torch.dtype) -> float:
        a, b = torch.randn(768, 768, dtype=dtype), torch.randn(768, 768, dtype=dtype)
        a @ b
        times = []
        for _ in range(3):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
        return min(times)

    return best(torch.float32) >= 1.3 * best(torch.bfloat16)


def cpu_has_native_bf16() -> bool:
    """Whether bf16 autocast pays off on this CPU: bf16 flags, and bf16 products measured faster than fp32.

    ``RESNETLAB_CPU_BF16=0`` makes every CPU answer no (``=1``: yes), so a machine with fast
    bf16 can stand in for one without (the test suite and benchmarks use it).
    """
    forced = os.environ.get("RESNETLAB_CPU_BF16", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return cpu_has_bf16_flags() and cpu_bf16_is_faster()


def cuda_has_fast_bf16(device: torch.device) -> bool:
    """Whether the CUDA card computes bf16 in hardware (Ampere and later), not by emulation.

    ``torch.cuda.is_bf16_supported()`` also answers yes for cards that only emulate bf16 (a T4,
    a V100), where fp16 is the fast half precision; ``including_emulation=False`` asks the real question.
    """
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # older PyTorch without the argument: compute capability 8.0 (Ampere) and later
        return torch.cuda.get_device_capability(device)[0] >= 8


@dataclass(frozen=True)
class Precision:
    """How a run computes: ``fp32``, ``bf16`` or ``fp16`` autocast over fp32 weights, or ``fp64`` throughout."""

    name: str

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The dtype autocast computes in (None: no autocast)."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the weights and of the model's input."""
        return torch.float64 if self.name == "fp64" else torch.float32

    @property
    def needs_scaler(self) -> bool:
        """fp16 gradients underflow without loss scaling (a GradScaler); bf16 has fp32's range and needs none."""
        return self.name == "fp16"

    def autocast(self, device: torch.device):
        """The autocast context of this precision on ``device`` (a no-op for fp32 and fp64)."""
        dtype = self.autocast_dtype
        return torch.autocast(device_type=device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def resolve_precision(name: str, device: torch.device) -> Precision:
    """``auto``: bf16 on CUDA cards with fast bf16, else fp16 there; bf16 on CPUs with native bf16, else fp32; fp32 on MPS.

    fp16 is refused on the CPU (no fast fp16 kernels; bf16 is the CPU's half precision) and
    fp64 off the CPU (it exists to verify results against float64 rounding, not for speed).
    """
    if name == "auto":
        if device.type == "cuda":
            return Precision("bf16" if cuda_has_fast_bf16(device) else "fp16")
        if device.type == "cpu" and cpu_has_native_bf16():
            return Precision("bf16")
        return Precision("fp32")
    if name == "fp16" and device.type == "cpu":
        raise ResnetlabError("--precision fp16 needs a GPU (CUDA or MPS); on the CPU use bf16, fp32 or auto")
    if name == "fp64" and device.type != "cpu":
        raise ResnetlabError(f"--precision fp64 runs on the CPU only (it is for checking results); use --device cpu, "
                             f"or fp32/bf16/fp16/auto on {device.type}")
    if name not in PRECISIONS:
        raise ResnetlabError(f"--precision {name!r} is not one of: {', '.join(PRECISIONS)}")
    return Precision(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure_backends(device: torch.device, deterministic: bool) -> None:
    """Pick fast kernels on CUDA (cuDNN autotuning, TF32), or deterministic ones when asked.

    ``deterministic`` makes PyTorch use deterministic algorithms; where an op has none on
    CUDA, PyTorch warns instead of failing (``warn_only``), so such a run is as repeatable as
    PyTorch allows there but not promised bit-exact. On CPU our training ops are repeatable
    with or without it, given the same machine and thread count.
    """
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    if device.type != "cuda":
        return
    if deterministic:
        # cuBLAS needs a fixed workspace to be repeatable; it must be set before its first use.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cuda.matmul.allow_tf32 = not deterministic
    torch.backends.cudnn.allow_tf32 = not deterministic
