"""``resnetlab predict CKPT FILE_OR_DIR...``: the top classes of each image, as a table, JSON or CSV.

Images whose background is the other way round from the training images' (a photo's light one
for a Fashion-MNIST model) get one warning line on stderr, and ``--invert`` and ``--center``
fix photos (see :mod:`resnetlab.inference.photo`); the exit status stays 0.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

from ..data.images import find_images
from ..errors import ResnetlabError
from ..inference.classifier import load, unlike_training_lines
from ..util.runtime import resolve_device
from .common import DEVICES

# Images decoded and classified at a time: a folder of many thousand files is never held at once.
PREDICT_CHUNK = 64


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the ``predict`` command."""
    p = sub.add_parser("predict", help="classify image files (PNG, JPEG, ...) or folders of them")
    p.add_argument("checkpoint", metavar="CKPT", help="a .safetensors file written by training")
    p.add_argument("inputs", metavar="FILE_OR_DIR", nargs="+", help="image files, or folders searched for images")
    p.add_argument("--top-k", type=int, default=3, help="classes to list per image (default: 3)")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table", help="output format (default: table)")
    p.add_argument("--device", choices=DEVICES, default="cpu", help="where to run (default: cpu)")
    p.add_argument("--invert", action="store_true",
                   help="invert each image first (255 - pixels): a photo's dark object on a light background")
    p.add_argument("--center", action="store_true",
                   help="crop each image to a square around its object (after --invert): a photo's object off centre")
    p.set_defaults(func=predict_command)


def predict_command(args: argparse.Namespace) -> int:
    """Print each image's top classes; a file that is not a usable image is one line on stderr and exit status 1.

    Files are decoded :data:`PREDICT_CHUNK` at a time (in threads: Pillow's decoders release the
    GIL) and each chunk's rows are printed before the next is read, so a folder of any size
    needs the memory of one chunk and its results appear as they come.
    """
    if args.top_k < 1:
        raise ResnetlabError(f"--top-k {args.top_k} must be at least 1")
    clf = load(args.checkpoint, device=resolve_device(args.device))
    files = find_images(args.inputs)
    if not files:
        raise ResnetlabError(f"no image files in {' '.join(args.inputs)}; give image files or folders holding them")
    write = Output(args.format)
    failed, unlike, names = 0, [], []

    def read(path):
        try:
            return clf.to_uint8(path, invert=args.invert, center=args.center)
        except ResnetlabError as exc:
            return exc

    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        for start in range(0, len(files), PREDICT_CHUNK):
            batch, chunk, images = files[start : start + PREDICT_CHUNK], [], []
            for path, image in zip(batch, pool.map(read, batch)):
                if isinstance(image, ResnetlabError):
                    print(f"resnetlab predict: error: {image}", file=sys.stderr)
                    failed += 1
                else:
                    images.append(image)
                    chunk.append(path)
            unlike.extend(clf.unlike_training(image) for image in images)
            names.extend(map(str, chunk))
            # The images are inverted and centred already; the warning is this command's own line, below.
            for path, pred in zip(chunk, clf.predict(images, top_k=args.top_k, warn=False) if images else []):
                write.row({"file": str(path), "top": [{"class": c, "prob": p} for c, p in pred.top]})
    write.end()
    # After the results, where it is seen: one line however many images, naming the file when it is one.
    for line in unlike_training_lines(unlike, inverted=args.invert, invert_option="--invert", center_option="--center",
                                      names=names):
        print(f"resnetlab predict: warning: {line}", file=sys.stderr)
    return 1 if failed else 0


class Output:
    """Results printed as they come, in one of the formats: a table's line, a CSV row, or an item of a JSON array."""

    def __init__(self, form: str) -> None:
        self.form, self.count = form, 0
        self.csv = csv.writer(sys.stdout, lineterminator="\n") if form == "csv" else None
        if self.csv is not None:
            self.csv.writerow(["file", "rank", "class", "prob"])

    def row(self, result: dict) -> None:
        """Print one image's result."""
        if self.form == "json":
            # The array is written an item at a time; json.dumps(indent=2) of the whole list gives the same text.
            item = "\n".join("  " + line for line in json.dumps(result, indent=2).splitlines())
            print(("[\n" if self.count == 0 else ",\n") + item, end="")
        elif self.csv is not None:
            for rank, t in enumerate(result["top"], start=1):
                self.csv.writerow([result["file"], rank, t["class"], f"{t['prob']:.6f}"])
        else:
            print(result["file"] + "\t" + "\t".join(f"{t['class']} {t['prob']:.3f}" for t in result["top"]))
        self.count += 1
        sys.stdout.flush()

    def end(self) -> None:
        """Close what the format opened (the JSON array)."""
        if self.form == "json":
            print("\n]" if self.count else "[]")
