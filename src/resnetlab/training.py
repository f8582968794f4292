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
    ``folder`` for your own images), then the data. Example::

        import resnetlab
        result = resnetlab.train(data="my_images/", epochs=15)
        result.best_val_acc, result.run_dir
        clf = resnetlab.load(result.run_dir / "best.safetensors")
    """
    from .engine import TrainConfig, Watch, fit

    config = TrainConfig(preset=preset, **fields)
    if in_notebook():
        return fit(config, watch=Watch(progress=True, on_epoch=LiveCurves(f"{config.model or ''} {preset or ''}".strip())))
    return fit(config)
