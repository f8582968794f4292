"""``resnetlab.train(...)`` and ``resnetlab.resume(...)``: a run from a script or a notebook, the same run as
``resnetlab train`` with the same fields.

In Jupyter it shows the book's live figure (train loss, train accuracy, validation and test
accuracy per epoch, redrawn in place, as d2l's ``Animator``) and a progress bar per epoch;
elsewhere it prints the run's lines. The training engine is imported only when it is called.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from .config import LATEST


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (where figures and widgets can be shown)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def live_curves(title: str = "", display: Callable[..., Any] | None = None, image: Callable[..., Any] | None = None):
    """The run's curves as one figure in the notebook, redrawn after every epoch (a hook; ``display(..., display_id=True)``).

    IPython's ``display`` and ``Image`` by default; tests pass their own (IPython is not a dependency).
    """
    from .engine import Hook
    from .engine.metrics import curves_figure
    from .util.pictures import png_bytes

    if display is None or image is None:
        from IPython.display import Image, display as show

        display, image = display or show, image or Image

    class LiveCurves(Hook):
        handle = None

        def on_epoch_end(self, loop, row):
            picture = image(data=png_bytes(curves_figure(loop.run.progress.history, title), dpi=100))
            if self.handle is None:
                self.handle = display(picture, display_id=True)
            else:
                self.handle.update(picture)

    return LiveCurves()


def train(preset: str | None = None, hooks: Sequence[Any] = (), **fields: Any):
    """Train a model; return its :class:`~resnetlab.engine.TrainResult` (test accuracy, run folder, history, ...).

    ``fields`` are :class:`~resnetlab.engine.TrainConfig` fields (``data``, ``epochs``, ``lr`` ...);
    what they leave unset is decided as for ``resnetlab train``: the preset (by device, or
    ``folder`` for your own images), then the data. ``model`` is a registered name, or your own
    ``nn.Module`` (as d2l's ``train_ch6(net, ...)`` takes one): the same loop, presets, budget,
    figure, run folder and resume train a copy of it, and ``net`` holds the best weights at the
    end. ``hooks``: your own (``resnetlab.Hook``: a tracker, say). Example::

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
    return fit(config, model=module, **_shown(f"{title} {preset or ''}".strip(), hooks))


def lr_find(preset: str | None = None, start_lr: float = 1e-7, end_lr: float = 10.0, steps: int = 100,
            plot: Any = "lr_find.png", **fields: Any):
    """The learning-rate range test (``resnetlab lr-find``) on the run ``train`` with these fields would start.

    Returns the result: ``.suggestion`` (a tenth of the rate at the smoothed loss's minimum),
    ``.lrs``, ``.losses``, ``.smoothed``, and ``.figure()``; ``plot`` (a file, None for none)
    receives the picture. ``model`` may be your own ``nn.Module`` (a copy is used). Example::

        found = resnetlab.lr_find(data="my_images/", init="imagenet")
        result = resnetlab.train(data="my_images/", init="imagenet", lr=found.suggestion)
    """
    from torch import nn

    from .engine import TrainConfig
    from .engine.lr_find import lr_find as range_test

    module = fields.pop("model") if isinstance(fields.get("model"), nn.Module) else None
    return range_test(TrainConfig(preset=preset, **fields), module=module, start_lr=start_lr, end_lr=end_lr,
                      steps=steps, plot=plot)


def resume(run_dir: Any = LATEST, model: Any = None, hooks: Sequence[Any] = (), **overrides: Any):
    """Continue a stopped run (``resnetlab train --resume``); a run of your own network needs it again as ``model``."""
    from .engine import resume as resume_run

    return resume_run(run_dir, model=model, **_shown(str(run_dir), hooks), **overrides)


def _shown(title: str, hooks: Sequence[Any]) -> dict[str, Any]:
    """In Jupyter a progress bar and the live figure besides ``hooks``; elsewhere the run's lines (and a bar on a terminal)."""
    if not in_notebook():
        return {"hooks": list(hooks)}
    # tqdm's notebook bar is an ipywidgets widget; without ipywidgets it would fall back to text redrawn with
    # carriage returns in the cell's output, so then the live figure alone shows the progress.
    return {"progress": has_widgets(), "hooks": [live_curves(title), *hooks]}


def has_widgets() -> bool:
    """Whether ipywidgets (tqdm's notebook progress bar) can be imported."""
    import importlib.util

    return importlib.util.find_spec("ipywidgets") is not None
