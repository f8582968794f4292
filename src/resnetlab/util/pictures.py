"""Pictures of images and results: labelled image grids (the book's ``show_images``), a confusion matrix,
feature maps by stage and Grad-CAM overlays. Figures are made without pyplot (no window, no global state)."""

from __future__ import annotations

import io
import math
import os
from typing import Sequence

import torch

from .fileio import atomic_path


def figure(width: float, height: float):
    """A matplotlib figure of that size in inches, made without pyplot: no window, no global backend
    switched (a notebook's inline plots stay as they are), nothing to close."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def png_bytes(fig, dpi: int = 100) -> bytes:
    """The figure as PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def save_figure(fig, path: str | os.PathLike[str], dpi: int = 100) -> None:
    """Save a figure as PNG atomically."""
    data = png_bytes(fig, dpi)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _show(ax, image: torch.Tensor) -> None:
    """Draw one uint8 image [C, H, W] (gray or RGB) without axes."""
    image = image.cpu()
    if image.shape[0] == 1:
        ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(image.permute(1, 2, 0).numpy())
    ax.axis("off")


def _overlay(ax, image: torch.Tensor, heatmap: torch.Tensor) -> None:
    """An image with a heatmap ([H, W] in [0, 1], at the image's size) over it, half transparent."""
    _show(ax, image)
    ax.imshow(heatmap.numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1, interpolation="bilinear",
              extent=(-0.5, image.shape[-1] - 0.5, image.shape[-2] - 0.5, -0.5))


def save_stage_maps(path: str | os.PathLike[str], image: torch.Tensor, stages: Sequence[tuple[str, str, torch.Tensor]],
                    title: str, per_stage: int = 8) -> None:
    """The input, then for each stage (name, the seed's shape line, maps [C, h, w]) its ``per_stage`` strongest channels.

    Channels are ranked by their mean activation; each map is scaled to its own range, except maps
    of one position (the seed's b5 at 28 px), which share the stage's range and show their value.
    """
    fig = figure(1.3 * per_stage, 1.55 * (len(stages) + 1) + 0.4)
    rows = fig.subfigures(len(stages) + 1, 1)
    fig.suptitle(title, fontsize=10)
    top = rows[0].subplots(1, per_stage)
    _show(top[0], image)
    top[0].set_title(f"input {list(image.shape)}", fontsize=7)
    for ax in top[1:]:
        ax.axis("off")
    for row, (name, line, maps) in zip(rows[1:], stages):
        row.suptitle(f"{name}: {line.replace(chr(9), ' ')}", fontsize=8, x=0.01, ha="left")
        strongest = maps.flatten(1).mean(1).argsort(descending=True)[:per_stage]
        single = maps.shape[-1] * maps.shape[-2] == 1  # one value per channel: its own range would be empty
        top_value = float(maps.max().clamp_min(1e-12))
        for ax, channel in zip(row.subplots(1, per_stage), [*strongest.tolist(), *[None] * per_stage]):
            ax.axis("off")
            if channel is not None:
                scale = dict(vmin=min(0.0, float(maps.min())), vmax=top_value) if single else {}
                ax.imshow(maps[channel].numpy(), cmap="viridis", interpolation="nearest", **scale)
                value = f" = {float(maps[channel].flatten()[0]):.2f}" if single else ""
                ax.set_title(f"ch {channel}{value}", fontsize=6)
    save_figure(fig, path, dpi=110)


def save_explanation(path: str | os.PathLike[str], image: torch.Tensor, heatmap: torch.Tensor, title: str,
                     top: Sequence[tuple[str, float]]) -> None:
    """One image beside its Grad-CAM overlay, with the target and the top classes and probabilities."""
    fig = figure(5.2, 2.9)
    left, right = fig.subplots(1, 2)
    _show(left, image)
    left.set_title("image", fontsize=8)
    _overlay(right, image, heatmap)
    right.set_title(title, fontsize=8)
    fig.text(0.5, 0.01, "   ".join(f"{name} {prob:.2f}" for name, prob in top), ha="center", fontsize=7)
    save_figure(fig, path, dpi=120)


def save_explanation_sheet(path: str | os.PathLike[str], images: Sequence[torch.Tensor], heatmaps: Sequence[torch.Tensor],
                           titles: Sequence[str], num_cols: int = 6, title_colors: Sequence[str] | None = None) -> None:
    """Several images with their Grad-CAM overlays in a grid (a contact sheet)."""
    n = len(images)
    num_cols = max(1, min(num_cols, n))
    num_rows = max(1, math.ceil(n / num_cols))
    fig = figure(1.9 * num_cols, 2.2 * num_rows)
    for i, ax in enumerate(fig.subplots(num_rows, num_cols, squeeze=False).flat):
        ax.axis("off")
        if i < n:
            _overlay(ax, images[i], heatmaps[i])
            ax.set_title(titles[i], fontsize=7, color=title_colors[i] if title_colors else "black")
    save_figure(fig, path, dpi=110)


def image_grid_figure(images: torch.Tensor, titles: Sequence[str], num_cols: int = 8,
                      title_colors: Sequence[str] | None = None):
    """uint8 images [N, C, H, W] in a grid, each with its title above (as d2l's ``show_images``); the figure."""
    n = len(images)
    num_cols = max(1, min(num_cols, n))
    num_rows = max(1, math.ceil(n / num_cols))
    fig = figure(1.6 * num_cols, 1.9 * num_rows)
    axes = fig.subplots(num_rows, num_cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        _show(ax, images[i])
        color = title_colors[i] if title_colors is not None else "black"
        ax.set_title(titles[i], fontsize=7, color=color)
    return fig


def save_image_grid(
    path: str | os.PathLike[str],
    images: torch.Tensor,
    titles: Sequence[str],
    num_cols: int = 8,
    title_colors: Sequence[str] | None = None,
) -> None:
    """Draw uint8 images [N, C, H, W] in a grid, each with its title above, into ``path`` (see :func:`image_grid_figure`)."""
    save_figure(image_grid_figure(images, titles, num_cols, title_colors), path)


def confusion_figure(matrix: torch.Tensor, class_names: Sequence[str], title: str = ""):
    """A confusion matrix (rows: true class, columns: predicted) with the counts in the cells; the figure."""
    k = len(class_names)
    size = max(5.0, 0.55 * k + 2)
    fig = figure(size, size)
    ax = fig.subplots()
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
    return fig


def save_confusion(path: str | os.PathLike[str], matrix: torch.Tensor, class_names: Sequence[str], title: str = "") -> None:
    """Draw a confusion matrix into ``path`` (see :func:`confusion_figure`)."""
    save_figure(confusion_figure(matrix, class_names, title), path)
