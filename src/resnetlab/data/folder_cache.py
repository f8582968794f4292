"""Decoding a class folder's split once, into a memory-mapped cache: :func:`read_split`.

The cache is a folder per split, image size and channel count: ``<key>-<listing>/`` in
:func:`cache_dir`, holding ``images.u8`` (the images as one raw uint8 array [N, C, S, S], no
header), ``labels.i64`` (raw int64 [N]) and ``meta.json`` (format, listing hash, class names,
count, size, channels, skipped files). The images are memory-mapped copy-on-write (numpy's
``memmap`` mode "c"), not read: opening a split costs nothing until its pages are touched, and
a data set larger than RAM is paged by the system. A raw array rather than ``.npy`` or
safetensors: the file can be preallocated, written in place and truncated to the images
actually decoded, and its shape lives in the JSON. It is used again while the split's files are
unchanged (same names, sizes and modification times: the listing hash, also in the folder's
name) and rebuilt otherwise.

Decoding writes in chunks of :data:`CHUNK` images straight into the preallocated files of a
temporary folder ``.<key>-<listing>.partial/``, recording after each chunk (flushed first) how far
it got in ``progress.json`` (atomically: next file, images written, files skipped); what to decode
(the readable files, size, channels) is fixed once in ``plan.json``, and the labels go into their
preallocated file like the images (in the JSON they would be rewritten whole after every chunk). A decode interrupted (Ctrl-C, kill) continues from its last chunk
when the same files are opened again. Finished, the files are truncated to the images decoded
(skipped files leave no gap) and the folder is renamed into place, so a cache folder is always
whole. One process decodes a split at a time (a lock file; other torchrun ranks wait and then
map it). A cache that cannot be written only costs time: the split is decoded into memory.
Large folders show a progress bar on a terminal and a line every 10 s or 10 % in logs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..util.fileio import atomic_path
from ..util.locks import exclusive_lock
from ..util.log import progress_bar
from .images import GRAY_MODES, ImageError, probe_image, read_image
from .imageset import ImageSet

# How a caller decides the side of images decoded at "their own" size: the readable images' sides -> a side.
SideRule = Callable[[list[int]], int]
# 3: a folder with a memory-mapped raw array (2, one safetensors file: ignored, rebuilt); 2: 16-bit gray scaled, not clipped
CACHE_FORMAT = "resnetlab.folder-cache/3"
CHUNK = 1024  # images decoded between two progress records: an interrupted decode redoes at most this many
PROGRESS_FROM = 2000  # smaller splits decode silently (tests, small runs), in a second or two anyway
PROGRESS_EVERY_S = 10.0  # in logs, a line at most this often (or every 10 %)
PARTIAL_SUFFIX = ".partial"


def cache_dir() -> Path:
    """Where decoded data sets are cached: ``$RESNETLAB_CACHE``, else ``$XDG_CACHE_HOME/resnetlab``, else ``~/.cache/resnetlab``."""
    if os.environ.get("RESNETLAB_CACHE"):
        return Path(os.environ["RESNETLAB_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "resnetlab"


def _files(folder: Path) -> list[tuple[str, int, int]]:
    """(path, size, mtime_ns) of the files under ``folder`` but those named ``.*``, in the order paths sort.

    One ``os.scandir`` walk and one stat a file (``rglob`` with ``is_file`` and ``stat`` took two,
    and a Path each): 20,000 empty files in 0.13-0.18 s against 0.52-0.59 s (AMD EPYC, 2026-12-01).
    Like ``rglob``, it does not follow symbolic links to folders.
    """
    found, stack = [], [str(folder)]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                listed = list(entries)
        except OSError:
            continue  # an unreadable subfolder is left out, as rglob leaves it
        for entry in listed:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif not entry.name.startswith(".") and entry.is_file():
                    st = entry.stat()
                    found.append((entry.path, st.st_size, st.st_mtime_ns))
            except OSError:
                continue  # gone since it was listed
    # Path order (component by component), not string order: "a/b" before "a-b/c", as sorted(rglob()) gave.
    found.sort(key=lambda f: f[0].split(os.sep))
    return found


def _listing_hash(items: list[tuple[str, int, int, int]], class_names: list[str]) -> str:
    digest = hashlib.sha256(json.dumps(class_names).encode())
    for path, label, size, mtime in items:
        digest.update(f"{path}\0{label}\0{size}\0{mtime}\n".encode())
    return digest.hexdigest()


def _probe(path: str) -> tuple[str, int, int] | str:
    """(mode, width, height) from the header, or the reason the file is not an image."""
    try:
        return probe_image(path)
    except ImageError as exc:
        return exc.reason


def _decode(path: str, size: int, channels: int) -> np.ndarray | str:
    """The image as uint8 [C, size, size], or the reason it cannot be decoded (a truncated file, say)."""
    try:
        return read_image(path, channels, size).numpy()
    except ImageError as exc:
        return exc.reason


# Threads, not processes: Pillow's decoders and resize release the GIL, and a process pool pickles
# every image back. 400 synthetic 128 px RGB files (blurred noise), 2 threads against a pool of 2
# processes, best of 3, on 2 cores of an AMD EPYC (2026-12-01, another job running: noisy figures):
# JPEG to 96 px 1,990 against 1,250 images/s, to 128 px 1,890 against 250; PNG to 96 px 1,120
# against 640, to 128 px 1,340 against 640.
def _threads() -> int:
    return max(1, min(16, os.cpu_count() or 1))


def read_split(
    folder: Path,
    class_names: list[str],
    *,
    image_size: int | None,
    channels: int | None,
    side_rule: SideRule | None = None,
) -> tuple[ImageSet, list[str]]:
    """Decode (or map from the cache) the images under ``folder/<class>/``; return them and the skipped files.

    ``image_size`` None: ``side_rule`` of the readable images' sides (the caller's recipe decides);
    ``channels`` None: grayscale only if every image is.
    """
    items = [(path, label, size, mtime) for label, name in enumerate(class_names) if (folder / name).is_dir()
             for path, size, mtime in _files(folder / name)]
    listing = _listing_hash(items, class_names)
    found = _lookup(folder, image_size, channels, listing)
    if found is not None:
        return found
    with exclusive_lock(cache_dir() / f".{_cache_key(folder, image_size, channels)}.lock"):
        # Another process (a torchrun rank, say) may have decoded it while this one waited for the lock.
        found = _lookup(folder, image_size, channels, listing)
        if found is not None:
            return found
        return _decode_split(folder, items, class_names, listing, image_size, channels, side_rule)


def _lookup(folder: Path, image_size: int | None, channels: int | None, listing: str) -> tuple[ImageSet, list[str]] | None:
    # Left to the data, the size and channels are found again from the alias of the last decoding,
    # so a run and a later eval (which asks for them by number) share one cache.
    if None in (image_size, channels):
        image_size, channels = _read_alias(_alias_path(folder, image_size, channels), listing) or (image_size, channels)
        if None in (image_size, channels):
            return None
    return _read_cache(_cache_path(folder, image_size, channels, listing), listing)


def _cache_key(folder: Path, image_size: int | None, channels: int | None) -> str:
    return hashlib.sha256(f"{folder.resolve()}\0{image_size}\0{channels}".encode()).hexdigest()[:24]


def _cache_path(folder: Path, image_size: int, channels: int, listing: str) -> Path:
    return cache_dir() / f"{_cache_key(folder, image_size, channels)}-{listing[:16]}"


def _alias_path(folder: Path, image_size: int | None, channels: int | None) -> Path:
    return cache_dir() / f"{_cache_key(folder, image_size, channels)}.json"


def _read_alias(path: Path, listing: str) -> tuple[int, int] | None:
    try:
        values = json.loads(path.read_text())
        if values.get("listing") == listing:
            return int(values["image_size"]), int(values["channels"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # missing or damaged: decide again
    return None


def _write_alias(path: Path, listing: str, image_size: int, channels: int) -> None:
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({"listing": listing, "image_size": image_size, "channels": channels}))
    except Exception:  # like the cache: one that cannot be written only costs time  # noqa: BLE001
        pass


def _map_images(path: Path, count: int, channels: int, size: int) -> torch.Tensor:
    """The images file as a tensor over a copy-on-write map: pages are read when touched, writes stay private."""
    if count == 0:
        return torch.empty(0, channels, size, size, dtype=torch.uint8)  # an empty file cannot be mapped
    return torch.from_numpy(np.memmap(path, dtype=np.uint8, mode="c", shape=(count, channels, size, size)))


def _read_cache(path: Path, listing: str) -> tuple[ImageSet, list[str]] | None:
    try:
        meta = json.loads((path / "meta.json").read_text())
        if meta.get("format") != CACHE_FORMAT or meta.get("listing") != listing:
            return None  # another version of the folder, or of this format: rebuild
        count, channels, size = int(meta["count"]), int(meta["channels"]), int(meta["image_size"])
        # A file of another length is damaged; mapping it could fault on pages past its end.
        if (path / "images.u8").stat().st_size != count * channels * size * size or (path / "labels.i64").stat().st_size != 8 * count:
            return None
        labels = torch.from_numpy(np.fromfile(path / "labels.i64", dtype=np.int64))
        data = ImageSet(_map_images(path / "images.u8", count, channels, size), labels, tuple(meta["class_names"]))
        return data, list(meta["skipped"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # missing or damaged: rebuild


@dataclass
class _Decoding:
    """A decode in progress: what to decode (``good``, positions in the listing) and how far it got."""

    image_size: int
    channels: int
    good: list[int]
    skipped: list[str]  # found while probing and decoding so far
    images: np.ndarray | None  # [len(good), C, S, S]: mapped in the temporary folder, or in memory without a cache
    labels: np.ndarray | None  # None once the files are published
    folder: Path | None  # the temporary folder; None: in memory
    next: int = 0  # the next position in ``good``
    count: int = 0  # images written
    planned: int = 0  # how many of ``skipped`` were found while probing (recorded in plan.json, not progress.json)


def _decode_split(folder: Path, items: list, class_names: list[str], listing: str,
                  image_size: int | None, channels: int | None, side_rule: SideRule | None) -> tuple[ImageSet, list[str]]:
    """Decode the split chunk by chunk (continuing an interrupted decode of the same files), then publish it."""
    partial = cache_dir() / f".{_cache_key(folder, image_size, channels)}-{listing[:16]}{PARTIAL_SUFFIX}"
    with ThreadPoolExecutor(_threads()) as pool:
        state = _resume(partial, listing)
        resumed = state is not None and state.next > 0
        if state is None:
            if len(items) >= PROGRESS_FROM:
                print(f"reading the headers of {len(items):,} files of {folder}", file=sys.stderr, flush=True)
            state = _start(partial, listing, _plan(items, image_size, channels, side_rule, pool))
        progress = _Progress(len(state.good), state.next, folder)
        if resumed:
            progress.say(f"resuming the decoding of {folder} at {state.next:,} of {len(state.good):,} images")
        try:
            while state.next < len(state.good):
                _decode_chunk(items, state, pool)
                progress.update(state.next)
        finally:
            progress.close()
    return _finish(state, folder, class_names, listing, image_size, channels)


def _plan(items: list, image_size: int | None, channels: int | None, side_rule: SideRule | None,
          pool: ThreadPoolExecutor) -> tuple[list[int], list[str], int, int]:
    """Which files to decode (those whose header reads), the files skipped, and the size and channels."""
    probes = list(pool.map(_probe, [item[0] for item in items]))
    skipped = [f"{item[0]} ({probe})" for item, probe in zip(items, probes) if isinstance(probe, str)]
    good = [i for i, probe in enumerate(probes) if not isinstance(probe, str)]
    if channels is None:
        channels = 1 if good and all(probes[i][0] in GRAY_MODES for i in good) else 3
    if image_size is None:
        sides = [side for i in good for side in probes[i][1:]]
        if side_rule is None:
            raise AssertionError("read_split: no image_size and no side_rule to decide it")  # a caller's bug
        image_size = side_rule(sides)
    return good, skipped, image_size, channels


def _start(partial: Path, listing: str, plan: tuple[list[int], list[str], int, int]) -> _Decoding:
    """A new decode into the temporary folder ``partial`` (preallocated), or into memory if it cannot be written."""
    good, skipped, size, channels = plan
    shape = (len(good), channels, size, size)
    try:
        _clear_partials(partial)
        partial.mkdir(parents=True)
        images, labels = (_preallocate(partial / name, dtype, shape[:n])
                          for name, dtype, n in (("images.u8", np.uint8, 4), ("labels.i64", np.int64, 1)))
        plan_json = {"format": CACHE_FORMAT, "listing": listing, "image_size": size, "channels": channels,
                     "good": good, "skipped": skipped}
        with atomic_path(partial / "plan.json") as tmp:
            tmp.write_text(json.dumps(plan_json))
        return _Decoding(size, channels, good, list(skipped), images, labels, partial, planned=len(skipped))
    except Exception:  # a cache that cannot be written only costs time  # noqa: BLE001
        shutil.rmtree(partial, ignore_errors=True)
        return _Decoding(size, channels, good, list(skipped), np.empty(shape, np.uint8), np.empty(len(good), np.int64), None)


def _preallocate(path: Path, dtype: type, shape: tuple[int, ...]) -> np.ndarray:
    """A zero-filled file of ``shape`` mapped for writing; a size of 0 cannot be mapped, so it is in memory."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    with open(path, "wb") as f:
        f.truncate(size)
        if size and hasattr(os, "posix_fallocate"):
            # Its blocks reserved now: a full disk is an OSError here (and a decode into memory), not
            # a SIGBUS that kills the process when a write into the map finds no space.
            os.posix_fallocate(f.fileno(), 0, size)
    return np.memmap(path, dtype=dtype, mode="r+", shape=shape) if np.prod(shape) else np.empty(shape, dtype)


def _clear_partials(partial: Path) -> None:
    """Remove the temporary folders of this split's earlier listings: their files changed, they cannot be resumed."""
    key = partial.name[1:].rsplit("-", 1)[0]
    for stale in partial.parent.glob(f".{key}-*{PARTIAL_SUFFIX}"):
        shutil.rmtree(stale, ignore_errors=True)


def _resume(partial: Path, listing: str) -> _Decoding | None:
    """The interrupted decode recorded in ``partial``, if it is one of these files and whole; else None (its folder removed)."""
    if not partial.is_dir():
        return None
    try:
        plan = json.loads((partial / "plan.json").read_text())
        if plan["format"] != CACHE_FORMAT or plan["listing"] != listing:
            raise ValueError("another decode")
        good, size, channels = [int(i) for i in plan["good"]], int(plan["image_size"]), int(plan["channels"])
        done = json.loads((partial / "progress.json").read_text()) if (partial / "progress.json").exists() else {}
        next_, count = int(done.get("next", 0)), int(done.get("count", 0))
        shape = (len(good), channels, size, size)
        if not 0 <= count <= next_ <= len(good) or (partial / "images.u8").stat().st_size != int(np.prod(shape)) \
                or (partial / "labels.i64").stat().st_size != 8 * len(good):
            raise ValueError("damaged")
        images = np.memmap(partial / "images.u8", np.uint8, "r+", shape=shape) if len(good) else np.empty(shape, np.uint8)
        labels = np.memmap(partial / "labels.i64", np.int64, "r+", shape=(len(good),)) if len(good) else np.empty(0, np.int64)
        skipped = list(plan["skipped"]) + list(done.get("skipped", []))
        return _Decoding(size, channels, good, skipped, images, labels, partial, next_, count, len(plan["skipped"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        shutil.rmtree(partial, ignore_errors=True)  # damaged or stale: start over
        return None


def _decode_chunk(items: list, state: _Decoding, pool: ThreadPoolExecutor) -> None:
    """Decode the next :data:`CHUNK` images into ``state``'s files, then record how far it got (in the cache)."""
    chunk = state.good[state.next:state.next + CHUNK]
    for i, array in zip(chunk, pool.map(lambda i: _decode(items[i][0], state.image_size, state.channels), chunk)):
        if isinstance(array, str):
            state.skipped.append(f"{items[i][0]} ({array})")
        else:
            state.images[state.count] = array
            state.labels[state.count] = items[i][1]
            state.count += 1
    state.next += len(chunk)
    if state.folder is not None and state.next < len(state.good):  # after the last chunk, publishing follows
        _record(state)


def _record(state: _Decoding) -> None:
    """Flush the chunk to disk, then say so in ``progress.json``: a crash between the two only redoes the chunk."""
    try:
        for array in (state.images, state.labels):
            if isinstance(array, np.memmap):
                array.flush()
        with atomic_path(state.folder / "progress.json") as tmp:
            tmp.write_text(json.dumps({"next": state.next, "count": state.count, "skipped": state.skipped[state.planned:]}))
    except Exception:  # noqa: BLE001  a full disk, say: the decode goes on; an interruption then starts over
        pass


def _finish(state: _Decoding, folder: Path, class_names: list[str], listing: str,
            image_size: int | None, channels: int | None) -> tuple[ImageSet, list[str]]:
    """Truncate the files to the images decoded, rename the folder into place and map it (in memory without a cache)."""
    names = tuple(class_names)
    if state.folder is None:
        # Views, not copies: the rows past ``count`` (skipped files) were never touched, so never allocated.
        return ImageSet(torch.from_numpy(state.images[:state.count]), torch.from_numpy(state.labels[:state.count]), names), state.skipped
    final = _cache_path(folder, state.image_size, state.channels, listing)
    try:
        return _publish(state, final, class_names, listing, folder, image_size, channels)
    except Exception:  # noqa: BLE001  the cache could not be finished: the rows are in its files all the same
        where = state.folder if state.folder.is_dir() else final
        labels = torch.from_numpy(np.fromfile(where / "labels.i64", dtype=np.int64, count=state.count))
        return ImageSet(_map_images(where / "images.u8", state.count, state.channels, state.image_size), labels, names), state.skipped


def _publish(state: _Decoding, final: Path, class_names: list[str], listing: str, folder: Path,
             image_size: int | None, channels: int | None) -> tuple[ImageSet, list[str]]:
    """Make the temporary folder a finished cache at ``final`` (durably, then renamed) and map it from there."""
    row = state.channels * state.image_size ** 2
    for array in (state.images, state.labels):
        if isinstance(array, np.memmap):
            array.flush()
    state.images = state.labels = None  # unmapped before the files shrink
    os.truncate(state.folder / "images.u8", state.count * row)
    os.truncate(state.folder / "labels.i64", state.count * 8)
    meta = {"format": CACHE_FORMAT, "listing": listing, "class_names": list(class_names), "count": state.count,
            "image_size": state.image_size, "channels": state.channels, "skipped": state.skipped}
    (state.folder / "meta.json").write_text(json.dumps(meta))
    for name in ("plan.json", "progress.json"):
        (state.folder / name).unlink(missing_ok=True)
    for name in ("images.u8", "labels.i64", "meta.json"):
        with open(state.folder / name, "rb+") as f:
            os.fsync(f.fileno())
    _replace_folder(state.folder, final)
    if None in (image_size, channels):
        _write_alias(_alias_path(folder, image_size, channels), listing, state.image_size, state.channels)
    _remove_other_listings(final)
    found = _read_cache(final, listing)
    if found is None:
        raise OSError("the cache just written does not read back")
    return found


def _replace_folder(source: Path, target: Path) -> None:
    """Rename the folder ``source`` to ``target``, moving a damaged ``target`` aside first (a rename cannot replace a full folder)."""
    if target.exists():
        aside = target.with_name(f".{target.name}.{os.getpid()}.old")
        os.rename(target, aside)
        shutil.rmtree(aside, ignore_errors=True)  # a process that maps it keeps its pages
    os.rename(source, target)


def _remove_other_listings(final: Path) -> None:
    """Remove the caches of this split's earlier listings (and its format-2 file): they will not be used again."""
    key = final.name.rsplit("-", 1)[0]
    (final.parent / f"{key}.safetensors").unlink(missing_ok=True)
    for stale in final.parent.glob(f"{key}-*"):
        if stale != final and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


class _Progress:
    """Decoding's progress on stderr: a tqdm bar on a terminal, else a line every 10 s or 10 %; silent for small splits."""

    def __init__(self, total: int, done: int, folder: Path) -> None:
        self.total, self.folder, self.quiet = total, folder, total < PROGRESS_FROM
        self.first, self.started = done, time.monotonic()
        self.shown, self.shown_at = done, self.started
        self.bar = None if self.quiet else progress_bar(None, total, done, f"decoding {folder}", unit="img")

    def say(self, line: str) -> None:
        """Print ``line`` (on stderr, as the bar) unless the split is small."""
        if not self.quiet:
            print(line, file=sys.stderr, flush=True)

    def update(self, done: int) -> None:
        """``done`` of the images are decoded (or skipped)."""
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.update(done - self.shown)
            self.shown = done
            return
        now = time.monotonic()
        if done < self.total and now - self.shown_at < PROGRESS_EVERY_S and done - self.shown < self.total / 10:
            return
        self.shown, self.shown_at = done, now
        rate = (done - self.first) / max(now - self.started, 1e-9)
        if done >= self.total:
            self.say(f"decoded {self.total:,} images of {self.folder} in {_duration(now - self.started)} ({rate:,.0f} images/s)")
        else:
            self.say(f"decoding {self.total:,} images of {self.folder}: {done:,} ({done / self.total:.0%}), "
                     f"{rate:,.0f} images/s, about {_duration((self.total - done) / max(rate, 1e-9))} left")

    def close(self) -> None:
        """Take the bar off the terminal."""
        if self.bar is not None:
            self.bar.close()


def _duration(seconds: float) -> str:
    """``seconds`` in words: "45 s", "12 min", "3.5 h"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"
