"""A strict reader for the IDX format of MNIST and Fashion-MNIST (raw or gzip-compressed).

Every header field is checked before anything large is allocated: the magic number, the type
code, the number of dimensions, and that the dimensions imply exactly as many bytes as the file
holds. For a ``.gz`` file, whose decompressed size is unknown until read, the implied size must
fit what deflate can produce from the file's compressed size, and the data is read in chunks,
so a lying header never makes us allocate more than the file can hold.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from .imageset import DataError

# IDX type codes and their big-endian numpy types.
IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
# Deflate cannot expand data by more than about 1032:1; a header that implies more is a lie.
MAX_DEFLATE_RATIO = 1032
_CHUNK = 1 << 20


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _read_exactly(stream, n: int) -> bytes:
    """Read ``n`` bytes in chunks (so memory follows the data actually present) or fewer at EOF."""
    parts, got = [], 0
    while got < n:
        chunk = stream.read(min(_CHUNK, n - got))
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) into a numpy array of its declared type and shape.

    Raises :class:`DataError` naming the file for a missing or unreadable file, a bad magic
    number or type code, dimensions that do not match the file's size, or a truncated or
    corrupt gzip stream.
    """
    path = Path(path)
    try:
        file_size = path.stat().st_size
        with _open(path) as f:
            head = _read_exactly(f, 4)
            if len(head) < 4:
                raise DataError(f"{path}: too short to be an IDX file ({len(head)} header bytes)")
            if head[0] != 0 or head[1] != 0:
                raise DataError(f"{path}: not an IDX file (bad magic number {head.hex()})")
            type_code, ndim = head[2], head[3]
            if type_code not in IDX_TYPES:
                raise DataError(f"{path}: unknown IDX type code 0x{type_code:02x}")
            if ndim == 0:
                raise DataError(f"{path}: IDX header declares no dimensions")
            dims_raw = _read_exactly(f, 4 * ndim)
            if len(dims_raw) < 4 * ndim:
                raise DataError(f"{path}: truncated IDX header (expected {ndim} dimensions)")
            shape = tuple(int(d) for d in np.frombuffer(dims_raw, dtype=">u4"))
            dtype = IDX_TYPES[type_code]
            expected = int(np.prod(shape, dtype=object)) * dtype.itemsize
            header_size = 4 + 4 * ndim
            limit = file_size - header_size if path.suffix != ".gz" else file_size * MAX_DEFLATE_RATIO
            if expected > limit:
                raise DataError(
                    f"{path}: header dimensions {list(shape)} need {expected:,} bytes but the file "
                    f"holds at most {max(limit, 0):,}; the file is truncated or corrupt"
                )
            data = _read_exactly(f, expected)
            if len(data) < expected:
                raise DataError(
                    f"{path}: truncated: header dimensions {list(shape)} need {expected:,} data bytes, "
                    f"found {len(data):,}"
                )
            if f.read(1):
                raise DataError(f"{path}: more data than its header dimensions {list(shape)} declare")
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except PermissionError:
        raise DataError(f"{path}: permission denied; make the file readable") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not an IDX file") from None
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip data ({exc})") from None
    # A writable, native-endian copy: torch.from_numpy needs one, and it frees the bytes object.
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
