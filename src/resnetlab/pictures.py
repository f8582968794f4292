"""Pictures of images and results: labelled image grids (the book's ``show_images``) and a confusion matrix."""

from __future__ import annotations

import io
import math
import os
from typing import Sequence

import torch

from .fileio import atomic_path


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike[str], dpi: int = 100) -> None:
    """Save a figure as PNG atomically and close it."""
    plt = pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def save_image_grid(
    path: str | os.PathLike[str],
    images: torch.Tensor,
    titles: Sequence[str],
    num_cols: int = 8,
    title_colors: Sequence[str] | None = None,
) -> None:
    """Draw uint8 images [N, C, H, W] in a grid, each with its title above (as d2l's ``show_images``)."""
    plt = pyplot()
    n = len(images)
    num_cols = max(1, min(num_cols, n))
    num_rows = max(1, math.ceil(n / num_cols))
    fig, axes = plt.subplots(num_rows, num_cols, figsize=(1.6 * num_cols, 1.9 * num_rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        image = images[i].cpu()
        if image.shape[0] == 1:
            ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=255)
        else:
            ax.imshow(image.permute(1, 2, 0).numpy())
        color = title_colors[i] if title_colors is not None else "black"
        ax.set_title(titles[i], fontsize=7, color=color)
    save_figure(fig, path)


def save_confusion(path: str | os.PathLike[str], matrix: torch.Tensor, class_names: Sequence[str], title: str = "") -> None:
    """Draw a confusion matrix (rows: true class, columns: predicted) with the counts in the cells."""
    plt = pyplot()
    k = len(class_names)
    size = max(5.0, 0.55 * k + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    counts = matrix.cpu().numpy()
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(k), labels=class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), labels=class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    if k <= 30:
        top = counts.max() if counts.size else 0
        for t in range(k):
            for p in range(k):
                ax.text(p, t, str(int(counts[t, p])), ha="center", va="center", fontsize=7,
                        color="white" if counts[t, p] > top / 2 else "black")
    save_figure(fig, path)
