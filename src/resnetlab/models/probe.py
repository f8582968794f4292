"""Running a network once on blank images without changing it: the caller's own modules (``train(model=net)``) and lazy layers.

:func:`blank_batch` makes zeros in the module's own dtype and on its device; :func:`evaluating`
runs a block in eval mode and puts every submodule's mode back as it was (``module.train(was)``
would set them all alike, and undo a batch norm the caller froze).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import nn


def blank_batch(module: nn.Module, shape: Sequence[int]) -> torch.Tensor:
    """Zeros of ``shape`` in the dtype and on the device of ``module``'s first floating parameter (float32 on the CPU if none)."""
    first = next((p for p in module.parameters() if p.is_floating_point()), None)
    if first is None:
        return torch.zeros(*shape)
    return torch.zeros(*shape, device=first.device, dtype=first.dtype)


@contextlib.contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode for the block; each submodule's own mode is restored afterwards."""
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes.items():
            m.training = training
