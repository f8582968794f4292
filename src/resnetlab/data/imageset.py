"""What every kind of data becomes: :class:`ImageSet` (uint8 images, labels, class names), and :class:`DataError`."""

from __future__ import annotations

import hashlib
from typing import Iterator

import torch

from ..errors import ResnetlabError

# Images read at a time by whole-set passes (fingerprint, statistics): 256 at 224 px RGB is 38 MB.
PASS_CHUNK = 256


class DataError(ResnetlabError):
    """A data file or folder is missing, unreadable or malformed; the message names it."""


class ImageSet:
    """Images (uint8 [N, C, H, W]), labels (int64 [N]) and the class names; possibly a lazy selection.

    The pixels live in ``source``: a tensor in memory (Fashion-MNIST), or one memory-mapped from a
    class folder's cache, which may be larger than RAM. ``rows`` (None: all of ``source``, in
    order) selects and orders the examples, so :meth:`subset` and :meth:`limit` copy no pixels:
    carving a validation split out of a mapped folder costs its labels and an index. What reads
    pixels says how many: :attr:`images` all of them as one tensor (a copy when ``rows`` selects;
    for data that fit), :meth:`gather` a batch, :meth:`chunks` the whole set a piece at a time.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, class_names: tuple[str, ...] | list[str],
                 rows: torch.Tensor | None = None) -> None:
        self.source = images
        self.labels = labels
        self.class_names = tuple(class_names)
        self.rows = rows
        if len(labels) != (len(images) if rows is None else len(rows)):
            raise ValueError(f"{len(labels)} labels for {len(images) if rows is None else len(rows)} images")

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        lazy = f", {len(self):,} rows of {len(self.source):,}" if self.rows is not None else ""
        return f"ImageSet({tuple(self.shape)}, {len(self.class_names)} classes{lazy})"

    @property
    def shape(self) -> torch.Size:
        """The images' shape [N, C, H, W], known without reading a pixel."""
        return torch.Size((len(self), *self.source.shape[1:]))

    @property
    def nbytes(self) -> int:
        """The images' size in bytes, were they all in memory."""
        return self.shape.numel()

    @property
    def images(self) -> torch.Tensor:
        """Every image as one uint8 tensor: ``source`` itself, or a copy of the selected rows."""
        return self.source if self.rows is None else self.source[self.rows]

    def gather(self, index: torch.Tensor, *, pin: bool = False) -> torch.Tensor:
        """The images at positions ``index`` (a 1-D CPU tensor), in that order (in pinned memory with ``pin``).

        Rows are read from ``source`` in ascending order, then put in the order asked: a
        memory-mapped source is then read front to back, page after page, not at random.
        """
        rows = index if self.rows is None else self.rows[index]
        ascending, order = rows.sort()
        out = torch.empty((len(rows), *self.source.shape[1:]), dtype=self.source.dtype, pin_memory=pin)
        if self.source.device.type == "cpu":
            # numpy's gather: one thread, GIL released, about 20x faster than torch's indexing for a batch of
            # rows (0.12 against 2.4 ms for 64 images of 96 px RGB), and no OpenMP team of its own in the
            # loader's background thread to compete with the training step for the cores.
            out.numpy()[order.numpy()] = self.source.numpy()[ascending.numpy()]
        else:
            out[order] = self.source[ascending]
        return out

    def chunks(self, size: int = PASS_CHUNK) -> Iterator[torch.Tensor]:
        """The images in order, ``size`` at a time: a pass over a set larger than memory."""
        for start in range(0, len(self), size):
            if self.rows is None:
                yield self.source[start : start + size]
            else:
                yield self.gather(torch.arange(start, min(start + size, len(self))))

    def fingerprint(self) -> str:
        """A SHA-256 over the images (with their shape) and labels: the same split gives the same one.

        Hashed a chunk at a time (the same digest as hashing all the bytes at once), so no copy
        of the whole set is made.
        """
        digest = hashlib.sha256(str(tuple(self.shape)).encode())
        for chunk in self.chunks():
            digest.update(chunk.contiguous().numpy().data)
        digest.update(self.labels.contiguous().numpy().tobytes())
        return digest.hexdigest()

    def subset(self, index: torch.Tensor) -> "ImageSet":
        """The examples at ``index`` (a 1-D tensor of positions) as a new set; no pixels are copied."""
        index = torch.as_tensor(index, dtype=torch.long)
        rows = index if self.rows is None else self.rows[index]
        return ImageSet(self.source, self.labels[index], self.class_names, rows)

    def limit(self, count: int | None) -> "ImageSet":
        """The first ``count`` examples (None: all)."""
        return self if count is None or count >= len(self) else self.subset(torch.arange(count))

    def with_channels(self, channels: int | None) -> "ImageSet":
        """The set with ``channels`` channels: gray images repeated to three (None or the same count: as is)."""
        if channels is None or channels == self.shape[1]:
            return self
        if self.shape[1] != 1 or channels != 3:
            raise DataError(f"cannot turn {self.shape[1]}-channel images into {channels}-channel ones")
        return ImageSet(self.images.expand(-1, 3, -1, -1).contiguous(), self.labels, self.class_names)
