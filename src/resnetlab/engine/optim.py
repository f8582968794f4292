"""The optimiser and the learning-rate schedule of a run."""

from __future__ import annotations

import math
from typing import Callable

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


MEASURE_STEPS = 20  # a time-budgeted run measures its speed over its first steps, at most this many


def measure_steps(config: TrainConfig, steps_per_epoch: int) -> int:
    """The global step at which a time-budgeted run fixes its number of steps (a quarter of the most it may do, at most 20)."""
    return min(MEASURE_STEPS, max(1, config.epochs * steps_per_epoch // 4))


def total_steps(config: TrainConfig, steps_per_epoch: int) -> int:
    """The steps the run takes: what a time budget bought, else ``epochs`` full epochs."""
    return config.max_steps or config.epochs * steps_per_epoch


def lr_factor(step: int, config: TrainConfig, steps_per_epoch: int) -> float:
    """The schedule's multiplier of the peak lr at optimizer step ``step`` (0-based).

    The schedule spans :func:`total_steps`. A time-budgeted run learns its total only after its
    first :func:`measure_steps` steps; those follow the schedule of the most it may do
    (``epochs``), the rest the one of the steps it bought, so a run repeated from its
    ``config.json`` (which holds that figure) takes the same steps. The presets' warm-up covers
    the measured steps, where the two schedules agree anyway.
    """
    ceiling = config.epochs * steps_per_epoch
    measuring = bool(config.time_budget) and step < measure_steps(config, steps_per_epoch)
    total = ceiling if measuring else total_steps(config, steps_per_epoch)
    warmup = round(config.warmup_epochs * steps_per_epoch)
    if not measuring and config.max_steps:
        warmup = min(warmup, total // 2)  # a budget that bought little still gets a decay
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
    config: TrainConfig | Callable[[], TrainConfig], optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-step scheduler following :func:`lr_factor`; its state dict is a step count only.

    ``config`` may be a function returning the run's current config, so that a time budget's
    figure, fixed after the scheduler is made, takes effect.
    """
    current = config if callable(config) else (lambda: config)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, current(), steps_per_epoch))
