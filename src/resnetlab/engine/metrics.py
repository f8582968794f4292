"""Per-epoch metrics: ``metrics.csv`` and the book-style ``curves.png``, both rewritten atomically."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from ..errors import ResnetlabError
from ..util.fileio import write_text
from ..util.pictures import figure, save_figure

COLUMNS = ["epoch", "lr", "train_loss", "train_acc", "val_acc", "test_acc", "examples_per_sec", "seconds"]


def write_csv(path: str | os.PathLike[str], rows: list[dict[str, float | int | None]]) -> None:
    """Write the metric rows (dicts keyed by :data:`COLUMNS`; None for an empty cell)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else _fmt(row[k])) for k in COLUMNS})
    write_text(path, buf.getvalue())


def _fmt(value: float | int) -> str:
    return str(value) if isinstance(value, int) else f"{value:.6g}"


def read_csv(path: str | os.PathLike[str]) -> list[dict[str, float | int | None]]:
    """Read a ``metrics.csv`` back into rows (numbers, None for empty cells)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ResnetlabError(f"{path}: cannot read it ({exc.strerror}); give a run folder holding metrics.csv") from None
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or "epoch" not in reader.fieldnames:
        raise ResnetlabError(f"{path}: not a resnetlab metrics.csv (no 'epoch' column)")
    rows = []
    for number, raw in enumerate(reader, start=2):
        try:
            rows.append({k: None if v in ("", None) else (int(v) if k == "epoch" else float(v)) for k, v in raw.items()})
        except ValueError:
            raise ResnetlabError(f"{path}, line {number}: not a number where one belongs") from None
    return rows


def plot_curves(path: str | os.PathLike[str], rows: list[dict[str, float | int | None]], title: str = "") -> None:
    """Write ``curves.png``: :func:`curves_figure` of the rows."""
    save_figure(curves_figure(rows, title), path, dpi=120)


def curves_figure(rows: list[dict[str, float | int | None]], title: str = ""):
    """Train loss, train acc and val/test acc against epochs in one plot, as d2l's Animator draws them."""
    fig = figure(5, 3.5)
    ax = fig.subplots()
    epochs = [r["epoch"] for r in rows]
    for key, label, style in [
        ("train_loss", "train loss", "-"),
        ("train_acc", "train acc", "m--"),
        ("val_acc", "val acc", "g-."),
        ("test_acc", "test acc", "r:"),
    ]:
        points = [(e, r[key]) for e, r in zip(epochs, rows) if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points), style, label=label, marker="o" if len(points) == 1 else None)
    ax.set_xlabel("epoch")
    ax.set_xlim(0.5 if len(epochs) < 2 else 1, max(epochs) if epochs else 1)
    ax.grid(True)
    ax.legend()
    if title:
        ax.set_title(title, fontsize=9)
    return fig
