"""``resnetlab export CKPT``: the checkpoint as ONNX or TorchScript, checked against PyTorch on real images (``export.py``)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from torch import nn

from ..errors import ResnetlabError
from ..inference.export import CHECK_BATCHES, FORMATS, check_pixels, export_model
from ..util.locks import writing_near_run
from ..util.log import Log
from ..weights import load_model


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the ``export`` command."""
    p = sub.add_parser("export", help="write ONNX or TorchScript, checked against PyTorch")
    p.add_argument("checkpoint", metavar="CKPT", help="a .safetensors file written by training")
    p.add_argument("--format", choices=list(FORMATS), default="onnx", help="file format (default: onnx)")
    p.add_argument("--out", metavar="FILE", help="output file (default: beside CKPT, .onnx or .torchscript.pt)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's, 18 or later)")
    p.add_argument("--data", metavar="DIR", help="data folder whose test images check the export")
    p.set_defaults(func=export_command)


def export_command(args: argparse.Namespace) -> int:
    """Export the checkpoint as the flags say."""
    export_checkpoint(args.checkpoint, args.format, args.out, opset=args.opset, data=args.data)
    return 0


def export_checkpoint(checkpoint: str | os.PathLike[str], fmt: str = "onnx", out: str | os.PathLike[str] | None = None,
                      *, opset: int | None = None, data: str | None = None, log: Log = print,
                      model: nn.Module | None = None) -> Path:
    """Export a weight file to ONNX or TorchScript, verify it against PyTorch, and return its path.

    ``model``: the module a custom run trained (``resnetlab.train(model=net)``), which the file alone cannot rebuild.
    """
    if fmt not in FORMATS:
        raise ResnetlabError(f"--format {fmt!r} is not one of: {', '.join(FORMATS)}")
    if opset is not None and fmt != "onnx":
        raise ResnetlabError("--opset applies to --format onnx only")
    if opset is not None and not 7 <= opset <= 30:
        raise ResnetlabError(f"--opset {opset} is out of range; use 18 or later (the exporter's default: leave it out)")
    checkpoint = Path(checkpoint)
    model, header = load_model(checkpoint, model)
    target = Path(out) if out is not None else checkpoint.with_suffix(".onnx" if fmt == "onnx" else ".torchscript.pt")
    if not target.parent.is_dir():
        raise ResnetlabError(f"--out {target}: the folder {target.parent} does not exist; create it or choose another")
    with writing_near_run(target, "resnetlab export"):  # not into the folder of a run that is still training
        gap = export_model(model, header, fmt, target, pixels=check_pixels(header, data, log), opset=opset)
    log(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB); matches PyTorch at batch sizes "
        f"{' and '.join(map(str, CHECK_BATCHES))} (largest probability gap {gap:.1e}, same top-1)")
    return target
