"""A batch loader for data that lives on the model's device as one uint8 tensor.

No DataLoader, no workers, no per-sample Python: each batch is gathered, augmented (random crop
with padding, horizontal flip, random erasing), resized and normalised with whole-batch tensor
ops on the device where the model runs, CPU or CUDA alike.

All randomness is derived from ``(seed, epoch, step)``: the epoch's order from
``(seed, epoch)``, the augmentation of a global batch from ``(seed, epoch, step)``. It is drawn
with CPU generators and then moved, so the same seed gives the same batches on any device, a
resumed run needs only its step counter, and ranks under torchrun that each take a slice of a
global batch see what one process would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

from .imageset import ImageSet


def to_model_input(
    images: torch.Tensor,
    image_size: int | None,
    mean: torch.Tensor | None = None,
    std: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """uint8 images [N, C, H, W] -> float model input: scaled to [0, 1], resized, standardised.

    The one definition of the model's input, shared by training, evaluation, prediction and
    export checks: bilinear resizing to ``image_size`` squared (antialiased when shrinking),
    then ``(x - mean) / std`` per channel when ``mean`` and ``std`` ([1, C, 1, 1]) are given.
    ``dtype`` is float32, or float64 for a run that checks results against float64 rounding.
    """
    x = images.to(dtype).div_(255)
    if image_size is not None and tuple(x.shape[-2:]) != (image_size, image_size):
        x = F.interpolate(
            x, size=(image_size, image_size), mode="bilinear",
            align_corners=False, antialias=image_size < max(x.shape[-2:]),
        )
    if mean is not None:
        x = (x - mean) / std
    return x


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation; the defaults do nothing."""

    crop_padding: int = 0  # pad by this many pixels (zeros), then crop back at a random offset
    flip: bool = False  # mirror left-right with probability 1/2
    erase_prob: float = 0.0  # probability of erasing one random rectangle (random erasing)

    @property
    def active(self) -> bool:
        """Whether any augmentation is switched on."""
        return self.crop_padding > 0 or self.flip or self.erase_prob > 0


def mix_seed(*parts: int) -> int:
    """Combine integers (seed, epoch, step ...) into one 63-bit seed, deterministically."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = ((h ^ (p & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


def _generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(mix_seed(*parts))


def random_crop(images: torch.Tensor, padding: int, gen: torch.Generator) -> torch.Tensor:
    """Zero-pad each image by ``padding`` and crop it back to its size at a random offset."""
    b, c, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=gen).to(images.device)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=gen).to(images.device)
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, None, :]
    batch = torch.arange(b, device=images.device)[:, None, None, None]
    chans = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def random_flip(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = (torch.rand(images.shape[0], generator=gen) < 0.5).to(images.device)
    return torch.where(flip[:, None, None, None], images.flip(3), images)


def random_erase(
    x: torch.Tensor,
    prob: float,
    gen: torch.Generator,
    scale: tuple[float, float] = (0.02, 0.33),
    ratio: tuple[float, float] = (0.3, 3.3),
) -> torch.Tensor:
    """Set one random rectangle per image to 0 (the mean after normalisation) with probability ``prob``.

    Area fraction and aspect ratio are drawn as in torchvision's ``RandomErasing``.
    """
    b, _, h, w = x.shape
    apply = torch.rand(b, generator=gen) < prob
    area = torch.empty(b).uniform_(*scale, generator=gen) * h * w
    log_r = torch.empty(b).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=gen)
    eh = torch.sqrt(area * torch.exp(log_r)).round().clamp(1, h).long()
    ew = torch.sqrt(area / torch.exp(log_r)).round().clamp(1, w).long()
    y0 = (torch.rand(b, generator=gen) * (h - eh + 1)).long()
    x0 = (torch.rand(b, generator=gen) * (w - ew + 1)).long()
    params = torch.stack([y0, y0 + eh, x0, x0 + ew, apply.long()], 1).to(x.device)
    r = torch.arange(h, device=x.device)[None, :, None]
    c = torch.arange(w, device=x.device)[None, None, :]
    inside = (
        (r >= params[:, 0, None, None]) & (r < params[:, 1, None, None])
        & (c >= params[:, 2, None, None]) & (c < params[:, 3, None, None])
        & params[:, 4, None, None].bool()
    )
    return x.masked_fill(inside[:, None], 0.0)


class DeviceLoader:
    """Iterate over an :class:`ImageSet` in batches that are ready for the model.

    Args:
        data: the images (uint8 [N, C, H, W]) and labels; moved to ``device`` once.
        batch_size: the global batch size (all ranks together).
        device: where the data, the batches and the model live.
        image_size: side of the square images the model gets (bilinear resize); None keeps the size.
        mean, std: per-channel normalisation of pixels scaled to [0, 1]; None: only scale to [0, 1].
        shuffle: a new seeded order every epoch; otherwise the stored order.
        drop_last: drop a last, smaller batch (training); evaluation keeps every example.
        augment: training augmentation (only applied when ``shuffle`` is on).
        seed: the run's seed, from which all randomness here is derived.
        channels_last: return batches in channels-last memory format.
        rank, world_size: under torchrun, this process takes its share of every global batch.
        dtype: the floating dtype of the batches (float32; float64 for ``--precision fp64``).
    """

    def __init__(
        self,
        data: ImageSet,
        batch_size: int,
        *,
        device: torch.device | str = "cpu",
        image_size: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        shuffle: bool = False,
        drop_last: bool = False,
        augment: Augment = Augment(),
        seed: int = 0,
        channels_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.device = torch.device(device)
        self.images = data.images.to(self.device)
        self.labels = data.labels.to(self.device)
        self.batch_size = batch_size
        self.image_size = image_size
        channels = self.images.shape[1]
        self.dtype = dtype
        self.mean = None if mean is None else torch.tensor(mean, dtype=dtype, device=self.device).view(1, channels, 1, 1)
        self.std = None if std is None else torch.tensor(std, dtype=dtype, device=self.device).view(1, channels, 1, 1)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.augment = augment
        self.seed = seed
        self.channels_last = channels_last
        self.rank = rank
        self.world_size = world_size

    @property
    def num_examples(self) -> int:
        """Examples in the whole data set (all ranks)."""
        return len(self.labels)

    def __len__(self) -> int:
        """Steps per epoch."""
        n = self.num_examples
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        """The epoch's example order: a permutation drawn from ``(seed, epoch)``, or the stored order."""
        if not self.shuffle:
            return torch.arange(self.num_examples, device=self.device)
        return torch.randperm(self.num_examples, generator=_generator(self.seed, epoch)).to(self.device)

    def prepare(self, images: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        """Turn a uint8 batch into the model's float input: augment, resize, normalise."""
        aug = self.augment if gen is not None else Augment()
        if aug.crop_padding > 0:
            images = random_crop(images, aug.crop_padding, gen)
        if aug.flip:
            images = random_flip(images, gen)
        x = to_model_input(images, self.image_size, self.mean, self.std, self.dtype)
        if aug.erase_prob > 0:
            x = random_erase(x, aug.erase_prob, gen)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def batches(self, epoch: int = 0, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(inputs, labels)`` for this rank, for the steps of ``epoch`` from ``start_step`` on."""
        order = self.order(epoch)
        augmenting = self.shuffle and self.augment.active
        for step in range(start_step, len(self)):
            index = order[step * self.batch_size : (step + 1) * self.batch_size]
            gen = _generator(self.seed, epoch, step) if augmenting else None
            x = self.prepare(self.images[index], gen)
            y = self.labels[index]
            if self.world_size > 1:
                # Augmentation was drawn for the whole global batch; keep this rank's contiguous share.
                share = math.ceil(len(y) / self.world_size)
                x = x[self.rank * share : (self.rank + 1) * share]
                y = y[self.rank * share : (self.rank + 1) * share]
            yield x, y
