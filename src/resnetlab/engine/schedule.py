"""The optimiser and the learning-rate schedule of a run (the schedule follows the time budget's plan)."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..config import RunConfig
from ..models.transfer import head_name
from ..util.compat import fused_optimizer_devices


def fused_supported(device: torch.device) -> bool:
    """Whether PyTorch has fused optimiser kernels for ``device`` (they can skip a step on the device)."""
    return device.type in fused_optimizer_devices()


def make_optimizer(config: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD or AdamW; weight decay applies to conv and linear weights, not to norms and biases.

    With ``backbone_lr_scale`` below 1 the backbone learns at that share of the rate and the
    classifier head at the full rate (discriminative rates, for fine-tuning trained weights); the
    schedule scales every group alike. The fused implementation where the device has one: it takes
    the whole update in one kernel and, given a ``found_inf`` flag, skips it on the device, which
    the step guard relies on.
    """
    head = head_name(model) + "." if config.backbone_lr_scale != 1.0 else None
    groups = []
    for part, scale in (("backbone", config.backbone_lr_scale), ("head", 1.0)) if head else (("all", 1.0),):
        params = [p for name, p in model.named_parameters() if p.requires_grad  # not the frozen backbone's
                  and (part == "all" or name.startswith(head) == (part == "head"))]
        groups += [{"params": [p for p in params if p.ndim > 1], "weight_decay": config.weight_decay, "lr": config.lr * scale},
                   {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, "lr": config.lr * scale}]
    trainable = [p for group in groups for p in group["params"]]
    fused = fused_supported(trainable[0].device) if trainable else False
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, fused=fused or None)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov, fused=fused or None)


# The schedules that decay to zero at the run's last step (and so follow the time budget's plan).
DECAYING = ("cosine", "onecycle")


def total_steps(config: RunConfig, steps_per_epoch: int, plan: Sequence[Sequence[int]] = ()) -> int:
    """The steps the run takes: the last time-budget decision's total, else ``epochs`` full epochs."""
    return plan[-1][1] if plan else config.epochs * steps_per_epoch


def lr_factor(step: int, config: RunConfig, steps_per_epoch: int, plan: Sequence[Sequence[int]] = ()) -> float:
    """The schedule's multiplier of the peak lr at optimizer step ``step`` (0-based).

    Without a time budget the schedule spans ``epochs`` full epochs. With one, ``plan`` holds
    the budget's decisions ``[global step, total steps]`` (``budget.py``); each applies from its
    step on. Before the first the schedule is the one of the most the run may do (``epochs``);
    at each decision the decay goes on from where it stands to zero at the new total. For the
    decaying schedules the first decision also fixes the warm-up: at most half the steps it
    bought (a budget that bought little still gets a decay), never ending before the decision's
    own step; a shortened warm-up keeps its slope and the decay starts from the height it
    reached (``constant`` and ``step`` keep their warm-up and peak). So the lr never jumps when a
    plan changes, and a run repeated with the same decisions takes the same steps.
    """
    decisions = [(int(at), int(total)) for at, total in plan if at <= step]
    planned = round(config.warmup_epochs * steps_per_epoch)
    warmup = planned
    if decisions and config.schedule in DECAYING:
        first_at, first_total = decisions[0]
        warmup = max(min(planned, first_total // 2), min(planned, first_at))
    peak = warmup / planned if planned else 1.0  # a shortened warm-up ends where it has risen to, at the same slope
    if step < warmup:
        return (step + 1) / planned
    if config.schedule == "constant":
        return peak
    if config.schedule == "step":
        return peak * config.step_gamma ** (step // (config.step_epochs * steps_per_epoch))
    progress = _progress(step, warmup, config.epochs * steps_per_epoch, decisions)
    if config.schedule == "cosine":
        return peak * 0.5 * (1.0 + math.cos(math.pi * progress))
    return peak * max(0.0, 1.0 - progress)  # onecycle: linear warm-up, then linear decay to zero


def _progress(step: int, warmup: int, ceiling: int, decisions: list[tuple[int, int]]) -> float:
    """How far the decay has gone at ``step`` (0 at the warm-up's end, 1 at the run's last step), piecewise linear.

    The decay runs on a line from (start, value) to (end, 1); each decision moves the start to
    its own step, at the value reached there, and the end to its new total.
    """
    start, value, end = warmup, 0.0, ceiling
    for at, total in decisions:
        if at > start:
            value = min(1.0, value + (1 - value) * (at - start) / max(1, end - start))
            start = at
        end = total
    return min(1.0, value + (1 - value) * (step - start) / max(1, end - start))


def make_scheduler(config: RunConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int,
                   plan: Sequence[Sequence[int]] = ()) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-step scheduler following :func:`lr_factor`; its state dict is a step count only.

    ``plan`` is the run's own list of time-budget decisions, read at every step, so decisions
    added during the run take effect (after :meth:`Training.rewind` sets the next step's lr).
    """
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config, steps_per_epoch, plan))
