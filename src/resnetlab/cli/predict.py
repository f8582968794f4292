"""``resnetlab predict CKPT FILE_OR_DIR...``: the top classes of each image, as a table, JSON or CSV."""

from __future__ import annotations

import argparse
import csv
import json
import sys

from ..classifier import load
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
    p.set_defaults(func=predict_command)


def predict_command(args: argparse.Namespace) -> int:
    """Print each image's top classes; a file that is not a usable image is one line on stderr and exit status 1."""
    if args.top_k < 1:
        raise ResnetlabError(f"--top-k {args.top_k} must be at least 1")
    clf = load(args.checkpoint, device=resolve_device(args.device))
    files = find_images(args.inputs)
    if not files:
        raise ResnetlabError(f"no image files in {' '.join(args.inputs)}; give image files or folders holding them")
    results, failed = [], 0
    for start in range(0, len(files), PREDICT_CHUNK):
        chunk, images = [], []
        for path in files[start : start + PREDICT_CHUNK]:
            try:
                images.append(clf.to_uint8(path))
                chunk.append(path)
            except ResnetlabError as exc:
                print(f"resnetlab predict: error: {exc}", file=sys.stderr)
                failed += 1
        for path, pred in zip(chunk, clf.predict(images, top_k=args.top_k)):
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
    return 1 if failed else 0
