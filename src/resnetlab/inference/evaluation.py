"""Measuring a checkpoint on a split: which split (the run's own, checked by its fingerprint), its logits, the report.

The split is Fashion-MNIST's test set, or a class folder's ``test/`` (else its validation images:
``val/``, or the part of the folder the run held out). :func:`split_logits` computes as the run
computed; :func:`make_report` turns the logits into ``report.json``'s figures: accuracy, loss,
per-class precision, recall and F1, the confusion matrix, the most confident mistakes. The
``resnetlab eval`` command that writes them and draws the pictures is ``cli/evaluate.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import BASE_DEFAULTS
from ..data import DeviceLoader, ImageSet, open_dataset
from ..errors import ResnetlabError
from ..models.small_maps import use_small_map_products
from ..scoring import score_report, split_scores
from ..util.runtime import Precision, resolve_precision
from ..weights import WeightsHeader


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
                          channels=channels, val_split=0,
                          # A checkpoint from before its header kept them: the base defaults it was made with.
                          val_fraction=config.get("val_fraction") or BASE_DEFAULTS["val_fraction"],
                          seed=config.get("seed") or BASE_DEFAULTS["seed"])
    (test, split), folder = splits.held_out, splits.source
    if test.shape[1] != channels or list(test.class_names) != header.class_names:
        raise ResnetlabError(
            f"--data {folder}: its images ({test.shape[1]} channel(s), {len(test.class_names)} classes) do not "
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
    why = "another folder, or its files changed since training" if carved else "other files, or --limit-test in training"
    return f"note: these {split} images are not the ones the run measured ({why}); the figures are not the run's"


def format_table(report: dict[str, Any]) -> str:
    """The per-class table, as printed by ``resnetlab eval``."""
    width = max(12, *(len(r["class"]) for r in report["per_class"]))
    lines = [f"{'class':<{width}}  precision  recall     f1  support"]
    for row in [*report["per_class"], {"class": "macro avg", **report["macro"]}]:
        lines.append(f"{row['class']:<{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}  {row['f1']:.4f}  {row['support']:7d}")
    return "\n".join(lines)


def scoring_precision(header: WeightsHeader, device: torch.device, precision: str | None) -> Precision:
    """``precision`` as asked (None: the run's own where ``device`` has it, else ``auto``), so the figures match the run's."""
    if precision is not None:
        return resolve_precision(precision, device)
    try:  # what the run computed in, where this device has it (fp16 from a GPU run is no CPU option)
        return resolve_precision(header.precision, device)
    except ResnetlabError:
        return resolve_precision("auto", device)


def split_logits(model: nn.Module, header: WeightsHeader, test: ImageSet, *, device: torch.device, precision: Precision,
                 tta: bool = False, batch_size: int | None = None, stream: bool = False) -> torch.Tensor:
    """Float32 logits [N, classes] (on the CPU) of ``model`` for every image of ``test``, computed as the run computed them.

    Precision, batch size (None: the run's), memory format and the small-map products are the
    run's own, so on the same machine the accuracy equals the one training reported. ``stream``:
    gather each batch from the split's source (a memory map larger than memory, say) instead of
    moving the split to ``device`` whole.
    """
    trained = header.config
    channels_last = bool(trained.get("channels_last", False))
    model = model.to(device, precision.dtype).eval()
    if trained.get("small_maps"):  # the same arithmetic as the run's own evaluation
        use_small_map_products(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    pre = header.preprocess
    loader = DeviceLoader(test, batch_size or int(trained.get("batch_size") or 256), device=device, image_size=pre.size,
                          channels_last=channels_last, dtype=precision.dtype, mean=pre.mean, std=pre.std, stream=stream)
    return split_scores(model, loader, precision=precision, tta=tta)


def make_report(logits: torch.Tensor, test: ImageSet, header: WeightsHeader, *, mistakes: int = 32,
                **about: Any) -> dict[str, Any]:
    """``report.json``: accuracy, loss, the per-class table and confusion matrix, the ``mistakes`` most confident errors.

    ``about`` (checkpoint, data, split, tta, precision, device, same_images_as_training) is recorded as given.
    """
    scores = score_report(logits, test.labels, header.class_names, mistakes=mistakes)
    first = ("count", "correct", "accuracy", "loss")
    return {**{k: about[k] for k in ("checkpoint", "data", "split")}, **{k: scores[k] for k in first},
            **{k: v for k, v in about.items() if k not in ("checkpoint", "data", "split")},
            **{k: v for k, v in scores.items() if k not in first}}
