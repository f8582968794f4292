"""One optimisation step and one evaluation pass, and what they need held together."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..data import DeviceLoader
from .config import TrainConfig
from .distributed import all_max


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on ``device`` when ``bf16``, else a no-op context."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)


def class_scores(model: nn.Module, x: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """Float32 logits of ``model`` for a batch; with ``tta``, the log of the softmax averaged with the mirror image's."""
    logits = model(x).float()
    if not tta:
        return logits
    probs = (logits.softmax(1) + model(x.flip(3)).float().softmax(1)) / 2
    return probs.clamp_min(1e-12).log()


@torch.no_grad()
def evaluate(model: nn.Module, loader: DeviceLoader, *, bf16: bool = False, tta: bool = False) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``model`` over every example of ``loader``.

    With ``tta``, the softmax of each image and of its mirror image are averaged.
    Returns the sums as well (``correct``, ``loss_sum``, ``count``) so ranks can add them up.
    """
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=loader.device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=loader.device)
    count = 0
    for x, y in loader.batches():
        if len(y) == 0:  # under torchrun a rank's share of the last batch can be empty
            continue
        with autocast(loader.device, bf16):
            logits = class_scores(model, x, tta)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
        count += len(y)
    model.train(was_training)
    c, s = int(correct), float(loss_sum)
    return {"acc": c / max(count, 1), "loss": s / max(count, 1), "correct": c, "loss_sum": s, "count": count}


class Ema:
    """An exponential moving average of the weights (buffers copied), evaluated in place of the model."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)

    def update(self, model: nn.Module) -> None:
        """Move the average one step towards ``model``'s current weights."""
        self.averaged.update_parameters(model)

    @property
    def module(self) -> nn.Module:
        """The averaged model."""
        return self.averaged.module


def gradient_norm(model: nn.Module) -> torch.Tensor:
    """The global L2 norm of ``model``'s gradients, computed on the device (no synchronisation)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


@dataclass
class Training:
    """What one optimisation step needs, held together: the model, its optimiser, schedule and EMA."""

    config: TrainConfig
    model: nn.Module
    step_model: nn.Module  # the model, or its torch.compile wrapper, called in training steps
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    criterion: nn.Module
    ema: Ema | None
    device: torch.device
    bf16: bool
    distributed: bool = False  # under torchrun: ranks agree on skipping and stopping (one all-reduce per step)
    stop_requested: Callable[[], bool] = lambda: False  # whether this process was asked to stop (a signal)

    def __post_init__(self) -> None:
        self.stop_agreed = False  # after each step: whether any rank asked to stop (all ranks then stop together)
        # The forward pass of a bad batch has already moved the batch-norm running statistics
        # (possibly to inf) by the time its loss is seen; a copy taken before each step undoes it.
        self._buffers = list(self.model.buffers())
        self._buffers_before = [b.detach().clone() for b in self._buffers]

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are evaluated and saved: the EMA when there is one, else the model."""
        return self.ema.module if self.ema is not None else self.model

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """One optimisation step on a batch; returns the (detached) loss and logits.

        If the loss or the gradients are not finite, nothing is changed (no update, no
        schedule step, no EMA step, batch-norm statistics put back) and ``None`` is returned: the caller stops the run or
        calls :meth:`skip_step`. The check reads one flag from the device per step, which is
        free on CPU and costs a short pipeline stall on CUDA; it is what lets a run keep its
        last good state instead of saving NaN weights.
        """
        if self._buffers:
            torch._foreach_copy_(self._buffers_before, self._buffers)
        with autocast(self.device, self.bf16):
            logits = self.step_model(x)
            loss = self.criterion(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip is not None:
            norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        else:
            norm = gradient_norm(self.model)
        bad = ~(torch.isfinite(loss) & torch.isfinite(norm))
        if self.distributed:
            # Every rank must take the same branch, or the next collective hangs.
            flags = all_max(torch.stack([bad.float(), torch.tensor(float(self.stop_requested()), device=bad.device)]))
            bad_any, stop_any = flags.tolist()
            skip, self.stop_agreed = bad_any > 0, stop_any > 0
        else:
            skip, self.stop_agreed = bool(bad), self.stop_requested()
        if skip:
            self.optimizer.zero_grad(set_to_none=True)
            if self._buffers:
                torch._foreach_copy_(self._buffers, self._buffers_before)
            return None
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return loss.detach(), logits.detach()

    def skip_step(self) -> None:
        """Pass over a batch whose loss was not finite: the schedule advances, the weights do not."""
        self.scheduler.step()
