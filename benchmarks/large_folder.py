"""Class folders of growing size, past memory: decoding, its cache, resuming it, and training streamed or resident (issue 22).

For each size (default 10,000, 50,000 and 200,000 images) it makes a synthetic class folder
(``ROOT/folders/<size>-<side>px-<format>/``, the ``train/`` + ``val/`` layout with ``--val-share``
of the images in ``val/``): ten classes of random textures and shapes (stripes at three angles,
checks, disc, ring, square, triangle, dots, blobs) in random colours with pixel noise, drawn from
``--seed`` by two processes, and reused on later runs once complete. Then, each in a fresh
``RESNETLAB_CACHE`` and in its own process:

- the cold decode: ``open_dataset(FOLDER, image_size=SIDE)``, timed inside the process (the
  files were just written or read, so they are likely in the page cache: this is decoding, not
  the disk); images/s; the cache's size on disk;
- an interrupted decode: the same, sent SIGINT (``--interrupt kill``: SIGKILL) once
  ``progress.json`` in the cache's ``.partial`` folder says ``--interrupt-at`` of the training
  split is done, then run again: the images it had left and the time the rest took. Its finished
  cache is the one training maps (the cold one is removed first, so the disk holds one at a time);
- training: ``resnetlab train --data FOLDER --image-size SIDE --epochs 1 --time-budget MINUTES
  --batch-size B`` once per ``--feeds`` (``stream``, ``resident``; resident only where the decoded
  splits take at most half of the memory available). The whole folder's cache is mapped and the
  epoch's order runs over all of it; the budget bounds the steps. The table gives the training
  images/s the run reports (steps only) and the peak memory of its processes, polled every 0.2 s
  in ``/proc/PID/status``: anonymous memory (``RssAnon``: what the process itself holds; it
  should stay flat for ``stream`` as the folder grows) and the high-water mark of the resident
  set (``VmHWM``: anonymous plus mapped file pages, which the kernel can drop);
- with ``--memory-limit 2G``: the streamed training of the largest folder once more, inside a
  memory cgroup (v1) of that limit, smaller than the decoded data: its exit status and images/s.

A size whose folder and cache do not fit on the disk (``shutil.disk_usage`` of ``--root``) is
skipped with a line. Folders are kept (for the next run); caches and run folders are removed
unless ``--keep``. Code older than ``train --feed`` gets one training row, its own way
(``--src OTHER/src`` runs another checkout for a before/after). Run it alone: on 2 cores anything
else running changes every figure.

    python benchmarks/large_folder.py [--sizes 10000 50000 200000] [--side 96] [--format jpeg]
        [--root /tmp/resnetlab-large] [--feeds stream,resident] [--minutes 1.5] [--batch-size 64]
        [--memory-limit 2G] [--interrupt int|kill] [--keep] [--src OTHER/src]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

CLASSES = ("h-stripes", "v-stripes", "diagonal", "checks", "disc", "ring", "square", "triangle", "dots", "blobs")
GENERATE_CHUNK = 500  # images a generating task writes
POLL_S = 0.2  # memory of a training process, read this often
MARGIN = 1 << 30  # disk kept free beyond what a size needs
JPEG_BYTES, PNG_BYTES = 0.25, 1.0  # a file's size per decoded byte, for the disk check (noise compresses badly)

# Run in a child process with RESNETLAB_CACHE set: decode (or map) the folder as training will, timed inside.
DECODE = """
import json, signal, sys, time
# A process started in the background inherits SIGINT ignored, and Python then keeps it so: Ctrl-C's own handler back.
signal.signal(signal.SIGINT, signal.default_int_handler)
from resnetlab.data import open_dataset
start = time.perf_counter()
splits = open_dataset(sys.argv[1], image_size=int(sys.argv[2]), channels=None, val_split=0, val_fraction=0.02, seed=0)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "train": len(splits.train), "val": len(splits.val)}))
"""


# --- the synthetic folder -------------------------------------------------------------------


def _pattern(label: int, rng: np.random.Generator, side: int) -> np.ndarray:
    """Class ``label``'s drawing as a float mask [side, side] in [0, 1] (where the foreground colour goes)."""
    y, x = (np.mgrid[0:side, 0:side].astype(np.float32) + 0.5) / side
    name = CLASSES[label]
    if name in ("h-stripes", "v-stripes", "diagonal"):
        angle = {"h-stripes": np.pi / 2, "v-stripes": 0.0, "diagonal": np.pi / 4}[name] + rng.uniform(-0.15, 0.15)
        wave = np.sin(2 * np.pi * rng.uniform(3, 7) * (x * np.cos(angle) + y * np.sin(angle)) + rng.uniform(0, 2 * np.pi))
        return 0.5 + 0.5 * wave
    if name == "checks":
        f, (px, py) = rng.uniform(2.5, 5), rng.uniform(0, 1, 2)
        return (np.floor(f * x + px) + np.floor(f * y + py)) % 2
    if name == "blobs":  # smooth noise: a coarse random grid enlarged bicubically
        grid = Image.fromarray((rng.random((5, 5)) * 255).astype(np.uint8))
        return np.asarray(grid.resize((side, side), Image.BICUBIC), np.float32) / 255
    if name == "dots":
        mask = np.zeros((side, side), bool)
        for cx, cy, r in zip(*rng.uniform(0.08, 0.92, (2, rng.integers(6, 14))), rng.uniform(0.03, 0.06, 14)):
            mask |= (x - cx) ** 2 + (y - cy) ** 2 < r * r
        return mask
    (cx, cy), r = rng.uniform(0.35, 0.65, 2), rng.uniform(0.18, 0.3)
    if name == "disc":
        return (x - cx) ** 2 + (y - cy) ** 2 < r * r
    if name == "ring":
        return np.abs(np.sqrt((x - cx) ** 2 + (y - cy) ** 2) - r) < 0.25 * r
    if name == "square":
        return np.maximum(np.abs(x - cx), np.abs(y - cy)) < 0.8 * r
    # triangle, point up: the half-width grows from 0 at the apex to r at the base
    return (y >= cy - r) & (y <= cy + r) & (np.abs(x - cx) <= (y - (cy - r)) / 2)


def draw(label: int, side: int, rng: np.random.Generator) -> np.ndarray:
    """One image of class ``label``: its pattern in two random colours of some contrast, with pixel noise; uint8 [side, side, 3]."""
    mask = np.asarray(_pattern(label, rng, side), np.float32)[..., None]
    fg, bg = rng.integers(0, 256, (2, 3)).astype(np.float32)
    if np.abs(fg - bg).mean() < 60:
        bg = 255 - fg
    image = bg + (fg - bg) * mask + rng.normal(0, 10, (side, side, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def _write_images(task: tuple) -> int:
    """A worker's task: images ``start``..``stop`` of one class of one split, each from its own seed; returns how many."""
    folder, split, label, start, stop, side, fmt, seed = task
    target = Path(folder) / split / CLASSES[label]
    for i in range(start, stop):
        rng = np.random.default_rng((seed, split == "val", label, i))
        image = Image.fromarray(draw(label, side, rng))
        if fmt == "jpeg":
            image.save(target / f"{i:06d}.jpg", quality=90)
        else:
            image.save(target / f"{i:06d}.png", compress_level=1)
    return stop - start


def split_counts(size: int, val_share: float) -> dict[str, list[int]]:
    """Images per class in ``train`` and ``val`` for ``size`` in all (``val_share`` of them, at least one a class, in ``val``)."""
    per_class = [size // len(CLASSES) + (k < size % len(CLASSES)) for k in range(len(CLASSES))]
    val = [max(1, round(n * val_share)) for n in per_class]
    return {"train": [n - v for n, v in zip(per_class, val)], "val": val}


def make_folder(root: Path, size: int, side: int, fmt: str, seed: int, val_share: float) -> tuple[Path, float | None]:
    """The folder of ``size`` images (made by two processes unless a complete one is there) and the seconds making it took (None: reused)."""
    folder = root / "folders" / f"{size}-{side}px-{fmt}"
    recipe = {"size": size, "side": side, "format": fmt, "seed": seed, "val_share": val_share, "classes": list(CLASSES)}
    done = folder.with_name(folder.name + ".json")  # written last: its presence means the folder is whole
    with contextlib.suppress(OSError, ValueError):
        if json.loads(done.read_text()) == recipe:
            return folder, None
    done.unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)
    tasks = []
    for split, counts in split_counts(size, val_share).items():
        for label, count in enumerate(counts):
            (folder / split / CLASSES[label]).mkdir(parents=True)
            tasks += [(str(folder), split, label, start, min(count, start + GENERATE_CHUNK), side, fmt, seed)
                      for start in range(0, count, GENERATE_CHUNK)]
    start = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(2) as pool:
        written = sum(pool.imap_unordered(_write_images, tasks))
    assert written == size, (written, size)
    done.write_text(json.dumps(recipe))
    return folder, time.perf_counter() - start


def tree_bytes(path: Path) -> int:
    """The sizes of the files under ``path``, added up."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# --- processes and their memory ---------------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    """``pid`` and the processes under it, from every process's parent in ``/proc/*/stat`` (kernels may lack ``children`` files)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])  # after the name, which may hold spaces
                children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo += children.get(found[-1], [])
    return found


def _status_kb(pid: int) -> dict[str, int]:
    """The ``kB`` fields of ``/proc/PID/status`` (VmRSS, VmHWM, RssAnon, RssFile, ...); empty once the process is gone."""
    fields = {}
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                name, _, value = line.partition(":")
                if value.strip().endswith("kB"):
                    fields[name] = int(value.split()[0])
    return fields


def run_polled(command: list[str], env: dict[str, str]) -> dict:
    """Run ``command``; its exit status, output, wall time and the peaks (bytes, summed over its processes) of RssAnon and VmHWM."""
    peaks = {"RssAnon": 0, "VmHWM": 0}
    start = time.perf_counter()
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as child:
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(child.stdout), daemon=True)  # a full pipe would stop it
        reader.start()
        while child.poll() is None:
            statuses = [_status_kb(p) for p in _descendants(child.pid)]
            for name in peaks:
                peaks[name] = max(peaks[name], 1024 * sum(s.get(name, 0) for s in statuses))
            time.sleep(POLL_S)
        reader.join()
    return {"rc": child.returncode, "output": "".join(lines), "wall": time.perf_counter() - start, **peaks}


def python_env(cache: Path, src: str | None) -> dict[str, str]:
    """The environment of a child: its own ``RESNETLAB_CACHE``, and ``src`` first on the path if given."""
    env = dict(os.environ, RESNETLAB_CACHE=str(cache))
    if src:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    return env


# --- decoding ---------------------------------------------------------------------------------


def decode(folder: Path, side: int, env: dict[str, str]) -> dict:
    """Decode (or map) ``folder`` in a child process: its seconds inside, and the train and val counts."""
    done = subprocess.run([sys.executable, "-c", DECODE, str(folder), str(side)], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"decoding {folder} failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _progress(cache: Path, planned: dict[Path, int]) -> tuple[int, int] | None:
    """(next image, images planned) of the decode in progress in ``cache`` (its ``.partial`` folder), or None before its first record.

    ``planned`` keeps each folder's count from its ``plan.json`` (read once: it lists every file).
    """
    for partial in cache.glob(".*.partial"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            done = json.loads((partial / "progress.json").read_text())
            if partial not in planned:
                planned[partial] = len(json.loads((partial / "plan.json").read_text())["good"])
            return int(done["next"]), planned[partial]
    return None


def interrupted_decode(folder: Path, side: int, env: dict[str, str], at: float, sig: signal.Signals) -> dict:
    """Start a decode, send ``sig`` once ``at`` of the training split is done, decode again: the images left and its seconds.

    ``left`` is None where the decode finished before it could be interrupted (a split of one
    or two chunks, say); the second run then only maps the cache.
    """
    cache, planned = Path(env["RESNETLAB_CACHE"]), {}
    child = subprocess.Popen([sys.executable, "-c", DECODE, str(folder), str(side)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while child.poll() is None:
        found = _progress(cache, planned)
        if found is not None and found[0] >= at * found[1]:
            child.send_signal(sig)
            break
        time.sleep(0.05)
    child.wait()
    found = _progress(cache, planned)  # what the interruption left: the resumed run starts there
    resumed = decode(folder, side, env)
    return {"left": found[1] - found[0] if found else None, "planned": found[1] if found else None,
            "seconds": resumed["seconds"], "rc": child.returncode}


# --- training ---------------------------------------------------------------------------------


def feeds_supported(env: dict[str, str]) -> bool:
    """Whether this code's ``resnetlab train`` has ``--feed``."""
    done = subprocess.run([sys.executable, "-m", "resnetlab", "train", "--help"], env=env, capture_output=True, text=True)
    return "--feed" in done.stdout


def train_command(folder: Path, run: Path, args: argparse.Namespace, feed: str | None) -> list[str]:
    """``resnetlab train`` on the whole folder at its decoded side, one epoch bounded by the time budget."""
    command = [sys.executable, "-m", "resnetlab", "train", "--data", str(folder), "--out", str(run),
               "--image-size", str(args.side), "--epochs", "1", "--time-budget", f"{args.minutes:g}",
               "--batch-size", str(args.batch_size)]
    return command + (["--feed", feed] if feed else []) + args.train_flags.split()


def train(folder: Path, run: Path, args: argparse.Namespace, env: dict[str, str], feed: str | None,
          cgroup_procs: Path | None = None) -> dict:
    """One training run, its memory polled: exit status, images/s, steps' seconds, peaks, and its line about the feed."""
    command = train_command(folder, run, args, feed)
    if cgroup_procs is not None:  # the child moves itself into the cgroup, then becomes the training process
        command = ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(cgroup_procs)] + command
    result = run_polled(command, env)
    result.update(_results(run))
    said = re.search(r"images (?:streamed|resident)[^(\n]*\([^)\n]*\)", result["output"])  # the run's first line says which, and why
    result["feed_line"] = said[0] if said else ""
    if result["rc"] != 0:
        last = (result["output"].strip().splitlines() or ["?"])[-1][:160]
        killed = f"killed by {signal.Signals(-result['rc']).name}; " if result["rc"] < 0 else ""
        result["error"] = f"{killed}its last line: {last}"
    if not args.keep:
        shutil.rmtree(run, ignore_errors=True)
    return result


def _results(run: Path) -> dict:
    """Training images/s and the seconds of its steps, from ``results.json`` (else the last row of ``metrics.csv``)."""
    with contextlib.suppress(OSError, ValueError, KeyError):
        values = json.loads((run / "results.json").read_text())
        return {"img_s": float(values["examples_per_sec"]), "train_s": float(values["train_seconds"])}
    with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
        with open(run / "metrics.csv", newline="") as f:
            row = list(csv.DictReader(f))[-1]
        return {"img_s": float(row["examples_per_sec"]), "train_s": float(row["seconds"])}
    return {"img_s": None, "train_s": None}


# --- memory: what fits, and a cgroup to limit it --------------------------------------------


def meminfo_bytes(name: str) -> int:
    """A field of ``/proc/meminfo`` (``MemTotal``, ``MemAvailable``) in bytes."""
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(name + ":"))


def parse_bytes(text: str) -> int:
    """``2G``, ``1.5G``, ``800M``, ``1000000`` as bytes (binary units)."""
    match = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: give bytes as 2G, 800M, ...")
    return int(float(match[1]) * 1024 ** " KMGT".index(match[2].upper() or " "))


@contextlib.contextmanager
def memory_cgroup(limit: int):
    """A child of this process's memory cgroup (v1) limited to ``limit`` bytes: yields its ``cgroup.procs`` (None and why, if it cannot be made)."""
    try:
        with open("/proc/self/cgroup") as f:
            own = next(line.strip().split(":", 2)[2] for line in f if line.split(":")[1] == "memory")
        path = Path("/sys/fs/cgroup/memory") / own.lstrip("/") / f"rl_bench_{os.getpid()}"
        path.mkdir()
    except (OSError, StopIteration, IndexError) as exc:
        yield None, f"no memory cgroup v1 to write ({exc})"
        return
    try:
        (path / "memory.limit_in_bytes").write_text(str(limit))
        procs, where = path / "cgroup.procs", str(path)
    except OSError as exc:
        procs, where = None, f"cannot limit {path} ({exc})"
    try:
        yield procs, where
    finally:
        for _ in range(50):  # its processes may take a moment to leave
            with contextlib.suppress(OSError):
                path.rmdir()
                break
            time.sleep(0.1)


# --- one size, and the tables ------------------------------------------------------------------


def decoded_bytes(size: int, side: int) -> int:
    """What ``size`` RGB images of ``side`` px take decoded (their cache: images and labels)."""
    return size * (3 * side * side + 8)


def sizes_that_fit(args: argparse.Namespace) -> list[int]:
    """The sizes whose files (unless made already) and cache fit on the disk of ``--root``, the others skipped with a line.

    Folders stay for the next run; a size's caches are made one at a time and removed after it
    (unless ``--keep``), so each size needs its cache and the files of the folders made before it.
    """
    free = shutil.disk_usage(args.root).free
    fitting = []
    for size in sorted(args.sizes):
        made = (Path(args.root) / "folders" / f"{size}-{args.side}px-{args.format}.json").exists()
        files = 0 if made else int(size * 3 * args.side ** 2 * (JPEG_BYTES if args.format == "jpeg" else PNG_BYTES))
        cache = decoded_bytes(size, args.side)
        if files + cache + MARGIN > free:
            print(f"{size:,} images: skipped, they need about {(files + cache + MARGIN) / 1e9:.1f} GB of disk "
                  f"({files / 1e9:.1f} GB of files, {cache / 1e9:.1f} GB of cache, 1 GB spare) and "
                  f"{free / 1e9:.1f} GB are free", flush=True)
            continue
        fitting.append(size)
        free -= files + (cache if args.keep else 0)
    return fitting


def measure_size(size: int, args: argparse.Namespace, feeds: list[str | None], largest: bool) -> tuple[dict, list[dict]]:
    """Everything for one size: its folder, its decode row and its training rows (its cache removed after, unless ``--keep``)."""
    root = Path(args.root)
    folder, made = make_folder(root, size, args.side, args.format, args.seed, args.val_share)
    files = tree_bytes(folder)
    print(f"{size:,} images: folder {folder} ({files / 1e6:,.0f} MB) "
          + (f"made in {made:.0f} s" if made is not None else "reused"), flush=True)
    cache = root / "caches" / f"{size}"
    row = {"size": size, "files": files, **measure_decode(folder, root / "caches" / f"{size}-cold", cache, args)}
    runs = measure_training(size, folder, cache, args, feeds)
    if largest and args.memory_limit:
        runs.append(limited_run(size, folder, args, python_env(cache, args.src), feeds, decoded_bytes(size, args.side)))
    if not args.keep:
        shutil.rmtree(cache, ignore_errors=True)
    return row, runs


def measure_decode(folder: Path, cold_cache: Path, cache: Path, args: argparse.Namespace) -> dict:
    """The cold decode into ``cold_cache`` (removed after), then the interrupted one into ``cache``, which training maps."""
    for path in (cold_cache, cache):
        shutil.rmtree(path, ignore_errors=True)
    cold = decode(folder, args.side, python_env(cold_cache, args.src))
    cache_size = tree_bytes(cold_cache)
    shutil.rmtree(cold_cache, ignore_errors=True)
    images = cold["train"] + cold["val"]
    print(f"  cold decode: {cold['seconds']:.1f} s, {images / cold['seconds']:,.0f} images/s, cache {cache_size / 1e6:,.0f} MB",
          flush=True)
    sig = signal.SIGKILL if args.interrupt == "kill" else signal.SIGINT
    resume = interrupted_decode(folder, args.side, python_env(cache, args.src), args.interrupt_at, sig)
    if resume["left"] is None:
        print(f"  interrupted decode ({sig.name}): it finished before the signal (exit {resume['rc']}); "
              f"opened again in {resume['seconds']:.1f} s", flush=True)
    else:
        print(f"  interrupted decode ({sig.name}): {resume['left']:,} of {resume['planned']:,} left, "
              f"resumed in {resume['seconds']:.1f} s", flush=True)
    return {"decode_s": cold["seconds"], "images": images, "cache": cache_size, **{f"resume_{k}": v for k, v in resume.items()}}


def measure_training(size: int, folder: Path, cache: Path, args: argparse.Namespace, feeds: list[str | None]) -> list[dict]:
    """A training row per feed (``resident`` skipped where the decoded splits take over half the memory available)."""
    runs, decoded, room = [], decoded_bytes(size, args.side), meminfo_bytes("MemAvailable")
    env = python_env(cache, args.src)
    for feed in feeds:
        if feed == "resident" and decoded > room / 2:
            runs.append({"size": size, "feed": feed, "skipped": f"{decoded / 1e9:.1f} GB decoded, {room / 1e9:.1f} GB available"})
            continue
        result = train(folder, Path(args.root) / "runs" / f"{size}-{feed or 'default'}", args, env, feed)
        runs.append({"size": size, "feed": feed or "(no --feed)", **result})
        print(f"  train, feed {feed or '(no --feed)'}: exit {result['rc']}, {_number(result['img_s'])} img/s, "
              f"peak anon {result['RssAnon'] / 1e6:,.0f} MB, VmHWM {result['VmHWM'] / 1e6:,.0f} MB"
              + (f"; {result['feed_line']}" if result["feed_line"] else ""), flush=True)
    return runs


def limited_run(size: int, folder: Path, args: argparse.Namespace, env: dict[str, str], feeds: list[str | None],
                decoded: int) -> dict:
    """The streamed training inside a memory cgroup of ``--memory-limit`` (a row; skipped, with why, where no cgroup can be made)."""
    feed = "stream" if "stream" in feeds else feeds[0]
    label = f"{feed or '(no --feed)'}, cgroup {args.memory_limit}"
    if parse_bytes(args.memory_limit) >= decoded:
        print(f"  note: --memory-limit {args.memory_limit} is not below the {decoded / 1e9:.2f} GB decoded", flush=True)
    with memory_cgroup(parse_bytes(args.memory_limit)) as (procs, where):
        if procs is None:
            print(f"  memory limit skipped: {where}", flush=True)
            return {"size": size, "feed": label, "skipped": where}
        result = train(folder, Path(args.root) / "runs" / f"{size}-limited", args, env, feed, cgroup_procs=procs)
        with contextlib.suppress(OSError, ValueError):
            result["cgroup_peak"] = int((procs.parent / "memory.max_usage_in_bytes").read_text())
        with contextlib.suppress(OSError, ValueError):  # v1 kernels from 4.13 count the OOM killer's kills
            oom = (procs.parent / "memory.oom_control").read_text().split()
            result["oom_kills"] = int(oom[oom.index("oom_kill") + 1])
    print(f"  train in cgroup {args.memory_limit}: exit {result['rc']}, {_number(result['img_s'])} img/s", flush=True)
    return {"size": size, "feed": label, **result}


def _number(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def print_tables(args: argparse.Namespace, rows: list[dict], runs: list[dict]) -> None:
    """The two markdown tables: data (files, decode, cache, resume), then training (one row per size and feed)."""
    print(f"\n{describe('cpu')}")
    print(f"\nfolders: {args.side} px RGB {args.format.upper()}, 10 classes, {args.val_share:.0%} in val/; "
          f"decoding with {os.cpu_count()} threads; interrupted with SIG{args.interrupt.upper()} at {args.interrupt_at:.0%}\n")
    print("| images | files MB | cold decode s | decode img/s | cache MB | resume: left of planned | resume s |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        left = (f"{r['resume_left']:,} of {r['resume_planned']:,}" if r["resume_left"] is not None
                else "finished first")
        print(f"| {r['size']:,} | {r['files'] / 1e6:,.0f} | {r['decode_s']:.1f} | {r['images'] / r['decode_s']:,.0f} "
              f"| {r['cache'] / 1e6:,.0f} | {left} | {r['resume_seconds']:.1f} |")
    print(f"\ntraining: {' '.join(train_command(Path('DIR'), Path('RUN'), args, None)[3:])} [--feed F], "
          f"memory polled every {POLL_S} s\n")
    print("| images | feed | exit | train img/s | steps s | wall s | peak RssAnon MB | peak VmHWM MB | what the run said |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in runs:
        if "skipped" in r:
            print(f"| {r['size']:,} | {r['feed']} | - | - | - | - | - | - | skipped: {r['skipped']} |")
            continue
        note = r.get("error") or r["feed_line"]
        if "cgroup_peak" in r:
            kills = f", {r['oom_kills']} OOM kill(s)" if r.get("oom_kills") else ""
            note = f"cgroup peak {r['cgroup_peak'] / 1e6:,.0f} MB{kills}; " + note
        print(f"| {r['size']:,} | {r['feed']} | {r['rc']} | {_number(r['img_s'])} | {_number(r['train_s'], 1)} | {r['wall']:.0f} "
              f"| {r['RssAnon'] / 1e6:,.0f} | {r['VmHWM'] / 1e6:,.0f} | {note.replace('|', '/')} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 200_000], help="images in each folder")
    parser.add_argument("--side", type=int, default=96, help="image side in pixels (decoded and trained at it)")
    parser.add_argument("--format", choices=["jpeg", "png"], default="jpeg")
    parser.add_argument("--val-share", type=float, default=0.02, help="share of the images in val/")
    parser.add_argument("--seed", type=int, default=0, help="seeds the drawing")
    parser.add_argument("--root", default="/tmp/resnetlab-large", help="folders, caches and runs go here")
    parser.add_argument("--feeds", default="stream,resident", help="train --feed values to compare, comma-separated")
    parser.add_argument("--minutes", type=float, default=1.5, help="each training run's --time-budget")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--train-flags", default="", help="more flags for resnetlab train, e.g. '--model d2l_resnet18'")
    parser.add_argument("--interrupt", choices=["int", "kill"], default="int", help="the signal that interrupts the decode")
    parser.add_argument("--interrupt-at", type=float, default=0.5, help="share of the training split decoded when it is sent")
    parser.add_argument("--memory-limit", default=None, help="also train the largest folder streamed in a memory cgroup this small (2G)")
    parser.add_argument("--keep", action="store_true", help="keep the caches and run folders (the folders are always kept)")
    parser.add_argument("--src", default=None, help="run this src folder's resnetlab instead (a before/after comparison)")
    args = parser.parse_args()
    if args.memory_limit:
        parse_bytes(args.memory_limit)  # a bad value stops here, not after an hour
    print(describe("cpu"), flush=True)
    Path(args.root).mkdir(parents=True, exist_ok=True)
    probe_env = python_env(Path(args.root) / "caches" / "probe", args.src)
    feeds: list[str | None] = [f.strip() for f in args.feeds.split(",") if f.strip()]
    if not feeds_supported(probe_env):
        print("this code's train has no --feed: one training row per size, its own way", flush=True)
        feeds = [None]
    if args.src:
        print(f"code: {args.src}")
    rows, runs = [], []
    sizes = sizes_that_fit(args)
    for size in sizes:
        row, trained = measure_size(size, args, feeds, largest=size == sizes[-1])
        rows.append(row)
        runs += trained
    if not args.keep:
        shutil.rmtree(Path(args.root) / "caches", ignore_errors=True)
        shutil.rmtree(Path(args.root) / "runs", ignore_errors=True)
    print_tables(args, rows, runs)


if __name__ == "__main__":
    main()
