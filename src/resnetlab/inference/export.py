"""A trained model as ONNX or TorchScript, checked against PyTorch before the file is kept (``resnetlab export``: ``cli/export.py``).

The exported graph takes pixels in [0, 1] of the model's input size ([N, C, H, W], float32,
any batch size) and includes the training's standardisation; it returns ``logits`` and
``probabilities``. Class names, input size and normalisation go into the file's metadata
(ONNX ``metadata_props``; TorchScript ``extra_files``). After writing, the file is run beside
PyTorch on real test images at batch sizes 1 and 7: the probabilities must agree within 1e-4
and the top-1 classes exactly, or the export fails and no file is left.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..data.loader import to_model_input
from ..errors import ResnetlabError, first_line
from ..util.fileio import atomic_path
from ..util.log import Log
from ..weights import WeightsHeader
from .evaluation import load_test_split

FORMATS = ("onnx", "torchscript")
TOLERANCE = 1e-4
CHECK_BATCHES = (1, 7)
ONNX_EXTRA_HINT = "pip install 'resnetlab[onnx]'"


class Deployable(nn.Module):
    """The model with its input standardisation: pixels in [0, 1] -> (logits, probabilities)."""

    def __init__(self, model: nn.Module, header: WeightsHeader) -> None:
        super().__init__()
        self.model = model.eval()
        pre = header.preprocess
        mean = torch.tensor(pre.mean or [0.0] * pre.channels).view(1, pre.channels, 1, 1)
        std = torch.tensor(pre.std or [1.0] * pre.channels).view(1, pre.channels, 1, 1)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model((pixels - self.mean) / self.std)
        return logits, logits.softmax(1)


def check_pixels(header: WeightsHeader, data: str | None, log: Log) -> torch.Tensor:
    """Eight real test images as model-ready pixels in [0, 1]; random ones (said so) if no data is found."""
    channels, size = header.preprocess.channels, header.preprocess.size
    stored = header.preprocess.stored_size or size
    try:
        test, folder, split = load_test_split(data, header)
        images = test.gather(torch.arange(min(len(test), sum(CHECK_BATCHES))))
        log(f"checking on {len(images)} {split} images from {folder}")
    except ResnetlabError as exc:
        log(f"no test images to check on ({exc}); checking on random images instead")
        images = torch.randint(0, 256, (sum(CHECK_BATCHES), channels, stored, stored), dtype=torch.uint8,
                               generator=torch.Generator().manual_seed(0))
    return to_model_input(images, size)  # the loader's resize from the stored size, without standardising


def compare(name: str, run: Callable[[torch.Tensor], torch.Tensor], reference: nn.Module, pixels: torch.Tensor) -> float:
    """Run ``run`` and PyTorch at batch sizes 1 and 7; raise unless probabilities and top-1 agree. Returns the worst gap."""
    worst, start = 0.0, 0
    for batch in CHECK_BATCHES:
        x = pixels[start : start + batch]
        start += batch
        with torch.no_grad():
            expected = reference(x)[1]
        got = run(x)
        gap = (got - expected).abs().max().item()
        worst = max(worst, gap)
        if not gap <= TOLERANCE:
            raise ResnetlabError(f"the {name} file disagrees with PyTorch at batch size {batch} "
                                 f"(probabilities differ by {gap:.2g} > {TOLERANCE}); no file was written")
        if not torch.equal(got.argmax(1), expected.argmax(1)):
            raise ResnetlabError(f"the {name} file predicts other classes than PyTorch at batch size {batch}; no file was written")
    return worst


@contextlib.contextmanager
def _quiet(logger_name: str):
    """Raise a logger's level to ERROR for the duration (the exporter logs skipped torchvision ops)."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _metadata_strings(header: WeightsHeader) -> dict[str, str]:
    strings = header.to_strings()
    return {
        "model": header.model,
        "class_names": strings["class_names"],
        "input_size": strings["input_size"],
        "normalization": strings["normalization"],
        "input": "pixels: float32 [N, C, H, W] in [0, 1] at input_size; the graph standardises them",
        "outputs": "logits, probabilities: float32 [N, classes]",
    }


def _export_onnx(wrapper: Deployable, header: WeightsHeader, tmp: Path, opset: int | None, pixels: torch.Tensor) -> float:
    try:
        import onnx
        import onnxruntime

        importlib.import_module("onnxscript")  # the exporter needs it
    except ImportError:
        raise ResnetlabError(f"--format onnx needs the onnx extra; {ONNX_EXTRA_HINT}") from None
    example = torch.rand(2, header.preprocess.channels, header.preprocess.size, header.preprocess.size)
    batch = torch.export.Dim("batch", min=1, max=65536)
    try:
        # The exporter reports its progress on stdout and warns about internals; the user needs neither.
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet("torch.onnx"):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                wrapper, (example,), dynamo=True, input_names=["pixels"], output_names=["logits", "probabilities"],
                dynamic_shapes=({0: batch},), opset_version=opset, verbose=False,
            )
    except Exception as exc:  # the exporter raises many types; all mean the same to the user
        raise ResnetlabError(f"the ONNX exporter failed{f' at --opset {opset}' if opset else ''} ({first_line(exc)})") from None
    proto = program.model_proto
    for key, value in _metadata_strings(header).items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save_model(proto, str(tmp))
    session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(["probabilities"], {"pixels": x.numpy()})[0])

    return compare("ONNX", run, wrapper, pixels)


def _export_torchscript(wrapper: Deployable, header: WeightsHeader, tmp: Path, pixels: torch.Tensor) -> float:
    channels, size = header.preprocess.channels, header.preprocess.size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice
        traced = torch.jit.trace(wrapper, torch.rand(2, channels, size, size))
        torch.jit.save(traced, str(tmp), _extra_files={"resnetlab.json": json.dumps(_metadata_strings(header))})
        loaded = torch.jit.load(str(tmp))

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return loaded(x)[1]

    return compare("TorchScript", run, wrapper, pixels)


def export_model(model: nn.Module, header: WeightsHeader, fmt: str, target: Path, *, pixels: torch.Tensor,
                 opset: int | None = None) -> float:
    """Write ``model`` (with its standardisation) to ``target`` as ONNX or TorchScript, checked against PyTorch on
    ``pixels``; return the largest probability gap. A file that disagrees is never left behind."""
    wrapper = Deployable(model, header).eval()
    with atomic_path(target) as tmp:
        if fmt == "onnx":
            return _export_onnx(wrapper, header, tmp, opset, pixels)
        return _export_torchscript(wrapper, header, tmp, pixels)
