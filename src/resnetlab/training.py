"""``resnetlab.train(...)``: a run from a script or a notebook, the same run as ``resnetlab train`` with the same fields.

In Jupyter it shows the book's live figure (train loss, train accuracy, validation and test
accuracy per epoch, redrawn in place, as d2l's ``Animator``) and a progress bar per epoch;
elsewhere it prints the run's lines. The training engine is imported only when it is called.
"""

from __future__ import annotations

from typing import Any, Callable


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (where figures and widgets can be shown)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


class LiveCurves:
    """The run's curves as one figure in the notebook, redrawn after every epoch (``display(..., display_id=True)``)."""

    def __init__(self, title: str = "", display: Callable[..., Any] | None = None,
                 image: Callable[..., Any] | None = None) -> None:
        # IPython's display() and Image by default; tests pass their own (IPython is not a dependency).
        if display is None or image is None:
            from IPython.display import Image, display as show

            display, image = display or show, image or Image
        self.title, self.display, self.image, self.handle = title, display, image, None

    def __call__(self, history: list[dict]) -> None:
        from .engine.metrics import curves_figure
        from .pictures import png_bytes

        image = self.image(data=png_bytes(curves_figure(history, self.title), dpi=100))
        if self.handle is None:
            self.handle = self.display(image, display_id=True)
        else:
            self.handle.update(image)


def train(preset: str | None = None, **fields: Any):
    """Train a model; return its :class:`~resnetlab.engine.TrainResult` (test accuracy, run folder, history, ...).

    ``fields`` are :class:`~resnetlab.engine.TrainConfig` fields (``data``, ``epochs``, ``lr`` ...);
    what they leave unset is decided as for ``resnetlab train``: the preset (by device, or
    ``folder`` for your own images), then the data. ``model`` is a registered name, or your own
    ``nn.Module`` (as d2l's ``train_ch6(net, ...)`` takes one): the same loop, presets, budget,
    figure, run folder and resume train a copy of it, and ``net`` holds the best weights at the
    end. Example::

        import resnetlab
        result = resnetlab.train(data="my_images/", epochs=15)
        result.best_val_acc, result.run_dir
        clf = resnetlab.load(result.run_dir / "best.safetensors")
        result = resnetlab.train(model=net, preset="d2l", epochs=2)      # the notes' own nn.Sequential
        clf = resnetlab.load(result.run_dir / "best.safetensors", model=net)
    """
    from torch import nn

    from .engine import TrainConfig, fit

    module = fields.pop("model") if isinstance(fields.get("model"), nn.Module) else None
    config = TrainConfig(preset=preset, **fields)
    title = type(module).__name__ if module is not None else config.model or ""
    return fit(config, watch=_watch(f"{title} {preset or ''}".strip()), model=module)


def resume(run_dir: Any = "runs/latest", model: Any = None, **overrides: Any):
    """Continue a stopped run (``resnetlab train --resume``); a run of your own network needs it again as ``model``."""
    from .engine import resume as resume_run

    return resume_run(run_dir, watch=_watch(str(run_dir)), model=model, **overrides)


def _watch(title: str):
    """In Jupyter a progress bar and the live figure; elsewhere nothing but the run's lines."""
    from .engine import Watch

    if not in_notebook():
        return None
    # tqdm's notebook bar is an ipywidgets widget; without ipywidgets it would fall back to text redrawn with
    # carriage returns in the cell's output, so then the live figure alone shows the progress.
    return Watch(progress=has_widgets(), on_epoch=LiveCurves(title))


def has_widgets() -> bool:
    """Whether ipywidgets (tqdm's notebook progress bar) can be imported."""
    import importlib.util

    return importlib.util.find_spec("ipywidgets") is not None
