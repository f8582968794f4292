"""The class-folder cache: memory-mapped, equal to decoding each file, resumed after an interruption, progress in logs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import resnetlab.data.folder_cache as cache_module
from helpers import SHAPES, read_folder, write_shape_folder
from resnetlab.config import folder_side
from resnetlab.data.folder import read_split, stratified_split
from resnetlab.data.imageset import ImageSet
from resnetlab.data.images import read_image

REAL_DECODE = cache_module._decode  # what each counting wrapper wraps (not an earlier wrapper)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Each test gets its own cache folder."""
    monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path / "cache"))


def _folder(tmp_path, per_class=10):
    """Shapes of three sizes, with a truncated PNG first in circle/ (its header reads; decoding it fails)."""
    root = write_shape_folder(tmp_path / "d", per_class=per_class, sizes=(30, 32, 40))
    good = (root / "square" / "square000.png").read_bytes()
    (root / "circle" / "a-cut.png").write_bytes(good[: len(good) // 2])
    return root


def _finished(cache):
    return [p for p in cache.iterdir() if p.is_dir() and not p.name.startswith(".")]


def _mapped_file(tensor):
    """The file whose mapping holds ``tensor``'s first byte, from /proc/self/maps (None: in ordinary memory)."""
    address = tensor.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if start <= address < end:
            return fields[5] if len(fields) == 6 else None
    return None


def _counting_decode(monkeypatch, fail_after=None):
    """Count the calls of ``_decode``; with ``fail_after``, the later ones raise KeyboardInterrupt (Ctrl-C)."""
    calls = []

    def decode(*args):
        calls.append(args[0])
        if fail_after is not None and len(calls) > fail_after:
            raise KeyboardInterrupt
        return REAL_DECODE(*args)

    monkeypatch.setattr(cache_module, "_decode", decode)
    return calls


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/self/maps (Linux)")
def test_images_equal_decoding_each_file_and_are_mapped_from_the_cache(tmp_path, monkeypatch):
    root = _folder(tmp_path)
    data, skipped = read_split(root, list(SHAPES), image_size=None, channels=None, side_rule=folder_side)
    files = [(path, label) for label, name in enumerate(SHAPES) for path in sorted((root / name).rglob("*.png"))
             if path.name != "a-cut.png"]
    expected = torch.stack([read_image(path, 3, 32) for path, _ in files])  # RGB, the median side 32
    assert torch.equal(data.images, expected) and data.labels.tolist() == [label for _, label in files]
    assert len(skipped) == 1 and "a-cut.png" in skipped[0]
    monkeypatch.setattr(cache_module, "_decode", lambda *a: pytest.fail("decoded again"))
    monkeypatch.setattr(cache_module, "_probe", lambda *a: pytest.fail("probed again"))
    again, skipped_again = read_split(root, list(SHAPES), image_size=None, channels=None, side_rule=folder_side)
    assert torch.equal(again.images, expected) and torch.equal(again.labels, data.labels) and skipped_again == skipped
    (cache,) = _finished(tmp_path / "cache")
    assert _mapped_file(again.images) == str(cache / "images.u8")  # mapped, not read into memory
    # Downstream as before: the seeded split of the mapped images is that of the images decoded in memory.
    split = read_folder(root, seed=3)
    train, val = stratified_split(ImageSet(expected, data.labels.clone(), SHAPES), 0.2, 3)
    assert split.train.fingerprint() == train.fingerprint() and split.val.fingerprint() == val.fingerprint()
    # Copy-on-write: the tensor is writable (no warning from torch) and a write stays in this process.
    again.images[0] = 0
    assert torch.equal(read_split(root, list(SHAPES), image_size=None, channels=None, side_rule=folder_side)[0].images[0], expected[0])


def test_an_interrupted_decode_resumes_where_it_stopped(tmp_path, monkeypatch):
    root = _folder(tmp_path)
    monkeypatch.setattr(cache_module, "CHUNK", 4)
    calls = _counting_decode(monkeypatch, fail_after=8)  # two chunks (a-cut.png among them), then Ctrl-C
    with pytest.raises(KeyboardInterrupt):
        read_split(root, list(SHAPES), image_size=None, channels=None, side_rule=folder_side)
    cache = tmp_path / "cache"
    assert _finished(cache) == []  # nothing that looks finished
    (partial,) = [p for p in cache.iterdir() if p.name.endswith(".partial")]
    assert partial.name.startswith(".") and not (partial / "meta.json").exists()
    progress = json.loads((partial / "progress.json").read_text())
    assert (progress["next"], progress["count"], len(progress["skipped"])) == (8, 7, 1)

    calls = _counting_decode(monkeypatch)
    resumed, skipped = read_split(root, list(SHAPES), image_size=None, channels=None, side_rule=folder_side)
    assert len(calls) == 31 - 8  # only what was left
    assert not partial.exists() and len(_finished(cache)) == 1
    monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path / "other"))
    whole, skipped_whole = read_split(root, list(SHAPES), image_size=None, channels=None, side_rule=folder_side)
    assert torch.equal(resumed.images, whole.images) and torch.equal(resumed.labels, whole.labels)
    assert skipped == skipped_whole and len(skipped) == 1 and len(resumed) == 30


def test_a_decode_of_other_files_is_not_resumed(tmp_path, monkeypatch):
    root = _folder(tmp_path)
    monkeypatch.setattr(cache_module, "CHUNK", 4)
    _counting_decode(monkeypatch, fail_after=4)
    with pytest.raises(KeyboardInterrupt):
        read_split(root, list(SHAPES), image_size=None, channels=None, side_rule=folder_side)
    (root / "square" / "square009.png").unlink()  # the listing changes: the recorded chunk is stale
    calls = _counting_decode(monkeypatch)
    data, _ = read_split(root, list(SHAPES), image_size=None, channels=None, side_rule=folder_side)
    assert len(calls) == 30 and len(data) == 29
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.name.endswith(".partial")] == []


def test_progress_lines_in_logs_for_large_folders_only(tmp_path, monkeypatch, capsys):
    root = _folder(tmp_path)
    read_split(root, list(SHAPES), image_size=16, channels=1)
    assert capsys.readouterr().err == ""  # a small folder decodes silently
    monkeypatch.setattr(cache_module, "PROGRESS_FROM", 10)
    monkeypatch.setattr(cache_module, "CHUNK", 8)
    read_split(root, list(SHAPES), image_size=None, channels=None, side_rule=folder_side)
    lines = capsys.readouterr().err.splitlines()  # stderr is not a terminal here: lines, no bar
    assert len(lines) == 5, lines  # the headers, after 8, 16 and 24 of 31 images (10 % apart), then the total
    assert lines[0] == f"reading the headers of 31 files of {root}"  # a-cut.png among them: its header reads
    assert re.fullmatch(rf"decoding 31 images of {re.escape(str(root))}: 8 \(26%\), [\d,]+ images/s, about \d+ s left",
                        lines[1]), lines[1]
    assert re.fullmatch(rf"decoded 31 images of {re.escape(str(root))} in \d+ s \([\d,]+ images/s\)", lines[-1]), lines[-1]


def test_a_damaged_or_old_cache_is_rebuilt_and_an_unwritable_or_full_one_only_costs_time(tmp_path, monkeypatch):
    root = _folder(tmp_path)
    first, _ = read_split(root, list(SHAPES), image_size=None, channels=None, side_rule=folder_side)
    (cache,) = _finished(tmp_path / "cache")
    meta = json.loads((cache / "meta.json").read_text())
    (cache / "meta.json").write_text(json.dumps({**meta, "format": "resnetlab.folder-cache/2"}))
    calls = _counting_decode(monkeypatch)
    again, _ = read_split(root, list(SHAPES), image_size=None, channels=None, side_rule=folder_side)
    assert len(calls) == 31 and torch.equal(again.images, first.images)
    with open(cache / "images.u8", "ab") as f:
        f.write(b"\0")  # a file of the wrong length is not mapped
    calls.clear()
    read_split(root, list(SHAPES), image_size=None, channels=None, side_rule=folder_side)
    assert len(calls) == 31
    (tmp_path / "blocked").write_text("a file, not a folder")
    monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path / "blocked"))
    in_memory, skipped = read_split(root, list(SHAPES), image_size=None, channels=None, side_rule=folder_side)
    assert torch.equal(in_memory.images, first.images) and len(skipped) == 1

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path / "full"))
    monkeypatch.setattr(os, "posix_fallocate", full_disk, raising=False)
    in_memory, _ = read_split(root, list(SHAPES), image_size=None, channels=None, side_rule=folder_side)
    assert torch.equal(in_memory.images, first.images) and _finished(tmp_path / "full") == []
    assert [p for p in (tmp_path / "full").iterdir() if p.name.endswith(".partial")] == []


def test_the_listing_scan_keeps_rglobs_files_and_order(tmp_path):
    root = tmp_path / "c"
    for name in ("a/b", "a-b/c", "a/.hidden", ".dot/x", "z/y/deep", "a/B"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(name)
    (root / "link").symlink_to(root / "a")  # a link to a folder is not followed, as rglob does not
    expected = [str(p) for p in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))]
    assert [path for path, _, _ in cache_module._files(root)] == expected


KILLED_DECODE = """
import os, signal, sys
from pathlib import Path
import resnetlab.data.folder_cache as cache_module
real, calls = cache_module._decode, []
def decode(*args):
    calls.append(args)
    if len(calls) > 8:
        os.kill(os.getpid(), signal.SIGKILL)  # no finally, no flush: as the OOM killer or kill -9 would
    return real(*args)
cache_module.CHUNK, cache_module._decode = 4, decode
from resnetlab.config import folder_side
cache_module.read_split(Path(sys.argv[1]), sys.argv[2:], image_size=None, channels=None, side_rule=folder_side)
"""


def test_a_killed_decode_resumes_where_it_stopped(tmp_path, monkeypatch):
    root = _folder(tmp_path)
    src = str(Path(cache_module.__file__).parents[2])
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", KILLED_DECODE, str(root), *SHAPES], env=env, timeout=120)
    assert done.returncode == -signal.SIGKILL
    assert _finished(tmp_path / "cache") == []
    calls = _counting_decode(monkeypatch)
    resumed, skipped = read_split(root, list(SHAPES), image_size=None, channels=None, side_rule=folder_side)
    assert len(calls) == 31 - 8 and len(resumed) == 30 and len(skipped) == 1
    monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path / "other"))
    assert torch.equal(read_split(root, list(SHAPES), image_size=None, channels=None, side_rule=folder_side)[0].images, resumed.images)
