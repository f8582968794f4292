"""The optimiser and the learning-rate schedule of a run."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import TrainConfig


def fused_supported(device: torch.device) -> bool:
    """Whether PyTorch has fused optimiser kernels for ``device`` (they can skip a step on the device)."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:  # an older PyTorch: CUDA had them first
        return device.type == "cuda"
    return device.type in _get_fused_kernels_supported_devices()


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD or AdamW; weight decay applies to conv and linear weights, not to norms and biases.

    The fused implementation where the device has one: it takes the whole update in one kernel
    and, given a ``found_inf`` flag, skips it on the device, which the step guard relies on.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]  # not the frozen backbone's
    decay = [p for p in trainable if p.ndim > 1]
    no_decay = [p for p in trainable if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = fused_supported(trainable[0].device) if trainable else False
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, fused=fused or None)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov, fused=fused or None)


def lr_factor(step: int, config: TrainConfig, steps_per_epoch: int) -> float:
    """The schedule's multiplier of the peak lr at optimizer step ``step`` (0-based)."""
    total = config.epochs * steps_per_epoch
    warmup = round(config.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    if config.schedule == "constant":
        return 1.0
    if config.schedule == "step":
        return config.step_gamma ** (step // (config.step_epochs * steps_per_epoch))
    progress = (step - warmup) / max(1, total - warmup)
    if config.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return max(0.0, 1.0 - progress)  # onecycle: linear warm-up, then linear decay to zero


def make_scheduler(
    config: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-step scheduler following :func:`lr_factor`; its state dict is a step count only."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config, steps_per_epoch))
