"""Scoring a model on batches: float32 class scores (with flip test-time augmentation), accuracy and loss over a
split, and a split's report (per-class figures, confusion matrix, the most confident mistakes).

Shared by training (validation and test after each epoch, TensorBoard's pictures) and ``resnetlab eval``.
"""

from __future__ import annotations

from typing import Any

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


@torch.no_grad()
def split_scores(model: nn.Module, loader: DeviceLoader, *, precision: Precision = Precision("fp32"),
                 tta: bool = False) -> torch.Tensor:
    """Float32 logits [N, classes] of ``model`` (on the CPU) for every example ``loader`` yields, in its order."""
    was_training = model.training
    model.eval()
    scores = []
    for x, _ in loader.batches():
        with precision.autocast(loader.device):
            scores.append(class_scores(model, x, tta).cpu())
    model.train(was_training)
    return torch.cat(scores)


def classification_report(labels: torch.Tensor, preds: torch.Tensor, class_names: list[str]) -> dict[str, Any]:
    """Confusion matrix (rows true, columns predicted), per-class precision, recall, F1, support, and macro means."""
    k = len(class_names)
    confusion = torch.bincount(labels * k + preds, minlength=k * k).view(k, k)
    tp = confusion.diag().double()
    predicted, actual = confusion.sum(0).double(), confusion.sum(1).double()
    precision = torch.where(predicted > 0, tp / predicted.clamp_min(1), torch.zeros_like(tp))
    recall = torch.where(actual > 0, tp / actual.clamp_min(1), torch.zeros_like(tp))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-12), torch.zeros_like(tp))
    per_class = [
        {"class": name, "precision": precision[i].item(), "recall": recall[i].item(), "f1": f1[i].item(),
         "support": int(actual[i])}
        for i, name in enumerate(class_names)
    ]
    macro = {"precision": precision.mean().item(), "recall": recall.mean().item(), "f1": f1.mean().item(),
             "support": int(actual.sum())}
    return {"per_class": per_class, "macro": macro, "confusion": confusion.tolist()}


def score_report(logits: torch.Tensor, labels: torch.Tensor, class_names: list[str], *, mistakes: int = 32) -> dict[str, Any]:
    """count, correct, accuracy, loss, the per-class table and confusion matrix, and the ``mistakes`` most confident
    errors (index, true and predicted class, probability), from float logits [N, classes] and labels [N]."""
    confidence, preds = logits.softmax(1).max(1)
    correct = int((preds == labels).sum())
    report: dict[str, Any] = {"count": len(labels), "correct": correct, "accuracy": correct / max(len(labels), 1),
                              "loss": F.cross_entropy(logits, labels).item(),
                              **classification_report(labels, preds, class_names)}
    wrong = (preds != labels).nonzero().flatten()
    worst = wrong[confidence[wrong].argsort(descending=True)][:mistakes]
    report["mistakes"] = [
        {"index": int(i), "true": class_names[labels[i]], "predicted": class_names[preds[i]], "prob": confidence[i].item()}
        for i in worst
    ]
    return report


def mistake_titles(report: dict[str, Any]) -> list[str]:
    """A title per mistake of ``report``: its true class, the class chosen and with what probability."""
    return [f"{m['true']}\n-> {m['predicted']} ({m['prob']:.2f})" for m in report["mistakes"]]
