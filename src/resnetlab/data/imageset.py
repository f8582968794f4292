"""What every kind of data becomes: :class:`ImageSet` (uint8 images, labels, class names), and :class:`DataError`."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from ..errors import ResnetlabError


class DataError(ResnetlabError):
    """A data file or folder is missing, unreadable or malformed; the message names it."""


@dataclass
class ImageSet:
    """Images as a uint8 tensor [N, C, H, W], labels as int64 [N], and the class names."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def fingerprint(self) -> str:
        """A SHA-256 over the images (with their shape) and labels: the same split gives the same one."""
        digest = hashlib.sha256(str(tuple(self.images.shape)).encode())
        digest.update(self.images.contiguous().numpy().tobytes())
        digest.update(self.labels.contiguous().numpy().tobytes())
        return digest.hexdigest()

    def subset(self, index: torch.Tensor) -> "ImageSet":
        """Return the examples at ``index`` (a 1-D tensor of positions) as a new set."""
        return ImageSet(self.images[index], self.labels[index], self.class_names)

    def limit(self, count: int | None) -> "ImageSet":
        """The first ``count`` examples (None: all)."""
        return self if count is None else self.subset(torch.arange(min(count, len(self))))

    def with_channels(self, channels: int | None) -> "ImageSet":
        """The set with ``channels`` channels: gray images repeated to three (None or the same count: as is)."""
        if channels is None or channels == self.images.shape[1]:
            return self
        if self.images.shape[1] != 1 or channels != 3:
            raise DataError(f"cannot turn {self.images.shape[1]}-channel images into {channels}-channel ones")
        return ImageSet(self.images.expand(-1, 3, -1, -1).contiguous(), self.labels, self.class_names)
