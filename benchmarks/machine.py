"""What every benchmark prints first: the date, the machine and the software versions."""

from __future__ import annotations

import datetime
import os
import platform

import torch


def describe(device: str) -> str:
    """A few lines naming the date, CPU or GPU, core count and versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    lines = [
        f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"cpu: {cpu}, {os.cpu_count()} cores visible, torch threads {torch.get_num_threads()}",
    ]
    if device.startswith("cuda") and torch.cuda.is_available():
        lines.append(f"gpu: {torch.cuda.get_device_name(0)}")
    lines.append(f"python {platform.python_version()}, torch {torch.__version__}, device {device}")
    return "\n".join(lines)
