"""What every benchmark prints first: the date, the machine and the software versions."""

from __future__ import annotations

import datetime
import os
import platform

import torch

# The instruction-set flags that decide the CPU's speed here (bf16 autocast is native only with the last two).
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16")


def cpu_flags() -> list[str]:
    """Which of :data:`SPEED_FLAGS` this CPU has (from /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return []
    return [flag for flag in SPEED_FLAGS if flag in flags]


def describe(device: str) -> str:
    """A few lines naming the date, CPU (model and speed flags) or GPU, core count and versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    forced = os.environ.get("RESNETLAB_CPU_BF16")
    # Set, these make an AVX-512 machine run as an AVX2-only one (a stand-in for the slow CPU kind).
    limits = [f"{name}={os.environ[name]}" for name in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
              if name in os.environ]
    lines = [
        f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"cpu: {cpu} [{' '.join(cpu_flags()) or 'no avx2'}], {os.cpu_count()} cores visible, torch threads {torch.get_num_threads()}"
        + (f", RESNETLAB_CPU_BF16={forced}" if forced else ""),
        f"torch CPU kernels: {torch.backends.cpu.get_cpu_capability()}" + (f" ({', '.join(limits)})" if limits else ""),
    ]
    if device.startswith("cuda") and torch.cuda.is_available():
        lines.append(f"gpu: {torch.cuda.get_device_name(0)}")
    lines.append(f"python {platform.python_version()}, torch {torch.__version__}, device {device}")
    return "\n".join(lines)
