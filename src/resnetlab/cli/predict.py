"""``resnetlab predict CKPT FILE_OR_DIR...``: the top classes of each image, as a table, JSON or CSV.

Images whose background is the other way round from the training images' (a photo's light one
for a Fashion-MNIST model) get one warning line on stderr, and ``--invert`` and ``--center``
fix photos (see :mod:`resnetlab.photo`); the exit status stays 0.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys

from ..classifier import load, unlike_training_lines
from ..errors import ResnetlabError
from ..images import find_images
from ..runtime import resolve_device
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
    """Print each image's top classes; a file that is not a usable image is one line on stderr and exit status 1."""
    if args.top_k < 1:
        raise ResnetlabError(f"--top-k {args.top_k} must be at least 1")
    clf = load(args.checkpoint, device=resolve_device(args.device))
    files = find_images(args.inputs)
    if not files:
        raise ResnetlabError(f"no image files in {' '.join(args.inputs)}; give image files or folders holding them")
    results, failed, unlike = [], 0, []
    for start in range(0, len(files), PREDICT_CHUNK):
        chunk, images = [], []
        for path in files[start : start + PREDICT_CHUNK]:
            try:
                images.append(clf.to_uint8(path, invert=args.invert, center=args.center))
                chunk.append(path)
            except ResnetlabError as exc:
                print(f"resnetlab predict: error: {exc}", file=sys.stderr)
                failed += 1
        unlike.extend(clf.unlike_training(image) for image in images)
        # The images are inverted and centred already; the warning is this command's own line, below.
        for path, pred in zip(chunk, clf.predict(images, top_k=args.top_k, warn=False)):
            results.append({"file": str(path), "top": [{"class": c, "prob": p} for c, p in pred.top]})
    if args.format == "json":
        print(json.dumps(results, indent=2))
    elif args.format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["file", "rank", "class", "prob"])
        for r in results:
            for rank, t in enumerate(r["top"], start=1):
                writer.writerow([r["file"], rank, t["class"], f"{t['prob']:.6f}"])
    else:
        for r in results:
            print(r["file"] + "\t" + "\t".join(f"{t['class']} {t['prob']:.3f}" for t in r["top"]))
    # After the results, where it is seen: one line however many images, naming the file when it is one.
    for line in unlike_training_lines(unlike, inverted=args.invert, invert_option="--invert", center_option="--center",
                                      names=[r["file"] for r in results]):
        print(f"resnetlab predict: warning: {line}", file=sys.stderr)
    return 1 if failed else 0
