"""Scoring a model on batches: float32 class scores (with flip test-time augmentation) and accuracy and loss over a split.

Shared by training (validation and test after each epoch) and ``resnetlab eval``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .data import DeviceLoader
from .util.runtime import Precision


def class_scores(model: nn.Module, x: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """Float32 logits of ``model`` for a batch; with ``tta``, the log of the softmax averaged with the mirror image's."""
    logits = model(x).float()
    if not tta:
        return logits
    probs = (logits.softmax(1) + model(x.flip(3)).float().softmax(1)) / 2
    return probs.clamp_min(1e-12).log()


@torch.no_grad()
def evaluate(model: nn.Module, loader: DeviceLoader, *, precision: Precision = Precision("fp32"),
             tta: bool = False) -> dict[str, float]:
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
        with precision.autocast(loader.device):
            logits = class_scores(model, x, tta)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
        count += len(y)
    model.train(was_training)
    c, s = int(correct), float(loss_sum)
    return {"acc": c / max(count, 1), "loss": s / max(count, 1), "correct": c, "loss_sum": s, "count": count}
