"""One optimisation step, and what it needs held together (the model, optimiser, schedule, EMA and guard).

A training step never waits for the device. Whether its loss and gradients are finite is
decided on the device, and a bad step changes nothing (weights, optimiser state, batch-norm
statistics, EMA, loss scale) through masks on the device, not through a branch on the host;
:class:`StepGuard` keeps the flags, and the run reads them only at check points (every step on
the CPU, where reading is free; every :data:`CHECK_EVERY` steps on a GPU, and at every save).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from itertools import chain
from typing import NamedTuple

import torch
from torch import nn

from ..config import RunConfig
from ..util.compat import (
    foreach_add_, foreach_copy_, foreach_mul_, foreach_norm, foreach_sub, loss_scale_tensors, skip_step_if,
)
from ..util.runtime import Precision
from .distributed import all_max

# Steps between reads of the guard's flags on an accelerator; on the CPU every step is read.
CHECK_EVERY = 50


def check_interval(device: torch.device) -> int:
    """How many steps may pass between reads of the guard's flags on ``device``."""
    return 1 if device.type == "cpu" else CHECK_EVERY


class Ema:
    """An exponential moving average of the weights and float buffers, evaluated in place of the model.

    ``module`` starts as a copy of the model and moves towards it by ``1 - decay`` per step; an
    update can be masked on the device (a step the guard rejected leaves the average as it was).
    Given the step's index ``t``, the decay is warmed up as timm's (``ModelEmaV3``, ``use_warmup``):
    ``min(decay, (1 + t) / (10 + t))``, so that early steps count and a short run's average is not
    held back by the random weights it started from (0.99 would keep 15% of them after 190 steps).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        floats = lambda m: [t for t in chain(m.parameters(), m.buffers()) if t.is_floating_point()]  # noqa: E731
        self._average, self._source = floats(self.module), floats(model)

    def decay_at(self, step: int | None) -> float:
        """The decay of step ``step`` (counted from 0; None: the full decay)."""
        return self.decay if step is None else min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, apply: torch.Tensor | None = None, step: int | None = None) -> None:
        """Move the average one step towards the model (``step``: its index, for the warm-up; None: the full decay);
        with ``apply`` (a bool on the device) only where it holds."""
        rate = 1 - self.decay_at(step)
        weight = torch.tensor(rate) if apply is None else apply.to(self._average[0].dtype) * rate
        delta = foreach_sub(self._source, self._average)
        foreach_mul_(delta, weight.to(self._average[0].device))
        foreach_add_(self._average, delta)


def gradient_norm(model: nn.Module) -> torch.Tensor:
    """The global L2 norm of ``model``'s gradients, computed on the device (no synchronisation)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(foreach_norm(grads)))


class GuardReading(NamedTuple):
    """What the guard's flags said at a check point."""

    halted: bool  # stop mode: a step was bad; nothing has been applied since (the run stops)
    first_bad: int  # the global step index of that bad step (-1: none)
    skipped: int  # skip mode: bad steps skipped since the last reading
    stop: bool  # under torchrun: some rank was asked to stop (a signal)


class StepGuard:
    """Flags on the device that keep a non-finite step from changing anything, read only at check points.

    Stop mode (the default): the first bad step halts the run on the device: it and every later
    step apply nothing, so at the next reading the state is exactly the one from before the bad
    step, which the run saves before it stops. Skip mode (``--skip-nonfinite``): each bad step
    applies nothing and is counted; the others apply as usual. Under torchrun the flags are
    agreed on by all ranks every step (one small all-reduce that the host does not wait for).
    """

    def __init__(self, device: torch.device, skip: bool, distributed: bool) -> None:
        self.skip, self.distributed, self.device = skip, distributed, device
        self.halted = torch.zeros((), dtype=torch.bool, device=device)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.skipped = torch.zeros((), dtype=torch.long, device=device)
        self.stop = torch.zeros((), dtype=torch.bool, device=device)

    def judge(self, bad: torch.Tensor, global_step: int, stop_requested: bool) -> torch.Tensor:
        """Record whether this step was ``bad``; return whether it may apply (a bool on the device)."""
        if self.distributed:
            # Every rank must take the same decision; a fill kernel brings the host's flag over without a copy.
            flags = torch.stack([bad.float(), torch.full((), float(stop_requested), device=self.device)])
            flags = all_max(flags) > 0
            bad = flags[0]
            self.stop |= flags[1]
        if self.skip:
            self.skipped += bad
            return ~bad
        self.first_bad = torch.where(bad & ~self.halted, global_step, self.first_bad)
        self.halted |= bad
        return ~self.halted

    def read(self) -> GuardReading:
        """Read the flags (the one wait for the device) and start counting skipped steps afresh."""
        halted, first_bad, skipped, stop = torch.stack(
            [self.halted.long(), self.first_bad, self.skipped, self.stop.long()]).tolist()
        self.skipped.zero_()
        return GuardReading(bool(halted), int(first_bad), int(skipped), bool(stop))


class StepOutput(NamedTuple):
    """A step's detached loss and logits, and whether it was applied (a bool on the device)."""

    loss: torch.Tensor
    logits: torch.Tensor
    applied: torch.Tensor


def _masked_copy_(targets: list[torch.Tensor], sources: list[torch.Tensor], keep: torch.Tensor) -> None:
    """``target = target if keep else source`` for each pair, on the device (no NaN leaks from a discarded target).

    One select per pair, written in place: for a few tensors (the loss scaler's two); many go in a :class:`Snapshot`.
    """
    for target, source in zip(targets, sources):
        torch.where(keep, target, source, out=target)


class Snapshot:
    """A copy of some tensors taken before a step, put back on the device unless a mask says to keep the new values.

    The copy is kept flat, one tensor per dtype and device, so that taking it and putting it
    back cost a constant number of operations however many tensors there are (on a GPU a
    ResNet-18's 60 batch-norm buffers were 120 small kernels a step as one select and one copy
    each): per dtype, taking is one fused copy in (``compat.foreach_copy_``), and putting back
    is one fused copy of the current values into a flat scratch tensor, one select over it
    (``torch.where``: a value it discards, NaN or inf, never reaches the result, as it would
    through ``keep * new + (1 - keep) * old``) and one fused copy out. Grouping by dtype also
    keeps each fused copy on PyTorch's multi-tensor kernel, which takes one dtype per list.
    The tensors must stay the same objects (loading a state dict copies into them in place).
    """

    def __init__(self, tensors: list[torch.Tensor]) -> None:
        groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
        for t in tensors:
            groups.setdefault((t.device, t.dtype), []).append(t)
        # Per group: its tensors, the flat copy and the flat scratch, and views of both shaped like the tensors.
        self._groups = []
        for (device, dtype), members in groups.items():
            saved = torch.empty(sum(t.numel() for t in members), dtype=dtype, device=device)
            scratch = torch.empty_like(saved)
            self._groups.append((members, saved, _views(saved, members), scratch, _views(scratch, members)))

    @torch.no_grad()
    def take(self) -> None:
        """Copy the tensors' current values (one fused copy per dtype)."""
        for members, _, saved_views, _, _ in self._groups:
            foreach_copy_(saved_views, members)

    @torch.no_grad()
    def put_back(self, keep: torch.Tensor) -> None:
        """Where ``keep`` (a bool on the device) is false, give the tensors the values taken; else leave them (bit for bit)."""
        for members, saved, _, scratch, scratch_views in self._groups:
            foreach_copy_(scratch_views, members)
            torch.where(keep, scratch, saved, out=scratch)
            foreach_copy_(members, scratch_views)


def _views(flat: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    """Consecutive views of ``flat`` shaped like the tensors of ``like``."""
    return [part.view(t.shape) for part, t in zip(flat.split([t.numel() for t in like]), like)]


def _zero_momentum(optimizer: torch.optim.Optimizer) -> None:
    """Give SGD its momentum buffers as zeros before the first step.

    Mathematically the same as PyTorch's first step (buffer = gradient), and needed because a
    fused step that is skipped on the device (``found_inf``) would otherwise leave the buffers
    it allocated uninitialised for the next step.
    """
    if not isinstance(optimizer, torch.optim.SGD):
        return
    for group in optimizer.param_groups:
        if group["momentum"] == 0:
            continue
        for p in group["params"]:
            state = optimizer.state[p]
            if state.get("momentum_buffer") is None:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` can skip a step on the device (PyTorch's fused kernels take a ``found_inf`` flag)."""
    return all(group.get("fused") for group in optimizer.param_groups)


@dataclass
class Training:
    """What one optimisation step needs, held together: the model, its optimiser, schedule, EMA and guard."""

    config: RunConfig
    model: nn.Module
    step_model: nn.Module  # the model, or its torch.compile / DDP wrapper, called in training steps
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    criterion: nn.Module
    ema: Ema | None
    device: torch.device
    precision: Precision
    distributed: bool = False  # under torchrun: ranks agree on skipping and stopping every step

    def __post_init__(self) -> None:
        # fp16 needs loss scaling; the scaler's state lives on the device and travels in train_state.pt.
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision.needs_scaler else None
        self.guard = StepGuard(self.device, self.config.skip_nonfinite, self.distributed)
        _zero_momentum(self.optimizer)
        # The forward pass of a bad batch has already moved the batch-norm running statistics
        # (possibly to inf) by the time its loss is judged; a copy taken before each step undoes it.
        self._buffers = Snapshot(list(self.model.buffers()))

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are evaluated and saved: the EMA when there is one, else the model."""
        return self.ema.module if self.ema is not None else self.model

    def train_step(self, x: torch.Tensor, y: torch.Tensor, global_step: int, stop_requested: bool = False) -> StepOutput:
        """One optimisation step on a batch; never waits for the device.

        If the loss (or, without fp16 loss scaling, the gradient norm) is not finite, the step
        applies nothing: no update, no EMA step, batch-norm statistics and loss scale put back.
        The schedule always advances; in stop mode a halted run rewinds it (:meth:`rewind`).
        A gradient overflow under fp16 is the loss scaler's business: the update is skipped and
        the scale lowered, as PyTorch's GradScaler does, and the step counts as good.
        """
        self._buffers.take()
        scaler = self.scaler
        with self.precision.autocast(self.device):
            logits = self.step_model(x)
            loss = self.criterion(logits.to(self.precision.dtype), y)
        self.optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaled = scaler.scale(loss)  # creates the scale on its first call
            scale_before = [t.clone() for t in loss_scale_tensors(scaler)]
            scaled.backward()
            scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if self.config.grad_clip:  # 0: no clipping
            norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        else:
            norm = gradient_norm(self.model)
        finite_norm = torch.isfinite(norm)
        bad = ~torch.isfinite(loss) if scaler is not None else ~(torch.isfinite(loss) & finite_norm)
        applied = self.guard.judge(bad, global_step, stop_requested)
        skip_update = ~applied if scaler is None else ~(applied & finite_norm)
        if skips_on_device(self.optimizer):
            skip_step_if(self.optimizer, skip_update.float())
            self.optimizer.step()
        elif not bool(skip_update):  # an optimiser without fused kernels: here the host must look
            self.optimizer.step()
        self.scheduler.step()
        if scaler is not None:
            scaler.update()
            _masked_copy_(loss_scale_tensors(scaler), scale_before, applied)
        self._buffers.put_back(applied)
        if self.ema is not None:  # after the buffers are put back: a NaN times a zero weight is still NaN
            self.ema.update(applied, global_step)
        return StepOutput(loss.detach(), logits.detach(), applied)

    def rewind(self, global_step: int) -> None:
        """Set the schedule back to ``global_step`` (a halted run, whose later steps applied nothing)."""
        self.scheduler.last_epoch = global_step - 1
        self.scheduler.step()
