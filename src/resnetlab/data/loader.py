"""The batch loader: images held on the model's device as one uint8 tensor, or streamed from a memory map.

No DataLoader, no workers, no per-sample Python: each batch is gathered, augmented (random crop
with padding, horizontal flip, random erasing), resized and normalised with whole-batch tensor
ops on the device where the model runs, CPU or CUDA alike. Data larger than the device's
memory are streamed (:class:`DeviceLoader`'s ``stream``): the same batches, gathered from the
memory-mapped source a few steps ahead by a background thread.

All randomness is derived from ``(seed, epoch, step)``: the epoch's order from
``(seed, epoch)``, the augmentation of a global batch from ``(seed, epoch, step)``. It is drawn
with CPU generators, a whole epoch at its start, and copied to the device once, so the same
seed gives the same batches on any device and either feed, a resumed run needs only its step
counter, ranks under torchrun that each take a slice of a global batch see what one process
would, and no step waits for a copy.
"""

from __future__ import annotations

import copy
import math
import queue
import threading
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

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


# The columns of an epoch's drawn augmentation (one int32 row per image): crop offsets, flip, erased rectangle.
_DY, _DX, _FLIP, _Y0, _Y1, _X0, _X1, _ERASE = range(8)


def draw_augmentation(augment: Augment, count: int, side: tuple[int, int], out_side: tuple[int, int],
                      gen: torch.Generator) -> torch.Tensor:
    """Every random parameter of ``count`` images' augmentation, drawn on the CPU from ``gen``: int32 [count, 8].

    ``side`` is the images' (H, W) as stored, ``out_side`` after resizing (where the erased
    rectangle lives). Drawn in one fixed order (crop offsets, flips, then the rectangles), so a
    batch's parameters depend on ``gen`` alone, not on the device, the rank or the feed.
    """
    params = torch.zeros(count, 8, dtype=torch.int32)
    if augment.crop_padding > 0:
        params[:, _DY] = torch.randint(0, 2 * augment.crop_padding + 1, (count,), generator=gen)
        params[:, _DX] = torch.randint(0, 2 * augment.crop_padding + 1, (count,), generator=gen)
    if augment.flip:
        params[:, _FLIP] = torch.rand(count, generator=gen) < 0.5
    if augment.erase_prob > 0:
        params[:, _Y0:] = _draw_rectangles(count, *out_side, augment.erase_prob, gen)
    return params


def _draw_rectangles(count: int, h: int, w: int, prob: float, gen: torch.Generator,
                     scale: tuple[float, float] = (0.02, 0.33), ratio: tuple[float, float] = (0.3, 3.3)) -> torch.Tensor:
    """Random erasing's rectangles, int [count, 5]: y0, y1, x0, x1, and whether to erase (torchvision's area and ratio)."""
    apply = torch.rand(count, generator=gen) < prob
    area = torch.empty(count).uniform_(*scale, generator=gen) * h * w
    log_r = torch.empty(count).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=gen)
    eh = torch.sqrt(area * torch.exp(log_r)).round().clamp(1, h).long()
    ew = torch.sqrt(area / torch.exp(log_r)).round().clamp(1, w).long()
    y0 = (torch.rand(count, generator=gen) * (h - eh + 1)).long()
    x0 = (torch.rand(count, generator=gen) * (w - ew + 1)).long()
    return torch.stack([y0, y0 + eh, x0, x0 + ew, apply.long()], 1)


def crop_at(images: torch.Tensor, padding: int, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Zero-pad each image by ``padding`` and crop it back to its size at offsets ``dy``, ``dx`` (on its device)."""
    b, c, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, None, :]
    batch = torch.arange(b, device=images.device)[:, None, None, None]
    chans = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def flip_where(images: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the images where ``flip`` (one value per image, on their device) is nonzero."""
    return torch.where(flip.bool()[:, None, None, None], images.flip(3), images)


def erase_at(x: torch.Tensor, rectangles: torch.Tensor) -> torch.Tensor:
    """Set each image's rectangle (rows of y0, y1, x0, x1, erase; on its device) to 0, the mean after normalisation."""
    h, w = x.shape[-2:]
    r = torch.arange(h, device=x.device)[None, :, None]
    c = torch.arange(w, device=x.device)[None, None, :]
    p = rectangles
    inside = ((r >= p[:, 0, None, None]) & (r < p[:, 1, None, None]) & (c >= p[:, 2, None, None])
              & (c < p[:, 3, None, None]) & p[:, 4, None, None].bool())
    return x.masked_fill(inside[:, None], 0.0)


class DeviceLoader:
    """Iterate over an :class:`ImageSet` in batches that are ready for the model.

    Two feeds, the same batches. Resident (the default): the images are moved to ``device``
    once, and each batch is indexed there. Streamed (``stream=True``, for data larger than the
    device's memory): each batch's rows are gathered from the set's source (a memory map) by a
    background thread a few batches ahead, in ascending row order, into pinned memory on CUDA,
    and copied ``non_blocking``; only this rank's share of a global batch is read.

    Between steps the host never waits for the device: the epoch's order and every augmentation
    parameter of the epoch are drawn on the CPU at the epoch's start and copied to the device
    once (pinned, ``non_blocking``); a step only slices them.

    Args:
        data: the images (uint8 [N, C, H, W]) and labels.
        batch_size: the global batch size (all ranks together).
        device: where the batches and the model live.
        image_size: side of the square images the model gets (bilinear resize); None keeps the size.
        mean, std: per-channel normalisation of pixels scaled to [0, 1]; None: only scale to [0, 1].
        shuffle: a new seeded order every epoch; otherwise the stored order.
        drop_last: drop a last, smaller batch (training); evaluation keeps every example.
        augment: training augmentation (only applied when ``shuffle`` is on).
        seed: the run's seed, from which all randomness here is derived.
        channels_last: return batches in channels-last memory format.
        rank, world_size: under torchrun, this process takes its share of every global batch.
        dtype: the floating dtype of the batches (float32; float64 for ``--precision fp64``).
        stream: gather each batch from ``data``'s source instead of holding the images on ``device``.
        prefetch: batches a streamed loader gathers ahead.
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
        stream: bool = False,
        prefetch: int = 4,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.device = torch.device(device)
        self.data = data
        self.stream = stream
        self.prefetch = prefetch
        # Resident: the whole set on the device (a mapped split that needs no selection is indexed in place on the CPU).
        self.images = None if stream else data.images.to(self.device)
        self.labels = data.labels.to(self.device)
        self.batch_size = batch_size
        self.image_size = image_size
        channels = data.shape[1]
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

    def whole(self) -> "DeviceLoader":
        """This loader over every example, not one rank's share (the same batches as in a single process)."""
        whole = copy.copy(self)
        whole.rank, whole.world_size = 0, 1
        return whole

    @property
    def num_examples(self) -> int:
        """Examples in the whole data set (all ranks)."""
        return len(self.labels)

    def __len__(self) -> int:
        """Steps per epoch."""
        n = self.num_examples
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        """The epoch's example order on the CPU: a permutation drawn from ``(seed, epoch)``, or the stored order."""
        if not self.shuffle:
            return torch.arange(self.num_examples)
        return torch.randperm(self.num_examples, generator=_generator(self.seed, epoch))

    def _batch(self, step: int) -> range:
        """The positions in the epoch's order of global batch ``step``."""
        return range(step * self.batch_size, min((step + 1) * self.batch_size, self.num_examples))

    def augmentation(self, epoch: int, start_step: int = 0) -> torch.Tensor | None:
        """The parameters of every global batch of ``epoch`` from ``start_step`` on, each drawn from ``(seed, epoch, step)``.

        int32 [images of those batches, 8] on the CPU, batch after batch; None when nothing is augmented.
        """
        if not (self.shuffle and self.augment.active):
            return None
        side = tuple(self.data.shape[-2:])
        out_side = (self.image_size, self.image_size) if self.image_size is not None else side
        draws = [draw_augmentation(self.augment, len(self._batch(step)), side, out_side, _generator(self.seed, epoch, step))
                 for step in range(start_step, len(self))]
        return torch.cat(draws) if draws else torch.zeros(0, 8, dtype=torch.int32)

    def prepare(self, images: torch.Tensor, params: torch.Tensor | None) -> torch.Tensor:
        """Turn a uint8 batch into the model's float input: augment (``params`` on its device, or None), resize, normalise."""
        aug = self.augment if params is not None else Augment()
        if aug.crop_padding > 0:
            images = crop_at(images, aug.crop_padding, params[:, _DY], params[:, _DX])
        if aug.flip:
            images = flip_where(images, params[:, _FLIP])
        x = to_model_input(images, self.image_size, self.mean, self.std, self.dtype)
        if aug.erase_prob > 0:
            x = erase_at(x, params[:, _Y0:])
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _mine(self, batch: range) -> range:
        """This rank's contiguous share of a global ``batch`` (all of it in a single process)."""
        if self.world_size == 1:
            return batch
        share = math.ceil(len(batch) / self.world_size)
        return batch[self.rank * share : (self.rank + 1) * share]

    def batches(self, epoch: int = 0, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(inputs, labels)`` for this rank, for the steps of ``epoch`` from ``start_step`` on."""
        cpu_order = self.order(epoch)
        params = self.augmentation(epoch, start_step)  # drawn from start_step's batch on
        first = start_step * self.batch_size
        # The epoch's two copies to the device; a step below only slices what is there.
        order = to_device(cpu_order, self.device)
        params = to_device(params, self.device) if params is not None else None
        shares = [self._mine(self._batch(step)) for step in range(start_step, len(self))]
        if self.stream:
            pin = self.device.type == "cuda"
            pixels = background((self.data.gather(cpu_order[mine.start:mine.stop], pin=pin) for mine in shares),
                                self.prefetch)
        else:
            pixels = (self.images[order[mine.start:mine.stop]] for mine in shares)
        for mine, images in zip(shares, pixels):
            if self.stream:
                images = images.to(self.device, non_blocking=True)
            drawn = params[mine.start - first : mine.stop - first] if params is not None else None
            yield self.prepare(images, drawn), self.labels[order[mine.start:mine.stop]]


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` (on the CPU) on ``device``: through pinned memory and ``non_blocking`` for CUDA, so the host does not wait."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


_END = object()


class _Failure:
    """An exception raised in the background thread, carried to the consumer."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def background(items: Iterable, depth: int) -> Iterator:
    """Iterate over ``items``, produced by a background thread at most ``depth`` ahead (torch and disk reads release the GIL).

    The thread stops when the consumer stops (early, by an exception, or closing the generator);
    an exception in the thread is raised in the consumer.
    """
    ready: queue.Queue = queue.Queue(max(1, depth))
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_END)
        except BaseException as exc:  # noqa: BLE001 - carried over and raised where the batches are taken
            put(_Failure(exc))

    thread = threading.Thread(target=produce, name="resnetlab-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join()
