"""TensorBoard event files in the run folder (beside ``metrics.csv``, so ``tensorboard --logdir runs`` shows each run
under its folder's name), written by a hook while the run trains.

What goes in, by tag (``x`` is the global step; an epoch's values sit at the step it ended on):

- per step: ``train/loss`` (the step's batch) and ``train/lr`` (the rate the step used), at every
  check point (every step on the CPU, every 50th on a GPU: reading a value waits for the device);
- per epoch: ``train/epoch_loss``, ``train/acc``, ``train/images_per_sec``, ``train/epoch``,
  ``val/acc``, ``val/loss`` (and ``test/acc_each_epoch`` with ``--test-each-epoch``);
- at the end: ``test/acc`` and ``test/loss`` of the best weights, the confusion matrix and the most
  confident mistakes of those weights as images (the test split, else validation), and the run's
  resolved configuration as text and as hyper-parameters with the final metrics (the HParams tab);
- ``budget``: each of the time budget's decisions, as text at the step it was made;
- the model's graph (a trace of a copy, in eval mode), at the start of a new run.

A resumed run opens its writer with TensorBoard's purge step at the step it resumes from: whatever
the killed process wrote past its last save is dropped by TensorBoard's reader, and written again
as the run repeats those steps, so each step appears once. Under torchrun only rank 0 writes.
Everything the hook computes is on copies or after training, so a run trains the same with and
without it. Without the ``tensorboard`` package (``pip install "resnetlab[tensorboard]"``) there is
nothing to write with, and the run's header says so.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import json
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..scoring import mistake_titles, score_report, split_scores
from ..util.pictures import confusion_figure, image_grid_figure, png_bytes
from .hooks import Hook
from .state import unwrap

if TYPE_CHECKING:
    from .loop import Loop

INSTALL_HINT = 'pip install "resnetlab[tensorboard]"'
# The hyper-parameters' metrics (the HParams tab's columns), written as scalars at the end.
FINAL_METRICS = ("hparams/test_acc", "hparams/best_val_acc")
MISTAKES_SHOWN = 32


def tensorboard_installed() -> bool:
    """Whether the ``tensorboard`` package (which PyTorch's writer needs) can be imported."""
    return importlib.util.find_spec("tensorboard") is not None


def open_writer(folder: Path, purge_step: int | None = None):
    """A ``SummaryWriter`` on ``folder``; ``purge_step``: a resumed run's first step (see the module's description).

    TensorBoard reads a folder's event files in the order of their names, which begin with the
    second they were opened in: a process resumed within the second its predecessor started
    waits for the next second, so that its file (and its purge) is read after the other's.
    """
    from torch.utils.tensorboard import SummaryWriter

    opened = [int(p.name.split(".")[3]) for p in folder.glob("events.out.tfevents.*")
              if len(p.name.split(".")) > 3 and p.name.split(".")[3].isdigit()]
    while opened and int(time.time()) <= max(opened):
        time.sleep(0.05)
    return SummaryWriter(log_dir=str(folder), purge_step=purge_step)


def add_picture(writer, tag: str, fig, step: int) -> None:
    """A matplotlib figure as an image (PNG, decoded to pixels: the writer's public way in)."""
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png_bytes(fig))).convert("RGB"))
    writer.add_image(tag, pixels, step, dataformats="HWC")


def hparams_of(config: dict[str, Any]) -> dict[str, Any]:
    """The run's fields as HParams values: numbers, strings and booleans as they are, the rest as JSON text."""
    kept = {}
    for name, value in config.items():
        if name in ("out", "budget_plan"):  # where the files go and the budget's log are not hyper-parameters
            continue
        # Booleans as text: PyTorch's writer would make them the numbers 0 and 1.
        kept[name] = value if isinstance(value, (int, float, str)) and not isinstance(value, bool) else json.dumps(value)
    return kept


class TensorBoardLog(Hook):
    """Writes the run's curves, pictures and configuration as TensorBoard event files (see the module's description)."""

    def __init__(self) -> None:
        self.writer = None
        self.lr = 0.0  # the rate the coming step uses
        self.notes_written = 0  # of loop.notes

    def on_run_start(self, loop: "Loop") -> None:
        run, p = loop.run, loop.run.progress
        folder = run.folder.path
        self.writer = open_writer(folder, purge_step=p.global_step if run.resumed else None)
        run.log(f"TensorBoard: event files in {folder} (see them with: tensorboard --logdir {folder.parent})")
        if p.global_step == 0:  # a new run (or one restarted before its first save: purged to step 0 above)
            self._start(loop)
        elif p.step == 0 and p.history:
            # Resumed at an epoch's end: its values were purged with everything at or after this step; write them again.
            self._epoch(loop, p.history[-1])
        self.writer.flush()

    def before_step(self, loop: "Loop") -> None:
        self.lr = loop.run.training.optimizer.param_groups[-1]["lr"]  # the head's (the full rate) when the backbone has its own

    def at_check(self, loop: "Loop") -> None:
        step = loop.run.progress.global_step - 1  # the step just taken, counted from 0
        if bool(loop.last_applied):
            self.writer.add_scalar("train/loss", float(loop.last_loss), step)
        self.writer.add_scalar("train/lr", self.lr, step)
        self._notes(loop)
        # On disk before any save that includes this step (a kill then loses nothing the resumed run does not repeat).
        self.writer.flush()

    def on_epoch_end(self, loop: "Loop", row: dict[str, Any]) -> None:
        self._epoch(loop, row)
        self._notes(loop)
        self.writer.flush()  # an epoch is where someone watching looks for news

    def on_run_end(self, loop: "Loop", result: Any) -> None:
        run, step, w = loop.run, loop.run.progress.global_step, self.writer
        self._notes(loop)
        if result.test_acc is not None:
            w.add_scalar("test/acc", result.test_acc, step)
            w.add_scalar("test/loss", result.test_loss, step)
        final = {"hparams/test_acc": result.test_acc, "hparams/best_val_acc": result.best_val_acc}
        for tag, value in final.items():
            if value is not None:
                w.add_scalar(tag, value, step)
        self._pictures(loop, step)
        from torch.utils.tensorboard.summary import hparams

        _, _, session_end = hparams(hparams_of(run.config.to_dict()), {tag: 0.0 for tag in FINAL_METRICS})
        w.file_writer.add_summary(session_end, step)
        w.close()

    def _start(self, loop: "Loop") -> None:
        """A new run: its configuration (text, hyper-parameters) and its model's graph, at step 0."""
        from torch.utils.tensorboard.summary import hparams

        run, w = loop.run, self.writer
        config = run.config.to_dict()
        w.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```", 0)
        experiment, session_start, _ = hparams(hparams_of(config), {tag: 0.0 for tag in FINAL_METRICS})
        w.file_writer.add_summary(experiment, 0)
        w.file_writer.add_summary(session_start, 0)
        self._graph(loop)

    def _graph(self, loop: "Loop") -> None:
        """The model's graph, traced from a copy in eval mode (the trace runs the model: the copy keeps the run's
        batch-norm statistics untouched); a model that cannot be traced is said in one line and skipped."""
        run = loop.run
        try:
            net = copy.deepcopy(unwrap(run.training.model)).float().eval()
            x = torch.zeros(1, run.preprocess.channels, run.preprocess.size, run.preprocess.size, device=run.device)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the tracer's warnings are about other uses of a trace
                self.writer.add_graph(net, x)
        except Exception as exc:  # noqa: BLE001 - any failure to trace only loses the picture of the graph
            run.log(f"TensorBoard: no model graph ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")

    def _epoch(self, loop: "Loop", row: dict[str, Any]) -> None:
        """An epoch's row of metrics.csv, at the step the run stands at (the epoch's end)."""
        step = loop.run.progress.global_step
        for tag, key in (("train/epoch_loss", "train_loss"), ("train/acc", "train_acc"), ("val/acc", "val_acc"),
                         ("val/loss", "val_loss"), ("test/acc_each_epoch", "test_acc"),
                         ("train/images_per_sec", "examples_per_sec"), ("train/epoch", "epoch")):
            if row.get(key) is not None:
                self.writer.add_scalar(tag, row[key], step)

    def _notes(self, loop: "Loop") -> None:
        """The time budget's decisions not yet written, each at its step."""
        for step, text in loop.notes[self.notes_written:]:
            self.writer.add_text("budget", text, step)
        self.notes_written = len(loop.notes)

    def _pictures(self, loop: "Loop", step: int) -> None:
        """The confusion matrix and the most confident mistakes of the best weights (test split, else validation)."""
        run = loop.run
        loader = run.loaders.test or run.loaders.val
        if loader is None or run.best_weights is None:
            return
        best = copy.deepcopy(unwrap(run.training.eval_model))
        best.load_state_dict(run.best_weights)
        # Every image, on this rank (rank 0: the others wait at the run's last barrier), as the run scored them.
        logits = split_scores(best, loader.whole(), precision=run.precision, tta=run.config.tta)
        report = score_report(logits, loader.labels.cpu(), run.class_names, mistakes=MISTAKES_SHOWN)
        add_report_pictures(self.writer, "test" if run.loaders.test is not None else "val", report, loader.data,
                            run.class_names, step)


def add_report_pictures(writer, prefix: str, report: dict[str, Any], images, class_names: list[str], step: int) -> None:
    """An evaluation report's confusion matrix and its most confident mistakes, as images under ``prefix/``."""
    title = f"{prefix}: acc {report['accuracy']:.4f}"
    add_picture(writer, f"{prefix}/confusion", confusion_figure(torch.tensor(report["confusion"]), class_names, title), step)
    worst = torch.tensor([m["index"] for m in report["mistakes"]], dtype=torch.long)
    if len(worst):
        fig = image_grid_figure(images.gather(worst), mistake_titles(report), title_colors=["firebrick"] * len(worst))
        add_picture(writer, f"{prefix}/mistakes", fig, step)
