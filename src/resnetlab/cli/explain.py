"""``resnetlab maps`` (each stage's strongest feature maps for one image) and ``resnetlab explain`` (Grad-CAM per image).

The pictures come from ``explain.py`` (stage outputs, Grad-CAM) and ``pictures.py`` (drawing).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data.images import find_images, read_image
from ..errors import ResnetlabError
from ..inference.classifier import load
from ..inference.explain import StageOutput, as_seen, default_stage, find_stage, stage_outputs
from ..models import create_model, model_spec
from ..util.fileio import make_folder
from ..util.locks import writing_near_run
from ..util.log import Log
from ..util.pictures import save_explanation, save_explanation_sheet, save_stage_maps
from .common import parse_input_size

# ``explain`` takes this many images per forward and backward pass (as predict does), so a folder of
# thousands never holds all their activations at once (only their uint8 pixels at the stored size),
# and draws at most SHEET_IMAGES on sheet.png.
EXPLAIN_CHUNK = 64
SHEET_IMAGES = 64


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the ``maps`` and ``explain`` commands."""
    p = sub.add_parser("maps", help="picture each stage's strongest feature maps for one image (the seed's shapes as titles)")
    p.add_argument("source", metavar="CKPT_OR_MODEL", help="a .safetensors file written by training, or a model name (random weights)")
    p.add_argument("image", metavar="IMAGE", nargs="?", help="the image (default for a model name: random pixels, as the seed's torch.rand)")
    p.add_argument("--input-size", metavar="N,C,H,W", help="a model name's input (default: its natural size), e.g. 1,1,256,256")
    p.add_argument("--out", metavar="FILE.png", default="maps.png", help="output file (default: maps.png)")
    p.set_defaults(func=maps_command)

    p = sub.add_parser("explain", help="Grad-CAM: where in each image the evidence for a class lay")
    p.add_argument("checkpoint", metavar="CKPT", help="a .safetensors file written by training")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files, or folders searched for images")
    p.add_argument("--class", dest="target", metavar="NAME", help="the class to explain (default: each image's top class)")
    p.add_argument("--stage", metavar="NAME", help="the stage whose activations are used (default: the last whose maps are at least 4x4)")
    p.add_argument("--top-k", type=int, default=3, help="classes listed under each picture (default: 3)")
    p.add_argument("--out", metavar="DIR", default="explain", help="folder for one PNG per image and sheet.png (default: explain)")
    p.set_defaults(func=explain_command)


def maps_command(args: argparse.Namespace) -> int:
    """Draw the input and each stage's strongest channels in one PNG."""
    size = parse_input_size(args.input_size) if args.input_size else None
    with writing_near_run(args.out, "resnetlab maps"):  # not into the folder of a run that is still training
        save_maps(args.source, args.image, args.out, input_size=size)
    return 0


def explain_command(args: argparse.Namespace) -> int:
    """Grad-CAM for each image: one PNG per image, and sheet.png for several."""
    if args.top_k < 1:
        raise ResnetlabError(f"--top-k {args.top_k} must be at least 1")
    with writing_near_run(Path(args.out) / "sheet.png", "resnetlab explain"):
        explain_files(args.checkpoint, args.images, args.out, target=args.target, stage=args.stage, top_k=args.top_k)
    return 0


def _model_and_input(source: str, image: str | None, input_size: tuple[int, int, int, int] | None):
    """(model, uint8 image [C, H, W] as shown, model input [1, C, H, W], what the title says about the weights).

    ``source`` is a weight file (trained weights, its own preprocessing) or a model name (random
    weights; the image is only scaled to [0, 1], as the seed's ``torch.rand`` input is).
    """
    if source.endswith(".safetensors") or Path(source).is_file():
        clf = load(source)
        if image is None:
            raise ResnetlabError("an IMAGE is needed with a weight file (a model name alone draws random input)")
        pixels = clf.to_uint8(image)
        return clf.model, pixels, clf.prepare([pixels]), f"{clf.header.model}, trained ({Path(source).name})"
    spec = model_spec(source)  # an unknown name is a one-line error listing the models
    model = create_model(source).eval()
    n, c, h, w = input_size or (1, model.in_channels, spec.image_size, spec.image_size)
    if c != model.in_channels:
        raise ResnetlabError(f"--input-size has {c} channel(s) but {source} takes {model.in_channels}; use N,{model.in_channels},H,W")
    if image is None:
        x = torch.rand(1, c, h, w, generator=torch.Generator().manual_seed(0))  # as the seed's X = torch.rand(...)
        pixels = (x[0] * 255).round().to(torch.uint8)
    else:
        pixels = read_image(image, c, None)
        x = F.interpolate(pixels[None].float() / 255, size=(h, w), mode="bilinear", align_corners=False)
        pixels = (x[0] * 255).round().clamp(0, 255).to(torch.uint8)
    return model, pixels, x, f"{source}, random weights (untrained)"


def save_maps(source: str, image: str | None, out: str, input_size: tuple[int, int, int, int] | None = None,
              log: Log = print) -> list[StageOutput]:
    """The input and each stage's strongest channels in one PNG; returns the stage outputs."""
    model, pixels, x, weights = _model_and_input(source, image, input_size)
    outputs = stage_outputs(model, x)
    save_stage_maps(out, pixels, [(o.name, o.line, o.output[0]) for o in outputs], title=weights)
    for o in outputs:
        log(o.line)
    log(f"wrote {out}: the input and the 8 strongest channels of each of {len(outputs)} stages")
    return outputs


def explain_files(checkpoint: str, images: list[str], out: str, *, target: str | None = None, stage: str | None = None,
                  top_k: int = 3, log: Log = print) -> list[str]:
    """One PNG per image (the image beside its Grad-CAM), and ``sheet.png`` for several; returns the files written."""
    clf = load(checkpoint)
    probe = torch.zeros(1, clf.channels, clf.image_size, clf.image_size, device=clf.device)
    stage_name, _ = find_stage(clf.model, stage) if stage is not None else (default_stage(clf.model, probe), None)
    if target is not None:
        clf.class_index(target)  # a class the checkpoint lacks: one line, before any image is read
    files = find_images(images)
    if not files:
        raise ResnetlabError(f"no image files in {' '.join(images)}; give image files or folders holding them")
    folder = make_folder(out)
    written: list[str] = []
    sheet_images, sheet_maps, sheet_titles = [], [], []  # the first SHEET_IMAGES, for sheet.png
    decoded = [clf.to_uint8(path) for path in files]  # a bad file: one line naming it, before any picture is written
    for first in range(0, len(files), EXPLAIN_CHUNK):
        chunk, pixels = files[first : first + EXPLAIN_CHUNK], decoded[first : first + EXPLAIN_CHUNK]
        heatmaps = clf.explain(pixels, target, stage=stage_name)
        predictions = clf.predict(pixels, top_k=top_k)
        shown = as_seen(pixels, clf.image_size)
        for path, image, heatmap, prediction in zip(chunk, shown, heatmaps, predictions):
            about = target if target is not None else prediction.label
            name = folder / f"{path.stem}.explain.png"
            save_explanation(name, image, heatmap, f"Grad-CAM at {stage_name}: {about}", prediction.top)
            written.append(str(name))
            log(f"{path}\t" + "\t".join(f"{c} {p:.3f}" for c, p in prediction.top) + f"\t-> {name}")
            if len(sheet_images) < SHEET_IMAGES:
                sheet_images.append(image)
                sheet_maps.append(heatmap)
                sheet_titles.append(f"{path.name}: {about}")
    if len(files) > 1:
        save_explanation_sheet(folder / "sheet.png", sheet_images, sheet_maps, sheet_titles)
        written.append(str(folder / "sheet.png"))
        which = f"all {len(files)}" if len(sheet_images) == len(files) else f"the first {len(sheet_images)} of {len(files)}"
        log(f"wrote {folder / 'sheet.png'}: {which} images")
    return written
