"""How the loaders feed the model, chosen for the user: images resident on the device, or streamed from their map.

Data that fit comfortably, a quarter of the memory they would live in (the device's free
memory on CUDA; on the CPU the machine's RAM, or the memory limit of the process's cgroup
where that is lower), are held resident, as they always were: Fashion-MNIST, small folders.
Larger data are streamed: each batch gathered from the memory-mapped cache (``loader.py``),
so the run's memory does not grow with the folder. ``--feed resident`` or ``--feed stream``
forces either; both give the same batches.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

FEEDS = ("auto", "resident", "stream")
RESIDENT_SHARE = 4  # resident while the images take at most 1/4 of the memory: room for the model, batches, the rest


@dataclass(frozen=True)
class Feed:
    """The decision: ``stream`` or not, and why, in words for the run's first line."""

    stream: bool
    reason: str

    @property
    def name(self) -> str:
        """``stream`` or ``resident``."""
        return "stream" if self.stream else "resident"


def choose_feed(nbytes: int, device: torch.device, asked: str = "auto", *, memory: tuple[int, str] | None = None) -> Feed:
    """The feed for ``nbytes`` of images on ``device``: as ``asked``, or (``auto``) by :data:`RESIDENT_SHARE`.

    ``memory``: (bytes, what they are) instead of asking the machine (tests).
    """
    size = human_bytes(nbytes)
    if asked == "stream":
        return Feed(True, f"images streamed batch by batch ({size}; --feed stream)")
    if asked == "resident":
        return Feed(False, f"images resident {where(device)} ({size}; --feed resident)")
    available, what = memory if memory is not None else memory_for_data(device)
    if nbytes * RESIDENT_SHARE <= available:
        return Feed(False, f"images resident {where(device)} ({size}, under a quarter of {what})")
    return Feed(True, f"images streamed batch by batch ({size}, over a quarter of {what}; --feed resident holds them)")


def where(device: torch.device) -> str:
    """Where resident images live, in words."""
    return "in memory" if device.type in ("cpu", "mps") else f"on {device}"


def memory_for_data(device: torch.device) -> tuple[int, str]:
    """(bytes, their description) that resident images would share: a CUDA card's free memory, else the RAM this process may use."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free, f"the {human_bytes(free)} free on {device}"
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = cgroup_memory_limit()
    if limit is not None and limit < ram:
        return limit, f"this process's {human_bytes(limit)} memory limit (its cgroup)"
    return ram, f"the {human_bytes(ram)} of RAM"


def cgroup_memory_limit(proc_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> int | None:
    """The lowest memory limit of this process's cgroup and the cgroups above it (v2 or v1), or None if none is set."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2: one hierarchy
            base, name = Path(root), "memory.max"
        elif "memory" in controllers.split(","):
            base, name = Path(root) / "memory", "memory.limit_in_bytes"
        else:
            continue
        folder = base / path.lstrip("/")
        while True:
            limits.append(_read_limit(folder / name))
            if folder == base or base not in folder.parents:
                break
            folder = folder.parent
    found = [limit for limit in limits if limit is not None]
    return min(found) if found else None


def _read_limit(path: Path) -> int | None:
    """A cgroup's memory limit file: a number of bytes; None for ``max``, v1's "unlimited" (about 2^63), or no file."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text.isdigit() or int(text) >= 1 << 60:
        return None
    return int(text)


def human_bytes(count: float) -> str:
    """``count`` bytes in words: "43 MB", "5.5 GB" (powers of 1000)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if count >= 100 or unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")
