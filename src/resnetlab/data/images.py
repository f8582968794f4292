"""Reading the user's image files with Pillow into uint8 tensors of a model's channel count.

Every path that opens an image file (class folders and their cache, ``predict``,
``resnetlab.load(...).predict`` on paths) goes through :func:`open_image`, which refuses what
would be dangerous or silently wrong, each as an :class:`ImageError` naming the file:

- more pixels than Pillow's limit (``PIL.Image.MAX_IMAGE_PIXELS``, 89.5 million by default),
  checked from the header before anything is decoded (a 400-megapixel PNG "bomb" of a few
  hundred KB is refused without allocating its pixels);
- files Pillow cannot identify, whatever their extension, and truncated or damaged ones;
- metadata Pillow refuses (an oversized text or ICC chunk) or cannot parse: an unreadable EXIF
  orientation is ignored, since the pixels are still good.

What is read is made the same for every format: the first frame of an animated or multi-page
file, EXIF rotation applied, 16-bit and 32-bit gray scaled down to 8 bits (Pillow's own
conversion would clip them to white), palettes, transparency and CMYK converted, as
torchvision's loader converts them (alpha dropped).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from ..errors import ResnetlabError

# What a folder is searched for; a file named on the command line is tried whatever its name.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
# Pillow modes without colour; anything else is read as RGB.
GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_WIDE_GRAY = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


class ImageError(ResnetlabError):
    """A file that cannot be read as an image: ``path``, and ``reason`` in words."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def max_pixels() -> int:
    """The most pixels an image may have: Pillow's ``MAX_IMAGE_PIXELS`` (None there: no limit)."""
    from PIL import Image

    return int(Image.MAX_IMAGE_PIXELS) if Image.MAX_IMAGE_PIXELS else 1 << 62


@contextmanager
def open_image(path: str | os.PathLike[str]) -> Iterator["PIL.Image.Image"]:  # noqa: F821
    """Open ``path`` with Pillow, header only, after the checks in the module's description.

    Any failure inside the ``with`` block (decoding included) becomes an :class:`ImageError`.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as image:
            pixels = image.width * image.height
            if pixels > max_pixels():
                raise ImageError(path, f"{image.width}x{image.height} is {pixels:,} pixels, more than the "
                                       f"{max_pixels():,} read here (a decompression bomb?); shrink it first")
            yield image
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(path, "no such file") from None
    except IsADirectoryError:
        raise ImageError(path, "is a folder") from None
    except PermissionError:
        raise ImageError(path, "cannot be read (permission denied)") from None
    except UnidentifiedImageError:
        raise ImageError(path, "not an image Pillow can read (PNG, JPEG, BMP, WebP, ...)") from None
    except Image.DecompressionBombError:
        raise ImageError(path, f"more than twice the {max_pixels():,} pixels read here, so Pillow refused to open it "
                               "(a decompression bomb?); shrink it first") from None
    except MemoryError:
        raise ImageError(path, "too large to decode in the memory available") from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError, TypeError, ZeroDivisionError) as exc:
        # Pillow's decoders report damage in all of these ways.
        raise ImageError(path, f"damaged or unreadable image ({type(exc).__name__}: {exc})") from None


def _upright(image):
    """The image turned as its EXIF orientation says; an EXIF that cannot be parsed is ignored."""
    from PIL import ImageOps

    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - a broken EXIF block says nothing reliable about rotation
        return image


def _eight_bit_gray(image):
    """16-bit and 32-bit gray scaled to 8 bits by the range of their type (Pillow's convert would clip)."""
    from PIL import Image

    array = np.asarray(image)
    if image.mode == "F":
        scale = 255.0 if array.size and float(np.nanmax(array)) <= 1.0 else 1.0
        array = np.nan_to_num(array.astype(np.float64) * scale)
    elif array.size and int(array.max()) > 255:
        array = array.astype(np.float64) / (257.0 if int(array.max()) <= 65535 else array.max() / 255.0)
    return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), "L")


def pil_to_tensor(image, channels: int, size: int | None = None) -> torch.Tensor:
    """A PIL image -> uint8 tensor [C, H, W] with ``channels`` (1: grayscale, 3: RGB), as the module describes.

    With ``size``, the image is then resized to ``size`` squared with Pillow's bilinear filter:
    what class-folder data sets are cached as, and so what prediction must do too.
    """
    from PIL import Image

    if channels not in (1, 3):
        raise ResnetlabError(f"images can be given to 1- or 3-channel models, not {channels}-channel ones")
    image = _upright(image)
    if image.mode in _WIDE_GRAY:
        image = _eight_bit_gray(image)
    elif image.mode in ("P", "PA"):
        image = image.convert("RGBA")  # a palette's transparency is resolved first, as Pillow advises
    image = image.convert("L" if channels == 1 else "RGB")
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def resize_tensor(image: torch.Tensor, size: int) -> torch.Tensor:
    """A uint8 tensor [C, H, W] (C 1 or 3) resized to ``size`` squared with Pillow's bilinear filter, as files are read."""
    from PIL import Image

    array = image.permute(1, 2, 0).numpy()
    pil = Image.fromarray(array[:, :, 0] if image.shape[0] == 1 else array, "L" if image.shape[0] == 1 else "RGB")
    return pil_to_tensor(pil, image.shape[0], size)


def read_image(path: str | os.PathLike[str], channels: int, size: int | None = None) -> torch.Tensor:
    """Read an image file as a uint8 tensor [C, H, W] (see :func:`pil_to_tensor`), or raise :class:`ImageError` naming it."""
    with open_image(path) as image:
        image.load()
        return pil_to_tensor(image, channels, size)


def probe_image(path: str | os.PathLike[str]) -> tuple[str, int, int]:
    """``(mode, width, height)`` from the header of an image file, or :class:`ImageError`; nothing is decoded."""
    with open_image(path) as image:
        return image.mode, image.width, image.height


def find_images(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Expand folders into the image files below them (sorted); keep named files as they are."""
    found: list[Path] = []
    for item in map(Path, paths):
        if item.is_dir():
            found.extend(sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            found.append(item)
    return found
