"""``resnetlab eval``: a checkpoint measured on a test split, with per-class figures and pictures.

The split is Fashion-MNIST's test set, or a class folder's ``test/`` (else its validation images,
and the printed line says ``val acc``). It writes ``report.json`` (everything), ``confusion.png`` and ``mistakes.png`` (the most
confident errors) and prints ``test acc T`` and a per-class table.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .data import DeviceLoader, ImageSet, open_dataset
from .runtime import resolve_device, resolve_precision
from .scoring import class_scores
from .errors import ResnetlabError
from .fileio import write_text
from .log import Log
from .pictures import save_confusion, save_image_grid
from .weights import WeightsHeader, build_model



def data_folder(data: str | None, header: WeightsHeader) -> str | None:
    """The data to evaluate on: ``--data``, else the folder the checkpoint was trained on, else None (the defaults)."""
    if data is None and header.trained_on and Path(header.trained_on).is_dir():
        data = header.trained_on
    return data


def load_test_split(data: str | None, header: WeightsHeader) -> tuple[ImageSet, Path, str]:
    """The split to test a checkpoint on, checked against its channels and classes: ``(images, folder, split)``.

    Fashion-MNIST: its test split. A class folder: ``test/``, else ``val/``, else the validation
    part of the seeded split the run made (same seed and fraction, from the checkpoint).
    """
    channels, config = header.preprocess.channels, header.config
    # The run's own split: its image size and channels (a --channels 3 Fashion-MNIST run sees gray three times),
    # and for a class folder without test/ the validation part of the seeded split the run made.
    splits = open_dataset(data_folder(data, header), image_size=header.preprocess.stored_size or header.preprocess.size,
                          channels=channels, val_split=0, val_fraction=config.get("val_fraction") or 0.2,
                          seed=config.get("seed") or 0)
    (test, split), folder = splits.held_out, splits.source
    if test.images.shape[1] != channels or list(test.class_names) != header.class_names:
        raise ResnetlabError(
            f"--data {folder}: its images ({test.images.shape[1]} channel(s), {len(test.class_names)} classes) do not "
            f"match the checkpoint ({channels} channel(s), {header.num_classes} classes); give the data it was trained on"
        )
    return test, folder, split


def compare_with_training(test: ImageSet, folder: Path, split: str, header: WeightsHeader) -> str | None:
    """None if ``test`` is the split the run measured (by the fingerprint in the header), else a note saying so.

    A validation split held out of a one-level class folder is carved again from the folder as it
    is now: if that folder changed since training, the carved images may include training
    images, and the figure would flatter the model, so that is refused.
    """
    trained = header.data.get(split)
    if not trained or trained == test.fingerprint():
        return None  # the same images (or a checkpoint that predates fingerprints)
    carved = split == "val" and not (folder / "val").is_dir()
    if carved and header.trained_on and Path(header.trained_on).resolve() == folder.resolve():
        raise ResnetlabError(
            f"--data {folder}: its files changed since training, so the validation images held out of it now are not "
            "those the run held out and may include training images; put the folder back as it was, or evaluate "
            "on a folder of separate test images (DIR/test/<class>/)"
        )
    return (f"note: these {split} images are not the ones the run measured (other files, or --limit-test in training); "
            "the figures are not the run's")


def classification_report(labels: torch.Tensor, preds: torch.Tensor, class_names: list[str]) -> dict[str, Any]:
    """Confusion matrix (rows true, columns predicted), per-class precision, recall, F1, support, and macro means."""
    k = len(class_names)
    confusion = torch.bincount(labels * k + preds, minlength=k * k).view(k, k)
    tp = confusion.diag().double()
    predicted, actual = confusion.sum(0).double(), confusion.sum(1).double()
    precision = torch.where(predicted > 0, tp / predicted.clamp_min(1), torch.zeros_like(tp))
    recall = torch.where(actual > 0, tp / actual.clamp_min(1), torch.zeros_like(tp))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-12), torch.zeros_like(tp))
    per_class = [
        {"class": name, "precision": precision[i].item(), "recall": recall[i].item(), "f1": f1[i].item(),
         "support": int(actual[i])}
        for i, name in enumerate(class_names)
    ]
    macro = {"precision": precision.mean().item(), "recall": recall.mean().item(), "f1": f1.mean().item(),
             "support": int(actual.sum())}
    return {"per_class": per_class, "macro": macro, "confusion": confusion.tolist()}


def format_table(report: dict[str, Any]) -> str:
    """The per-class table, as printed by ``resnetlab eval``."""
    width = max(12, *(len(r["class"]) for r in report["per_class"]))
    lines = [f"{'class':<{width}}  precision  recall     f1  support"]
    for row in [*report["per_class"], {"class": "macro avg", **report["macro"]}]:
        lines.append(f"{row['class']:<{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}  {row['f1']:.4f}  {row['support']:7d}")
    return "\n".join(lines)


def evaluate_checkpoint(
    checkpoint: str | os.PathLike[str],
    data: str | None = None,
    out: str | os.PathLike[str] | None = None,
    *,
    tta: bool = False,
    device: str = "auto",
    precision: str | None = None,
    batch_size: int | None = None,
    mistakes: int = 32,
    explain: bool = False,
    log: Log = print,
) -> dict[str, Any]:
    """Evaluate a weight file on its data set's test split; write the report and pictures; return the report.

    ``precision`` None (and ``batch_size`` None) take the run's own settings from the checkpoint,
    so on the same machine the accuracy equals the one training reported.
    """
    checkpoint = Path(checkpoint)
    model, header = build_model(checkpoint)
    test, folder, split = load_test_split(data, header)
    note = compare_with_training(test, folder, split, header)
    out_dir = Path(out) if out is not None else checkpoint.parent / f"eval-{checkpoint.stem}"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ResnetlabError(f"--out {out_dir}: cannot create it ({exc.strerror}); choose a writable folder") from None
    dev = resolve_device(device)
    # Precision, batches and memory format as in training, so the figures match the run's own to the last digit.
    trained = header.config
    if precision is not None:
        prec = resolve_precision(precision, dev)
    else:
        try:  # what the run computed in, where this device has it (fp16 from a GPU run is no CPU option)
            prec = resolve_precision(header.precision, dev)
        except ResnetlabError:
            prec = resolve_precision("auto", dev)
    channels_last = bool(trained.get("channels_last", False))
    model = model.to(dev, prec.dtype).eval()
    if trained.get("small_maps"):  # the same arithmetic as the run's own evaluation
        from .models.small_maps import use_small_map_products

        use_small_map_products(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    pre = header.preprocess
    loader = DeviceLoader(test, batch_size or int(trained.get("batch_size") or 256), device=dev,
                          image_size=pre.size, channels_last=channels_last, dtype=prec.dtype, mean=pre.mean, std=pre.std)
    scores = []
    with torch.no_grad():
        for x, _ in loader.batches():
            with prec.autocast(dev):
                scores.append(class_scores(model, x, tta).cpu())
    logits = torch.cat(scores)
    labels = test.labels
    probs = logits.softmax(1)
    confidence, preds = probs.max(1)
    correct = int((preds == labels).sum())
    report: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "data": str(folder),
        "split": split,
        "count": len(labels),
        "correct": correct,
        "accuracy": correct / len(labels),
        "loss": F.cross_entropy(logits, labels).item(),
        # By the fingerprint in the checkpoint's header (None: a checkpoint written before they were kept).
        "same_images_as_training": note is None if header.data.get(split) else None,
        "tta": tta,
        "precision": prec.name,
        "device": str(dev),
        **classification_report(labels, preds, header.class_names),
    }
    wrong = (preds != labels).nonzero().flatten()
    worst = wrong[confidence[wrong].argsort(descending=True)][:mistakes]
    names = header.class_names
    report["mistakes"] = [
        {"index": int(i), "true": names[labels[i]], "predicted": names[preds[i]], "prob": confidence[i].item()}
        for i in worst
    ]
    write_text(out_dir / "report.json", json.dumps(report, indent=2) + "\n")
    save_confusion(out_dir / "confusion.png", torch.tensor(report["confusion"]), names,
                   title=f"{checkpoint.name}: test acc {report['accuracy']:.4f}")
    if len(worst):
        titles = [f"{m['true']}\n-> {m['predicted']} ({m['prob']:.2f})" for m in report["mistakes"]]
        if explain:  # what the model looked at for the class it wrongly chose
            from .explain import as_seen, grad_cam
            from .pictures import save_explanation_sheet

            model.float().to(memory_format=torch.contiguous_format)
            x = pre(test.images[worst].to(dev)).float()
            heatmaps, _ = grad_cam(model, x, preds[worst].to(dev))
            shown = as_seen(test.images[worst], pre.size)
            save_explanation_sheet(out_dir / "mistakes.png", shown, heatmaps, titles, num_cols=8,
                                   title_colors=["firebrick"] * len(worst))
        else:
            save_image_grid(out_dir / "mistakes.png", test.images[worst], titles, title_colors=["firebrick"] * len(worst))
    else:
        (out_dir / "mistakes.png").unlink(missing_ok=True)  # no mistakes: no stale picture from an earlier run
    log(f"{split} acc {report['accuracy']:.4f}")
    log(format_table(report))
    log(f"{report['count']:,} {split} images from {folder}; report.json, confusion.png, mistakes.png in {out_dir}")
    if note:
        log(note)
    return report
