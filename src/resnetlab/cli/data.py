"""``resnetlab show-data`` (a labelled grid, as the book's ``show_images``), ``plot`` (a run's curves) and ``download``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ..config import BASE_DEFAULTS, folder_side
from ..data import download_fashion_mnist, open_dataset
from ..data.download import DEFAULT_URL
from ..engine.metrics import plot_curves, read_csv
from ..errors import ResnetlabError
from ..util.locks import writing_near_run
from ..util.pictures import save_image_grid


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the ``show-data``, ``plot`` and ``download`` commands."""
    p = sub.add_parser("show-data", help="draw a labelled grid of data images (the book's show_images)")
    p.add_argument("--n", type=int, default=32, help="how many images (default: 32)")
    p.add_argument("--split", choices=["train", "test"], default="train", help="which split (default: train)")
    p.add_argument("--data", metavar="DIR", help="Fashion-MNIST or class folders (default: $RESNETLAB_DATA, then Debian's)")
    p.add_argument("--out", metavar="FILE.png", default="fashion-mnist.png", help="output file (default: fashion-mnist.png)")
    p.set_defaults(func=show_data_command)

    p = sub.add_parser("plot", help="redraw a run's curves.png from its metrics.csv")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder")
    p.set_defaults(func=plot_command)

    p = sub.add_parser("download", help="download a data set, checked against known SHA-256 sums")
    p.add_argument("dataset", choices=["fashion-mnist"], help="the data set (only fashion-mnist)")
    p.add_argument("dir", metavar="DIR", help="folder to put the four files in")
    p.add_argument("--url", metavar="BASE", help="base URL holding the four .gz files")
    p.add_argument("--retries", type=int, default=3, help="tries per file (default: 3)")
    p.set_defaults(func=download_command)


def show_data_command(args: argparse.Namespace) -> int:
    """Draw the first ``--n`` images of a split with their labels."""
    if args.n < 1:
        raise ResnetlabError(f"--n {args.n} must be at least 1")
    # As a run would read them: a class folder at the recipe's side, its validation share carved by the base defaults.
    splits = open_dataset(args.data, image_size=None, channels=None, val_split=0, val_fraction=BASE_DEFAULTS["val_fraction"],
                          seed=BASE_DEFAULTS["seed"], side_rule=folder_side, warn=lambda message: print(message, file=sys.stderr))
    data = splits.train if args.split == "train" else splits.held_out[0]
    n = min(args.n, len(data))
    save_image_grid(args.out, data.gather(torch.arange(n)), [data.class_names[int(k)] for k in data.labels[:n]])
    print(f"wrote {args.out}: the first {n} {args.split} images with their labels")
    return 0


def plot_command(args: argparse.Namespace) -> int:
    """Redraw ``curves.png`` from ``metrics.csv``."""
    run = Path(args.run_dir)
    rows = read_csv(run / "metrics.csv")
    title = ""
    try:
        config = json.loads((run / "config.json").read_text())
        title = f"{config.get('model')} ({config.get('preset') or 'custom'})"
    except (OSError, ValueError):
        pass  # the title is a nicety; the curves come from metrics.csv alone
    with writing_near_run(run / "curves.png", "resnetlab plot"):  # not while the run itself writes them
        plot_curves(run / "curves.png", rows, title=title)
    print(f"wrote {run / 'curves.png'} from {len(rows)} epoch(s) of {run / 'metrics.csv'}")
    return 0


def download_command(args: argparse.Namespace) -> int:
    """Fetch Fashion-MNIST's four files, checked against their known SHA-256 sums."""
    folder = download_fashion_mnist(args.dir, base_url=args.url or DEFAULT_URL, retries=args.retries)
    print(f"Fashion-MNIST is in {folder}; train on it with: resnetlab train --data {folder}")
    return 0
