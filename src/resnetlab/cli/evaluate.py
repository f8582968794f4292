"""``resnetlab eval CKPT``: a checkpoint measured on its test split, with per-class figures and pictures.

It writes ``report.json`` (everything), ``confusion.png`` and ``mistakes.png`` (the most
confident errors, with ``--explain`` their Grad-CAM) and prints ``test acc T`` (``val acc`` for
a class folder without ``test/``) and a per-class table. The measuring is ``evaluation.py``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import torch

from ..data.feed import FEEDS, choose_feed
from ..inference.evaluation import compare_with_training, format_table, load_test_split, make_report, scoring_precision, split_logits
from ..inference.explain import as_seen, grad_cam
from ..scoring import mistake_titles
from ..util.fileio import make_folder, write_text
from ..util.locks import writing_near_run
from ..util.log import Log
from ..util.pictures import save_confusion, save_explanation_sheet, save_image_grid
from ..util.runtime import resolve_device
from ..weights import load_model
from .common import DEVICES, PRECISIONS


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the ``eval`` command."""
    p = sub.add_parser("eval", help="measure a checkpoint on the test split: accuracy, per-class table, pictures")
    p.add_argument("checkpoint", metavar="CKPT", help="a .safetensors file written by training")
    p.add_argument("--data", metavar="DIR", help="data folder (default: the one the checkpoint was trained on)")
    p.add_argument("--out", metavar="DIR", help="folder for report.json, confusion.png, mistakes.png (default: eval-<name> beside CKPT)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average with the mirrored image's prediction (default: as the run scored, so figures match "
                        "the run's; the cpu and best presets do)")
    p.add_argument("--explain", action="store_true", help="draw Grad-CAM heatmaps of the predicted class over mistakes.png")
    p.add_argument("--device", choices=DEVICES, default="auto", help="where to run (default: auto)")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="fp32, bf16, fp16, fp64, or auto (as in training); default: the run's own where this device "
                        "has it, so figures match the run's")
    p.add_argument("--feed", choices=FEEDS, default="auto",
                   help="auto (the split resident on the device while it takes under a quarter of its memory, else "
                        "streamed batch by batch from the folder's cache), resident, or stream")
    p.set_defaults(func=eval_command)


def eval_command(args: argparse.Namespace) -> int:
    """Evaluate the checkpoint as the flags say."""
    evaluate_checkpoint(args.checkpoint, args.data, args.out, tta=args.tta, device=args.device,
                        precision=args.precision, explain=args.explain, feed=args.feed)
    return 0


def evaluate_checkpoint(
    checkpoint: str | os.PathLike[str],
    data: str | None = None,
    out: str | os.PathLike[str] | None = None,
    *,
    tta: bool | None = None,
    device: str = "auto",
    precision: str | None = None,
    batch_size: int | None = None,
    mistakes: int = 32,
    explain: bool = False,
    feed: str = "auto",
    log: Log = print,
) -> dict[str, Any]:
    """Evaluate a weight file on its data set's test split; write the report and pictures; return the report.

    ``precision``, ``tta`` and ``batch_size`` None take the run's own settings from the checkpoint,
    so on the same machine the accuracy equals the one training reported. ``feed``: how the
    images reach the model (data/feed.py); the figures are the same either way.
    """
    checkpoint = Path(checkpoint)
    out_dir = Path(out) if out is not None else checkpoint.parent / f"eval-{checkpoint.stem}"
    # Into a run's folder (the default) only while no other process writes there: a run still training is named.
    with writing_near_run(out_dir / "report.json", "resnetlab eval"):
        model, header = load_model(checkpoint)
        if tta is None:
            tta = bool(header.config.get("tta", False))
        test, folder, split = load_test_split(data, header)
        note = compare_with_training(test, folder, split, header)
        make_folder(out_dir)
        dev = resolve_device(device)
        prec = scoring_precision(header, dev, precision)
        fed = choose_feed(test.nbytes, dev, feed)
        logits = split_logits(model, header, test, device=dev, precision=prec, tta=tta, batch_size=batch_size,
                              stream=fed.stream)
        report = make_report(
            logits, test, header, mistakes=mistakes, checkpoint=str(checkpoint), data=str(folder), split=split,
            # By the fingerprint in the checkpoint's header (None: a checkpoint written before they were kept).
            same_images_as_training=note is None if header.data.get(split) else None,
            tta=tta, precision=prec.name, device=str(dev),
        )
        write_text(out_dir / "report.json", json.dumps(report, indent=2) + "\n")
        names = header.class_names
        save_confusion(out_dir / "confusion.png", torch.tensor(report["confusion"]), names,
                       title=f"{checkpoint.name}: test acc {report['accuracy']:.4f}")
        worst = torch.tensor([m["index"] for m in report["mistakes"]], dtype=torch.long)
        if len(worst):
            pixels = test.gather(worst)  # only these images are read, however large the split
            titles = mistake_titles(report)
            if explain:  # what the model looked at for the class it wrongly chose
                model.float().to(memory_format=torch.contiguous_format)
                x = header.preprocess(pixels.to(dev)).float()
                predicted = torch.tensor([names.index(m["predicted"]) for m in report["mistakes"]], device=dev)
                heatmaps, _ = grad_cam(model, x, predicted)
                shown = as_seen(pixels, header.preprocess.size)
                save_explanation_sheet(out_dir / "mistakes.png", shown, heatmaps, titles, num_cols=8,
                                       title_colors=["firebrick"] * len(worst))
            else:
                save_image_grid(out_dir / "mistakes.png", pixels, titles, title_colors=["firebrick"] * len(worst))
        else:
            (out_dir / "mistakes.png").unlink(missing_ok=True)  # no mistakes: no stale picture from an earlier run
        pictures_in_tensorboard(checkpoint, out_dir, report, test, header, split)
        log(f"{split} acc {report['accuracy']:.4f}")
        log(format_table(report))
        log(f"{report['count']:,} {split} images from {folder} ({fed.reason}); report.json, confusion.png, mistakes.png"
            f"{' (and TensorBoard event files)' if any(out_dir.glob('events.out.tfevents.*')) else ''} in {out_dir}")
        if note:
            log(note)
        return report


def pictures_in_tensorboard(checkpoint: Path, out_dir: Path, report: dict[str, Any], test, header, split: str) -> None:
    """An evaluation written into the checkpoint's run folder (the default ``eval-<name>/``): its accuracy, confusion
    matrix and mistakes go to TensorBoard event files there too (a run of its own, at the checkpoint's epoch; an
    evaluation repeated there replaces the earlier one's, by TensorBoard's purge)."""
    from ..engine.tensorboard import add_report_pictures, open_writer, tensorboard_installed

    run_folder = checkpoint.parent.resolve()
    if not (run_folder / "config.json").is_file() or run_folder not in out_dir.resolve().parents:
        return
    if not tensorboard_installed():
        return
    step = header.epoch or 0
    writer = open_writer(out_dir, purge_step=step)
    try:
        writer.add_scalar(f"{split}/acc", report["accuracy"], step)
        writer.add_scalar(f"{split}/loss", report["loss"], step)
        add_report_pictures(writer, split, report, test, header.class_names, step)
    finally:
        writer.close()
