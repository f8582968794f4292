"""Batch-norm statistics recomputed from training images before an evaluation ("precise BN").

In evaluation a batch norm uses running averages of the batch statistics, updated with momentum
0.1 while the weights move. Early in training, and at high learning rates, the network changes
faster than those averages follow: training accuracy climbs while the same weights evaluate
near chance (measured on 512 Fashion-MNIST images after 32 steps at lr 0.05: train accuracy
0.68, evaluation 0.14 with the running averages, 0.68 with recomputed statistics). Recomputing
them for the weights as they are, from a forward pass over some training images, removes the
lag; it costs one forward pass over those images (about 1% of a ``cpu`` preset epoch).
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from ..util.compat import BatchNormBase
from ..util.runtime import Precision
from .distributed import all_sum


def batch_norms(model: nn.Module) -> list[BatchNormBase]:
    """The batch-norm layers of ``model`` that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, BatchNormBase) and m.track_running_stats]


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    *,
    device: torch.device,
    precision: Precision,
    average_over_ranks: bool = False,
) -> None:
    """Set every batch norm's running mean and variance to the average over ``batches`` of their batch statistics.

    PyTorch's ``torch.optim.swa_utils.update_bn`` does it (the model forward in training mode,
    batch norms averaging the batches with equal weight, their momentum and the model's mode
    given back), here in the run's precision. Under torchrun each rank sees its share of each
    batch: with synchronised batch norm the statistics are the global batch's already;
    otherwise ``average_over_ranks`` averages them.
    """
    with precision.autocast(device):
        update_bn(batches, model)
    if average_over_ranks:
        for m in batch_norms(model):
            world = all_sum(torch.ones((), device=m.running_mean.device))
            m.running_mean.copy_(all_sum(m.running_mean.clone()) / world)
            m.running_var.copy_(all_sum(m.running_var.clone()) / world)
