"""``resnetlab download fashion-mnist DIR``: fetch the four files over HTTP(S), checked and atomic.

Each file is checked against the SHA-256 of its *decompressed* IDX content. Upstream's and
Debian's ``.gz`` files differ as bytes (Debian's gzip headers omit the original file name) but
hold the same data, so checking the content accepts both and still rejects any corruption.
A file is written to a temporary name in the target folder and renamed into place only once it
has passed; on failure nothing is left behind.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import time
import urllib.request
from pathlib import Path

from ..errors import ResnetlabError
from ..util.fileio import atomic_path, make_folder
from ..util.locks import exclusive_lock
from .imageset import DataError

DEFAULT_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# SHA-256 of the decompressed IDX files.
CONTENT_SHA256 = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
_CHUNK = 1 << 20


def content_sha256(path: Path) -> str:
    """SHA-256 of a gzip file's decompressed content; raises :class:`DataError` if it is not gzip."""
    digest = hashlib.sha256()
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    except (OSError, EOFError) as exc:
        raise DataError(f"{path.name}: not a valid gzip file ({exc})") from None
    return digest.hexdigest()


def _has_content(path: Path, expected: str) -> bool:
    """Whether ``path`` is a gzip file whose content has the ``expected`` SHA-256 (a damaged file is not)."""
    try:
        return content_sha256(path) == expected
    except DataError:
        return False


def _fetch(url: str, dest: Path, timeout: float) -> None:
    with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
        while chunk := response.read(_CHUNK):
            out.write(chunk)


def _download_checked(url: str, final: Path, expected: str, timeout: float) -> None:
    """Fetch ``url`` into ``final`` atomically, only if its content has the ``expected`` SHA-256.

    Raises :class:`DataError` for a failed transfer or a wrong checksum; ``final`` is then untouched
    and no temporary file remains.
    """
    with atomic_path(final) as tmp:
        try:
            _fetch(url, tmp, timeout)
        except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, resets, short reads
            raise DataError(f"download failed ({getattr(exc, 'reason', exc)})") from None
        if content_sha256(tmp) != expected:
            raise DataError("its content does not match the known SHA-256")


def download_fashion_mnist(
    target: str | os.PathLike[str],
    base_url: str = DEFAULT_URL,
    retries: int = 3,
    timeout: float = 60.0,
    log=print,
) -> Path:
    """Download the four Fashion-MNIST files into ``target``; return the folder.

    Files already present with the right content are kept; damaged ones are replaced. Each download is tried up to
    ``retries`` times (with a short back-off); a file whose content does not match its known
    SHA-256 is deleted and, after the last try, reported as a :class:`DataError`.
    """
    if retries < 1:
        raise DataError(f"--retries {retries} must be at least 1 (the number of tries per file)")
    folder = make_folder(target, flag=None)
    # A second download into the same folder waits for the first, then finds its files present.
    with exclusive_lock(folder):  # the folder itself: no lock file among the data
        return _download_into(folder, base_url, retries, timeout, log)


def _download_into(folder: Path, base_url: str, retries: int, timeout: float, log) -> Path:
    """The four files into ``folder``, the download's lock held (see :func:`download_fashion_mnist`)."""
    base = base_url if base_url.endswith("/") else base_url + "/"
    for name, expected in CONTENT_SHA256.items():
        final = folder / name
        if final.is_file() and _has_content(final, expected):
            log(f"{name}: present, checksum ok")
            continue
        last_problem = ""
        for attempt in range(1, retries + 1):
            try:
                _download_checked(base + name, final, expected, timeout)
                log(f"{name}: downloaded, checksum ok")
                break
            except ResnetlabError as exc:
                last_problem = str(exc)
            if attempt < retries:
                time.sleep(min(2.0 ** (attempt - 1), 10.0) * 0.5)
        else:
            raise DataError(f"{base + name}: {last_problem} after {retries} {'try' if retries == 1 else 'tries'}; check --url or try again later")
    return folder
