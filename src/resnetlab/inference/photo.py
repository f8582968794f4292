"""Photos are not data-set images: small pure functions on uint8 [C, H, W] tensors that tell and fix it.

Fashion-MNIST's images are light objects centred on a black background; a phone photo is the
opposite, a dark object on a light, textured background and off centre, and a model answers it
with confident nonsense. The background tells which way round an image is: its border (the
outermost ``data.stats.FRAME`` pixels), mostly background, is dark in the training images and light in
a photo. So training keeps the training images' mean intensity and border mean in the weights'
header (``data.stats.intensity_stats``), prediction compares an image's border with it
(:func:`background_mismatch`), and two fixes are offered: :func:`invert` and
:func:`center_on_object`. Nothing here imports the training engine.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..data.stats import frame_mask

# An image's background is dark below DARK and light above 1 - DARK in [0, 1]; an image is
# flagged only when its border is on the other side of the middle (0.5) from the training
# images' border, so a gray-ish one is not (Fashion-MNIST's training border: 0.089, and only 2
# of its 10,000 test images have a border above 0.5).
DARK = 0.25
# center_on_object looks for the object on a copy shrunk to about this side (box averages), so
# that the texture of a photo's background (grain, noise, JPEG blocks) averages out, at any size.
SEARCH_SIDE = 64
# A pixel of the shrunk copy belongs to the object when it differs from the background (the
# border's median) by more than this (of 255), and by more than twice what nine in ten border
# pixels of that copy do (a textured background's own spread is not an object).
CONTRAST = 32
# The margin left round the object, each side, as a fraction of its longer side. Zero by default:
# Fashion-MNIST's objects are scaled to fill their 28 pixels (98% of them span all 28), and on
# photos made from its test images a 5% margin lowered the median correlation with the original
# from 0.88 to 0.79; the box found is already a little generous, being in blocks of the shrunk copy.
MARGIN = 0.0


def invert(image: torch.Tensor) -> torch.Tensor:
    """``255 - pixels``: a dark object on a light background (a photo) becomes a light one on a dark background."""
    return 255 - image


def background_mismatch(trained: float, seen: float) -> str | None:
    """What is wrong, in words, when a border mean ``seen`` is the other way round from the training images' ``trained``.

    Dark training borders (below :data:`DARK`) and a light image border (above 0.5), or light
    ones (above ``1 - DARK``) and a dark image border (below 0.5); None otherwise, and when the
    training border was neither clearly dark nor clearly light.
    """
    if trained < DARK and seen > 0.5:
        return "a light background, unlike the training images (dark)"
    if trained > 1 - DARK and seen < 0.5:
        return "a dark background, unlike the training images (light)"
    return None


def center_on_object(image: torch.Tensor, contrast: float = CONTRAST, margin: float = MARGIN) -> torch.Tensor:
    """The image cropped to its object and padded to a square with the background, the object in the middle.

    The background is the per-channel median of the border; the object, every pixel that differs
    from it in some channel by more than ``contrast`` and than twice the border's own spread (its 90th percentile; see
    :data:`CONTRAST`), looked for on a copy shrunk to about :data:`SEARCH_SIDE` pixels so that
    texture averages out (float32: a 12-megapixel photo costs 144 MB once). Their bounding box, with
    ``margin`` (a fraction of its longer side) all round, is padded to a square with the
    background value: an object off centre in a large photo comes out as a data-set image has it.
    Inverting before or after gives the same, since only the distance from the background counts.
    An image with nothing that stands out (uniform, or all texture) is returned unchanged.
    """
    channels, height, width = image.shape
    factor = max(1, round(max(height, width) / SEARCH_SIDE))
    small = F.adaptive_avg_pool2d(image.float()[None], (max(1, height // factor), max(1, width // factor)))[0]
    frame = frame_mask(*small.shape[-2:])
    background = small[:, frame].median(dim=1).values  # per channel
    distance = (small - background[:, None, None]).abs().amax(0)
    # The border's own spread, as its 90th percentile: a speck in a corner or an object touching the edge
    # must not raise the bar above the object itself (with the maximum, such photos came back uncropped).
    spread = float(distance[frame].quantile(0.9))
    found = distance > max(float(contrast), 2 * spread)
    rows, cols = found.any(1).nonzero(), found.any(0).nonzero()
    if len(rows) == 0:
        return image
    # The box in the image's own pixels: each pixel of the shrunk copy stands for a block of them.
    sy, sx = height / small.shape[1], width / small.shape[2]
    top, bottom = math.floor(int(rows[0]) * sy), min(height, math.ceil((int(rows[-1]) + 1) * sy))
    left, right = math.floor(int(cols[0]) * sx), min(width, math.ceil((int(cols[-1]) + 1) * sx))
    side = math.ceil(max(bottom - top, right - left) * (1 + 2 * margin))
    fill = background.round().clamp(0, 255).to(torch.uint8)
    out = fill.view(channels, 1, 1).expand(channels, side, side).clone()
    y, x = (side - (bottom - top)) // 2, (side - (right - left)) // 2
    out[:, y : y + bottom - top, x : x + right - left] = image[:, top:bottom, left:right]
    return out
