"""Reading the user's image files with Pillow into uint8 tensors of a model's channel count."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from .errors import ResnetlabError

# What a folder is searched for; a file named on the command line is tried whatever its name.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


class ImageError(ResnetlabError):
    """A file that cannot be read as an image: ``path``, and ``reason`` in words."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def pil_to_tensor(image, channels: int, size: int | None = None) -> torch.Tensor:
    """A PIL image -> uint8 tensor [C, H, W] with ``channels`` (1: grayscale, 3: RGB), EXIF rotation applied.

    With ``size``, the image is first resized to ``size`` squared with Pillow's bilinear filter:
    what class-folder data sets are cached as, and so what prediction must do too.
    """
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image)
    if channels == 1:
        image = image.convert("L")
    elif channels == 3:
        image = image.convert("RGB")
    else:
        raise ResnetlabError(f"images can be given to 1- or 3-channel models, not {channels}-channel ones")
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def read_image(path: str | os.PathLike[str], channels: int, size: int | None = None) -> torch.Tensor:
    """Read an image file as a uint8 tensor [C, H, W] (see :func:`pil_to_tensor`), or raise :class:`ImageError` naming it."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            return pil_to_tensor(image, channels, size)
    except FileNotFoundError:
        raise ImageError(path, "no such file") from None
    except IsADirectoryError:
        raise ImageError(path, "is a folder") from None
    except UnidentifiedImageError:
        raise ImageError(path, "not an image Pillow can read (PNG, JPEG, BMP, WebP, ...)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(path, f"damaged or unreadable image ({exc})") from None


def find_images(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Expand folders into the image files below them (sorted); keep named files as they are."""
    found: list[Path] = []
    for item in map(Path, paths):
        if item.is_dir():
            found.extend(sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            found.append(item)
    return found
