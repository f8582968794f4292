"""Running under torchrun: the process group, DDP, synchronised batch norm and the few collectives a run needs.

``torchrun --nproc_per_node N -m resnetlab train ...`` starts N processes with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` set; the same command without torchrun is one process and
none of this is used. NCCL joins GPUs, gloo joins CPUs. Every collective waits at most
``--dist-timeout`` seconds, so a rank that dies makes the others fail instead of hanging.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..errors import LostContactError, ResnetlabError, first_line


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: rank, number of processes, local rank (its GPU on the node)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    enabled: bool = False  # whether this process is part of a process group (started by torchrun)

    @classmethod
    def join(cls, device_type: str, timeout_s: int) -> "Dist":
        """Join the process group torchrun set up (see :func:`init_distributed`); one process: nothing to join."""
        return init_distributed(device_type, timeout_s)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that prints and writes files."""
        return self.rank == 0

    def any(self, flag: bool, device: torch.device) -> bool:
        """``flag`` or'ed over all ranks, so that all take the same branch (one process: ``flag``)."""
        if not self.enabled:
            return flag
        return all_max(torch.tensor([float(flag)], device=device)).item() > 0

    def sum_(self, values: torch.Tensor) -> torch.Tensor:
        """Sum ``values`` over all ranks, in place (one process: unchanged)."""
        return all_sum(values) if self.enabled else values

    def sum_scores(self, metrics: dict[str, float], device: torch.device) -> dict[str, float]:
        """``scoring.evaluate``'s result for this rank's share -> the whole split's, summed exactly over ranks."""
        if not self.enabled:
            return metrics
        sums = self.sum_(torch.tensor([metrics["correct"], metrics["loss_sum"], metrics["count"]],
                                      dtype=torch.float64, device=device)).tolist()
        correct, loss_sum, count = int(sums[0]), sums[1], int(sums[2])
        return {"acc": correct / max(count, 1), "loss": loss_sum / max(count, 1), "correct": correct,
                "loss_sum": loss_sum, "count": count}

    def sums_on_main(self, *sums: torch.Tensor) -> None:
        """Running sums (device scalars) of all ranks added up on rank 0 and zeroed elsewhere, in place."""
        if not self.enabled:
            return
        total = self.sum_(torch.stack([value.double() for value in sums]))
        for value, summed in zip(sums, total):
            value.copy_(summed if self.is_main else torch.zeros_like(summed))

    def broadcast_text(self, text: str | None) -> str:
        """Rank 0's ``text`` on every rank (for the run folder rank 0 chose)."""
        if not self.enabled:
            return text or ""
        box = [text]
        dist.broadcast_object_list(box, src=0)
        return box[0] or ""

    def barrier(self) -> None:
        """Wait for all ranks (a rank tearing down early can abort its peers)."""
        if self.enabled:
            dist.barrier()


def env_rank() -> int:
    """This process's rank as torchrun set it (0 without torchrun), before the process group exists."""
    return int(os.environ.get("RANK", "0"))


def launched_by_torchrun() -> bool:
    """Whether torchrun (even with one process), or another launcher setting WORLD_SIZE > 1, started this process."""
    return "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device_type: str, timeout_s: int) -> Dist:
    """Join the process group torchrun set up (NCCL on CUDA, gloo on CPU); one process: nothing to join."""
    if not launched_by_torchrun():
        return Dist()
    if not dist.is_available():
        raise ResnetlabError("this PyTorch build has no torch.distributed; run without torchrun")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ResnetlabError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) here; "
                "lower --nproc_per_node to the number of GPUs"
            )
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if device_type == "cuda" else "gloo",
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    return Dist(rank=rank, world_size=world, local_rank=local_rank, enabled=True)


def lost_contact(exc: BaseException, rank: int, state_path, run_dir) -> LostContactError:
    """The one line for a rank whose collective failed: the other processes died or stopped answering."""
    return LostContactError(
        f"rank {rank} lost contact with the other processes ({first_line(exc)[:200]}); the last saved state is "
        f"{state_path}; continue with: torchrun ... -m resnetlab train --resume {run_dir}"
    )


def shutdown() -> None:
    """Leave the process group (if joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_max(values: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum over all ranks (in place; one process: unchanged)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values


def all_sum(values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over all ranks (in place; one process: unchanged)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks, differentiable: every rank's output depends on every rank's input, so the
    gradient flowing back to one rank's input is the sum of the gradients at all ranks' outputs.

    PyTorch's own, ``torch.distributed.nn.functional.all_reduce``, is deprecated in 2.13 (a
    FutureWarning on every call: per batch norm, per step) in favour of one in a module PyTorch
    keeps private (its functional collectives); these ten lines of public API are steadier.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        dist.all_reduce(y, op=dist.ReduceOp.SUM)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """Batch norm with the statistics of the global batch over all ranks, on any device (gloo on CPU too).

    PyTorch's SyncBatchNorm runs only on GPUs; this is the same computation written with
    differentiable all-reduces: the per-channel count and sum give the mean, then the summed
    squared deviations give the (biased) variance, as one process would compute over the whole
    batch. Running statistics and parameters keep BatchNorm2d's names and meaning.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        all_reduce = _AllReduceSum.apply
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x  # statistics in fp32 at least
        channels = x.shape[1]
        count = torch.full((1,), xf.numel() / channels, device=x.device, dtype=xf.dtype)
        totals = all_reduce(torch.cat([xf.sum((0, 2, 3)), count]))
        n = totals[-1]
        mean = totals[:channels] / n
        centred = xf - mean.view(1, -1, 1, 1)
        var = all_reduce(centred.pow(2).sum((0, 2, 3))) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                self.running_var.mul_(1 - factor).add_(var.detach() * (n / (n - 1)), alpha=factor)
        y = centred * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y.to(x.dtype)


def convert_sync_batchnorm(model: nn.Module, device_type: str) -> nn.Module:
    """Batch norm over the global batch: PyTorch's SyncBatchNorm on CUDA, :class:`GlobalBatchNorm2d` elsewhere."""
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            like = child.running_mean if child.running_mean is not None else child.weight
            replacement = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                            child.track_running_stats, device=like.device, dtype=like.dtype)
            replacement.load_state_dict(child.state_dict())
            setattr(model, name, replacement)
        else:
            convert_sync_batchnorm(child, device_type)
    return model


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around ``model`` (one device per process)."""
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
