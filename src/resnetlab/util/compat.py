"""PyTorch's private corners, in one place: what resnetlab uses that PyTorch does not promise to keep.

Each is named for what we need of it, says why we need it, and was checked on PyTorch 2.13.0
(this project's pinned CPU build; the GPU machine's CUDA build of 2026-11-28 ran the same code).
``tests/test_compat.py`` exercises each one, so an upgrade that moves a corner fails loudly there
instead of changing behaviour silently. Nothing else in the package touches a private PyTorch
name or matches the text of a PyTorch error.
"""

from __future__ import annotations

import pickle

import torch
import torch.distributed as dist
from torch import nn

# --- multi-tensor kernels (torch._foreach_*): one launch for a list of tensors ------------------
# Private by name, public in use (the optimisers are built on them). Used for the step guard's
# snapshot of the batch-norm buffers, the gradient norm and the EMA: a constant number of kernels
# per step however many tensors a model has.
foreach_copy_ = torch._foreach_copy_
foreach_norm = torch._foreach_norm
foreach_sub = torch._foreach_sub
foreach_mul_ = torch._foreach_mul_
foreach_add_ = torch._foreach_add_


def fused_optimizer_devices() -> list[str]:
    """The device types PyTorch has fused optimiser kernels for (they can skip a step on the device, given a flag).

    ``torch.utils._foreach_utils._get_fused_kernels_supported_devices`` (2.2 on); before it, CUDA only.
    """
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:
        return ["cuda"]
    return list(_get_fused_kernels_supported_devices())


def skip_step_if(optimizer: torch.optim.Optimizer, flag: torch.Tensor) -> None:
    """Make a fused optimiser's next ``step()`` skip the update where ``flag`` (a float on the device) is 1.

    The fused kernels read ``optimizer.found_inf``, the attribute GradScaler sets for them; we set
    it ourselves so that a non-finite step is skipped on the device, without the host looking.
    """
    optimizer.found_inf = flag  # type: ignore[attr-defined]


def loss_scale_tensors(scaler: torch.amp.GradScaler) -> list[torch.Tensor]:
    """The loss scaler's state on the device, the tensors themselves: its scale and its growth counter.

    GradScaler keeps them as ``_scale`` and ``_growth_tracker`` (created by its first ``scale()``);
    the step guard copies them before a step and puts them back when the step is rejected.
    """
    return [scaler._scale, scaler._growth_tracker]  # type: ignore[list-item]


# Every batch norm (1d, 2d, 3d, SyncBatchNorm, ours) derives from this private base class; it is how PyTorch's own
# utilities (torch.optim.swa_utils.update_bn) find them.
BatchNormBase = nn.modules.batchnorm._BatchNorm


def compiled_original(model: nn.Module) -> nn.Module | None:
    """The module inside a ``torch.compile`` wrapper (its ``_orig_mod``), or None for a plain module."""
    return getattr(model, "_orig_mod", None)


# The prefixes that wrappers put before the keys of a state dict: DataParallel/DDP's and torch.compile's.
WRAPPER_KEY_PREFIXES = ("module.", "_orig_mod.")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says the device (CUDA, MPS) or the CPU allocator ran out of memory.

    CUDA raises its own type; MPS and the CPU raise a RuntimeError whose text is all there is.
    """
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    message = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in message or "can't allocate memory" in message)


# What gloo's and NCCL's errors say when a peer died or stopped answering (they raise RuntimeError).
_COMM_FAILURE_WORDS = ("gloo", "nccl", "connection", "timed out", "timeout", "socket", "broken pipe", "peer")


def is_comm_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective failing because another process died or stopped answering."""
    dist_error = getattr(dist, "DistError", None)
    if dist_error is not None and isinstance(exc, dist_error):
        return True
    return isinstance(exc, RuntimeError) and any(word in str(exc).lower() for word in _COMM_FAILURE_WORDS)


def refused_by_weights_only(exc: pickle.UnpicklingError) -> bool:
    """Whether ``torch.load(weights_only=True)`` refused a file for holding Python objects (not a broken pickle).

    The weights-only unpickler says so only in its message ("Weights only load failed ...
    Unsupported global: ...").
    """
    text = str(exc).lower()
    return "weights only" in text or "unsupported global" in text
