"""Crash-safe file writing: write to a temporary name beside the target, fsync, rename into place.

A reader (or a crash at any instant) sees either the old file or the whole new one, never a
partial one, and a failed write leaves no temporary file behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from ..errors import ResnetlabError


TMP_SUFFIX = ".tmp"


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files that writes killed by SIGKILL or a crash left in ``folder``.

    Only names this module creates (``.<name>.<random>.tmp``) are touched. Returns them.
    """
    stale = [p for p in Path(folder).glob(f".*{TMP_SUFFIX}") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files readable by the owner only; finished files get the usual permissions.
_FILE_MODE = 0o666 & ~_current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; after the block it is fsync'ed and renamed to ``path``.

    If the block raises (a full disk, say), the temporary file is removed and ``path`` keeps
    its old content. An ``OSError`` becomes a :class:`ResnetlabError` naming the file.
    """
    target = Path(path)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TMP_SUFFIX, dir=target.parent)
    except OSError as exc:
        raise ResnetlabError(f"cannot write {target} ({exc.strerror}); choose a writable folder") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, target)
        _fsync_folder(target.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ResnetlabError(f"cannot write {target} ({exc.strerror or exc}); free some space or choose another folder") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a crash right after it keeps the new name)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # some systems cannot open folders; the rename itself is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def make_folder(path: str | os.PathLike[str], flag: str | None = "--out") -> Path:
    """Create the folder ``path`` (and its parents) if it is not there; one that cannot be made is one line naming it."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        name = f"{flag} {folder}: cannot create it" if flag else f"cannot create {folder}"
        raise ResnetlabError(f"{name} ({exc.strerror}); choose a writable folder") from None
    return folder


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
