"""The ``resnetlab`` command line: it parses arguments and calls the library, nothing more.

A mistake the user can make ends as one line on stderr naming the culprit and the fix, with exit
status 2 and no traceback; a non-finite loss ends a run with status 3, and SIGINT/SIGTERM with
130/143 after the run's state is saved.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from typing import NoReturn, Sequence

from . import __version__
from .errors import NonFiniteLossError, ResnetlabError, TrainingStopped, first_line


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a single line (no usage block), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")


def parse_input_size(text: str) -> tuple[int, int, int, int]:
    """Parse ``N,C,H,W`` into four positive integers, or raise :class:`ResnetlabError`."""
    parts = [p.strip() for p in text.split(",")]
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if len(dims) != 4 or min(dims) < 1:
        raise ResnetlabError(
            f"--input-size {text!r} is not four positive integers N,C,H,W; write it like 1,1,256,256"
        )
    return dims  # type: ignore[return-value]


def _cmd_summary(args: argparse.Namespace) -> int:
    from .models import create_model, model_spec
    from .summarize import summary

    spec = model_spec(args.model)
    model = create_model(args.model)
    if args.input_size is None:
        size = (1, model.in_channels, spec.image_size, spec.image_size)
    else:
        size = parse_input_size(args.input_size)
        if size[1] != model.in_channels:
            raise ResnetlabError(
                f"--input-size {args.input_size!r} has {size[1]} channel(s) but {args.model} takes "
                f"{model.in_channels}; use N,{model.in_channels},H,W"
            )
    if args.depth < 1:
        raise ResnetlabError(f"--depth {args.depth} must be at least 1")
    try:
        report = summary(model, size, depth=args.depth)
    except RuntimeError as exc:
        # Too small an image makes a conv or pool fail deep inside torch; say which flag to change.
        raise ResnetlabError(
            f"--input-size {','.join(map(str, size))} does not fit {args.model} ({first_line(exc)}); "
            f"try a larger H,W such as {spec.image_size},{spec.image_size}"
        ) from None
    print(report)
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from .models import list_models, model_spec

    for name in list_models():
        print(f"{name}\t{model_spec(name).image_size}px")
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    from .data import download_fashion_mnist
    from .data.download import DEFAULT_URL

    folder = download_fashion_mnist(args.dir, base_url=args.url or DEFAULT_URL, retries=args.retries)
    print(f"Fashion-MNIST is in {folder}; train on it with: resnetlab train --data {folder}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .engine import fit, resume
    from .engine.train_config import config_from_args, resume_overrides_from_args

    if args.resume is not None:
        resume(args.resume, started=args.started, **resume_overrides_from_args(args))
        return 0
    fit(config_from_args(args), started=args.started)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .evaluation import evaluate_checkpoint

    evaluate_checkpoint(args.checkpoint, args.data, args.out, tta=args.tta, device=args.device,
                        precision=args.precision, explain=args.explain)
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    import csv
    import json

    from .classifier import load
    from .images import find_images

    if args.top_k < 1:
        raise ResnetlabError(f"--top-k {args.top_k} must be at least 1")
    from .runtime import resolve_device

    clf = load(args.checkpoint, device=resolve_device(args.device))
    files = find_images(args.inputs)
    if not files:
        raise ResnetlabError(f"no image files in {' '.join(args.inputs)}; give image files or folders holding them")
    results, failed = [], 0
    for start in range(0, len(files), 64):
        chunk, images = [], []
        for path in files[start : start + 64]:
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


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export_checkpoint

    export_checkpoint(args.checkpoint, args.format, args.out, opset=args.opset, data=args.data)
    return 0


def _cmd_maps(args: argparse.Namespace) -> int:
    from .explain import save_maps

    size = parse_input_size(args.input_size) if args.input_size else None
    save_maps(args.source, args.image, args.out, input_size=size)
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from .explain import explain_files

    if args.top_k < 1:
        raise ResnetlabError(f"--top-k {args.top_k} must be at least 1")
    explain_files(args.checkpoint, args.images, args.out, target=args.target, stage=args.stage, top_k=args.top_k)
    return 0


def _cmd_show_data(args: argparse.Namespace) -> int:
    from .data import open_dataset
    from .pictures import save_image_grid

    if args.n < 1:
        raise ResnetlabError(f"--n {args.n} must be at least 1")
    splits = open_dataset(args.data, val_split=0, warn=lambda message: print(message, file=sys.stderr))
    data = splits.train if args.split == "train" else splits.held_out[0]
    n = min(args.n, len(data))
    save_image_grid(args.out, data.images[:n], [data.class_names[int(k)] for k in data.labels[:n]])
    print(f"wrote {args.out}: the first {n} {args.split} images with their labels")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from .engine.metrics import plot_curves, read_csv

    run = Path(args.run_dir)
    rows = read_csv(run / "metrics.csv")
    title = ""
    try:
        config = json.loads((run / "config.json").read_text())
        title = f"{config.get('model')} ({config.get('preset') or 'custom'})"
    except (OSError, ValueError):
        pass  # the title is a nicety; the curves come from metrics.csv alone
    plot_curves(run / "curves.png", rows, title=title)
    print(f"wrote {run / 'curves.png'} from {len(rows)} epoch(s) of {run / 'metrics.csv'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with one sub-command per task."""
    from .runtime import DEVICES, PRECISIONS

    parser = _Parser(prog="resnetlab", description="Residual networks on PyTorch: build, inspect, train, evaluate, predict, export.")
    parser.add_argument("--version", action="version", version=f"resnetlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("summary", help="print a model's shape trace and per-layer table")
    p.add_argument("model", metavar="MODEL", help="a registered model name (see 'resnetlab models')")
    p.add_argument("--input-size", metavar="N,C,H,W", help="input batch shape (default: the model's natural one)")
    p.add_argument("--depth", type=int, default=2, help="nesting depth of the table (default: 2)")
    p.set_defaults(func=_cmd_summary)

    p = sub.add_parser("models", help="list the registered models and their natural image sizes")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("train", help="train a model on Fashion-MNIST or your class folders (presets: d2l, cpu, fast, best, folder)")
    from .engine.train_config import add_train_arguments

    p.add_argument("--resume", nargs="?", const="runs/latest", metavar="RUN_DIR",
                   help="continue a stopped run from its train_state.pt, with its own config (default: runs/latest)")
    add_train_arguments(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="measure a checkpoint on the test split: accuracy, per-class table, pictures")
    p.add_argument("checkpoint", metavar="CKPT", help="a .safetensors file written by training")
    p.add_argument("--data", metavar="DIR", help="data folder (default: the one the checkpoint was trained on)")
    p.add_argument("--out", metavar="DIR", help="folder for report.json, confusion.png, mistakes.png (default: eval-<name> beside CKPT)")
    p.add_argument("--tta", action="store_true", help="average with the mirrored image's prediction")
    p.add_argument("--explain", action="store_true", help="draw Grad-CAM heatmaps of the predicted class over mistakes.png")
    p.add_argument("--device", choices=DEVICES, default="auto", help="where to run (default: auto)")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="fp32, bf16, fp16, fp64, or auto (as in training); default: the run's own where this device "
                        "has it, so figures match the run's")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("predict", help="classify image files (PNG, JPEG, ...) or folders of them")
    p.add_argument("checkpoint", metavar="CKPT", help="a .safetensors file written by training")
    p.add_argument("inputs", metavar="FILE_OR_DIR", nargs="+", help="image files, or folders searched for images")
    p.add_argument("--top-k", type=int, default=3, help="classes to list per image (default: 3)")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table", help="output format (default: table)")
    p.add_argument("--device", choices=DEVICES, default="cpu", help="where to run (default: cpu)")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("export", help="write ONNX or TorchScript, checked against PyTorch")
    p.add_argument("checkpoint", metavar="CKPT", help="a .safetensors file written by training")
    p.add_argument("--format", choices=["onnx", "torchscript"], default="onnx", help="file format (default: onnx)")
    p.add_argument("--out", metavar="FILE", help="output file (default: beside CKPT, .onnx or .torchscript.pt)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's, 18 or later)")
    p.add_argument("--data", metavar="DIR", help="data folder whose test images check the export")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("maps", help="picture each stage's strongest feature maps for one image (the seed's shapes as titles)")
    p.add_argument("source", metavar="CKPT_OR_MODEL", help="a .safetensors file written by training, or a model name (random weights)")
    p.add_argument("image", metavar="IMAGE", nargs="?", help="the image (default for a model name: random pixels, as the seed's torch.rand)")
    p.add_argument("--input-size", metavar="N,C,H,W", help="a model name's input (default: its natural size), e.g. 1,1,256,256")
    p.add_argument("--out", metavar="FILE.png", default="maps.png", help="output file (default: maps.png)")
    p.set_defaults(func=_cmd_maps)

    p = sub.add_parser("explain", help="Grad-CAM: where in each image the evidence for a class lay")
    p.add_argument("checkpoint", metavar="CKPT", help="a .safetensors file written by training")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files, or folders searched for images")
    p.add_argument("--class", dest="target", metavar="NAME", help="the class to explain (default: each image's top class)")
    p.add_argument("--stage", metavar="NAME", help="the stage whose activations are used (default: the last whose maps are at least 4x4)")
    p.add_argument("--top-k", type=int, default=3, help="classes listed under each picture (default: 3)")
    p.add_argument("--out", metavar="DIR", default="explain", help="folder for one PNG per image and sheet.png (default: explain)")
    p.set_defaults(func=_cmd_explain)

    p = sub.add_parser("show-data", help="draw a labelled grid of data images (the book's show_images)")
    p.add_argument("--n", type=int, default=32, help="how many images (default: 32)")
    p.add_argument("--split", choices=["train", "test"], default="train", help="which split (default: train)")
    p.add_argument("--data", metavar="DIR", help="Fashion-MNIST or class folders (default: $RESNETLAB_DATA, then Debian's)")
    p.add_argument("--out", metavar="FILE.png", default="fashion-mnist.png", help="output file (default: fashion-mnist.png)")
    p.set_defaults(func=_cmd_show_data)

    p = sub.add_parser("plot", help="redraw a run's curves.png from its metrics.csv")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder")
    p.set_defaults(func=_cmd_plot)

    p = sub.add_parser("download", help="download a data set, checked against known SHA-256 sums")
    p.add_argument("dataset", choices=["fashion-mnist"], help="the data set (only fashion-mnist)")
    p.add_argument("dir", metavar="DIR", help="folder to put the four files in")
    p.add_argument("--url", metavar="BASE", help="base URL holding the four .gz files")
    p.add_argument("--retries", type=int, default=3, help="tries per file (default: 3)")
    p.set_defaults(func=_cmd_download)
    return parser


def process_age() -> float:
    """Seconds since this process started (Linux); 0 where that cannot be read."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def main(argv: Sequence[str] | None = None, *, started: float | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit status.

    ``started`` (a ``time.monotonic()`` reading) is when the command began, which a time budget
    counts from: the console script passes its process's start (:func:`run`); called from
    Python, the command begins with this call.
    """
    started = time.monotonic() if started is None else started
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a one-line usage error already printed
        return exc.code if isinstance(exc.code, int) else 2
    args.started = started
    from .engine.distributed import env_rank, launched_by_torchrun

    # Pillow warns (several lines) about images between one and two times its pixel limit before
    # our own check refuses them in one line; in the command line that line is the whole message.
    from PIL import Image

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

    rank = env_rank()
    who = f"resnetlab {args.command}" + (f" [rank {rank}]" if launched_by_torchrun() else "")
    try:
        return args.func(args)
    except (NonFiniteLossError, TrainingStopped) as exc:
        if rank == 0:  # under torchrun every rank stops together; one message is enough
            print(f"{who}: {'error: ' if isinstance(exc, NonFiniteLossError) else ''}{exc}", file=sys.stderr)
        return exc.exit_code
    except ResnetlabError as exc:
        print(f"{who}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        # A second Ctrl-C: stop at once. Every file is written to a temporary name first, so the
        # last saved state and weights are whole.
        print(f"{who}: interrupted", file=sys.stderr)
        return 130


def run() -> NoReturn:
    """Console-script entry point: exit with :func:`main`'s status; the command began when the process did."""
    sys.exit(main(started=time.monotonic() - process_age()))
