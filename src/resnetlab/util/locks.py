"""One process at a time: a run folder held by the process that writes it, and caches filled by one process.

Both are ``flock`` locks on a file, which the kernel drops when the holding process ends, however
it ends: a run killed with ``kill -9`` leaves its lock file behind but not its lock, so a stale lock
never blocks a resume. Where the file system has no locks (or Python has no ``fcntl``), both go on
without, as before.

- :func:`exclusive_lock` waits for the lock (a cache that a second process would fill again: the
  second waits, then finds it filled).
- :class:`RunLock` never waits: a second process that would write into a run folder in use (a
  second ``train --resume`` of a live run, two runs told the same ``--out``, an ``eval`` or
  ``export`` writing into the folder of a run that is training) is refused in one line naming
  the live process, and the live run goes on unharmed.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from ..errors import ResnetlabError

# The lock file in a run folder (hidden: it is not one of the run's results).
RUN_LOCK = ".lock"


def _open_lock_file(path: Path) -> int | None:
    """A descriptor of ``path`` to lock (a folder as it is, a file created), or None where locks cannot be had."""
    try:
        import fcntl  # noqa: F401 - only to learn whether this system has flock
    except ImportError:
        return None
    try:
        if path.is_dir():  # a folder is locked as itself: nothing is added to it
            return os.open(path, os.O_RDONLY)
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        return None


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (a lock file, created, or a folder) for the block, waiting for it; where
    none can be had, go on without."""
    fd = _open_lock_file(path)
    if fd is None:
        yield
        return
    import fcntl

    try:
        with contextlib.suppress(OSError):  # a file system without locks: each process on its own, as before
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _holder_text(command: str) -> str:
    """What the lock file says of its holder: pid, host, command, start (for the refusal's message)."""
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                       "since": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n"


def _describe_holder(path: Path) -> str:
    """The live holder as the refusal names it, from the lock file (written by the holder once it held the lock)."""
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
        where = "" if holder.get("host") == socket.gethostname() else f" on {holder['host']}"
        return f"process {int(holder['pid'])}{where} ({holder['command']}, since {holder['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"  # it holds the lock but has not yet written its name


class RunLock:
    """The lock of one run folder, held by the one process that writes into it.

    :meth:`acquire` takes it without waiting, or raises :class:`ResnetlabError` naming the live
    holder; :meth:`release` (or the process's end, however it ends) gives it back. Each
    acquisition is its own: a second one in the same process is refused too (two runs told the
    same folder from one notebook), so a holder must release what it took.
    """

    def __init__(self, folder: Path, fd: int | None) -> None:
        self.folder, self._fd = folder, fd

    @classmethod
    def acquire(cls, folder: str | os.PathLike[str], command: str | None = None, instead: str = "") -> "RunLock":
        """Take the lock of ``folder`` (which must exist) for ``command`` (default: this process's command line).

        ``instead``: another way out, said at the end of the refusal (", or write elsewhere with --out").
        """
        folder = Path(folder)
        path = folder / RUN_LOCK
        fd = _open_lock_file(path)
        if fd is not None:
            import fcntl

            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise ResnetlabError(
                    f"{folder} is in use by {_describe_holder(path)}; wait for it to end, or stop it (SIGINT or SIGTERM "
                    f"save its state) and try again{instead}") from None
            except OSError:  # a file system without locks: go on without, as before
                os.close(fd)
                fd = None
        if fd is not None:
            text = _holder_text(command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:200])
            os.ftruncate(fd, 0)
            os.pwrite(fd, text.encode(), 0)
        return cls(folder, fd)

    def release(self) -> None:
        """Give the lock back (the lock file stays: it is only ever locked, never removed, so no two processes race on it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        # A lock dropped without release (an exception between taking it and the caller's finally) is given back
        # when it is collected, not held until the process ends: a notebook can then use the folder again.
        self.release()


@contextlib.contextmanager
def holding_run_folder(folder: str | os.PathLike[str], command: str | None = None, instead: str = "") -> Iterator[RunLock]:
    """Hold ``folder``'s run lock for the block (:meth:`RunLock.acquire`)."""
    lock = RunLock.acquire(folder, command, instead)
    try:
        yield lock
    finally:
        lock.release()


def is_run_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a run: its lock, or a ``config.json`` beside a train state or weights."""
    return (folder / RUN_LOCK).is_file() or ((folder / "config.json").is_file() and any(
        (folder / name).is_file() for name in ("train_state.pt", "best.safetensors", "last.safetensors")))


def run_folder_around(path: str | os.PathLike[str]) -> Path | None:
    """The run folder that writing to ``path`` (a file or folder) writes into: ``path``'s folder or its parent
    when it holds a run (:func:`is_run_folder`); None otherwise."""
    path = Path(path)
    return next((folder for folder in (path.parent, path.parent.parent) if is_run_folder(folder)), None)


@contextlib.contextmanager
def writing_near_run(path: str | os.PathLike[str], command: str) -> Iterator[None]:
    """For the block, hold the lock of the run folder that ``path`` lies in, if it lies in one (eval, export, explain)."""
    folder = run_folder_around(path)
    if folder is None:
        yield
        return
    with holding_run_folder(folder, command, instead=", or write elsewhere with --out"):
        yield
