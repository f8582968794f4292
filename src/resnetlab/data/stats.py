"""What is measured of a set of uint8 images once, for the run and its weights' header: channel statistics (the
normalisation) and the mean intensity overall and on the border (to tell a photo from a data-set image).

Each reads the images a chunk at a time, so a memory-mapped split larger than memory is measured without a float
copy of it.
"""

from __future__ import annotations

import math

import torch

from .imageset import ImageSet

# The border: the outermost 2 pixels all round, which in a data-set image (an object centred
# and scaled to fill it) are nearly all background.
FRAME = 2
# Images whose statistics are kept: a strided sample of at most this many, which already gives
# the mean of all 60,000 Fashion-MNIST images to 0.002, in a fraction of a second.
SAMPLE = 10_000


def channel_stats(data: ImageSet | torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation (with Bessel's correction) of uint8 images scaled to [0, 1].

    From each channel's exact histogram of the 256 values, counted a chunk at a time: no float
    copy of the images (Fashion-MNIST's was 350 MB), any size of set, and the same figures
    however the set is chunked or fed.
    """
    chunks = data.chunks() if isinstance(data, ImageSet) else (data,)
    channels = data.shape[1]
    counts = torch.zeros(channels, 256, dtype=torch.float64)
    for chunk in chunks:
        for c in range(channels):
            counts[c] += torch.bincount(chunk[:, c].reshape(-1), minlength=256).double()
    values = torch.arange(256, dtype=torch.float64) / 255
    n = counts.sum(1)
    mean = (counts * values).sum(1) / n
    var = (counts * (values - mean[:, None]) ** 2).sum(1) / (n - 1)
    return mean.tolist(), var.sqrt().tolist()


def frame_mask(height: int, width: int) -> torch.Tensor:
    """[H, W] booleans, true on the outermost :data:`FRAME` pixels (the whole image if it is that small)."""
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[:FRAME], mask[-FRAME:], mask[:, :FRAME], mask[:, -FRAME:] = True, True, True, True
    return mask


def border_mean(image: torch.Tensor) -> float:
    """The mean intensity, in [0, 1], of an image's border: low for a dark background, high for a light one."""
    return float(image[:, frame_mask(*image.shape[-2:])].double().mean()) / 255


def intensity_stats(images: torch.Tensor | ImageSet, sample: int = SAMPLE) -> tuple[float, float]:
    """(mean pixel, mean border) in [0, 1] of uint8 images [N, C, H, W], over every ``ceil(N / sample)``-th image.

    ``images``: a tensor, or an :class:`ImageSet` (read a chunk at a time: it may be a map larger
    than memory). A strided sample, not a random one: the same images each time, and the data's
    order (by class in a folder) is spread over evenly. Summed in chunks, so large images never
    become one float copy of the sample.
    """
    rows = torch.arange(0, len(images), max(1, math.ceil(len(images) / sample)))
    if len(rows) == 0:
        return 0.0, 0.0
    gather = images.gather if isinstance(images, ImageSet) else images.__getitem__
    side = images.shape[-2:]
    mask = frame_mask(*side)
    total = border = 0.0
    for start in range(0, len(rows), 256):
        chunk = gather(rows[start : start + 256])
        total += float(chunk.sum(dtype=torch.float64))
        border += float(chunk[:, :, mask].sum(dtype=torch.float64))
    images_and_channels = len(rows) * images.shape[1]
    return total / (images_and_channels * mask.numel()) / 255, border / (images_and_channels * int(mask.sum())) / 255
