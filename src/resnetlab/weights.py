"""The weight file format: safetensors with a typed header that knows the model and its preprocessing.

A ``.safetensors`` file written by training holds the model's state dict, and in its header
(strings only, JSON where structured) everything needed to use it without the run: the model
name and builder arguments, the class names, how an image becomes the model's input
(:class:`Preprocess`, as torchvision's ``weights.transforms()``), the precision the run
computed in, the preset, the epoch and its metrics, the run's whole config, a fingerprint of
each data split it was trained and measured on, and the versions that wrote it. :class:`WeightsHeader` is the one owner of that header: training writes it,
``resnetlab.load``, ``eval`` and ``export`` read it. Files are written atomically; reading one
never unpickles anything, and nothing here imports the training engine.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .data.loader import to_model_input
from .errors import ResnetlabError, first_line
from .models import create_model
from .models.probe import blank_batch, evaluating
from .models.registry import CUSTOM_PREFIX, is_custom
from .util.fileio import atomic_path
from .version import __version__

FORMAT = "resnetlab.weights/1"


def versions() -> dict[str, str]:
    """Versions of the software that writes a file."""
    return {"resnetlab": __version__, "torch": str(torch.__version__), "python": platform.python_version()}


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the model's input, exactly as in training.

    ``channels`` (1 gray, 3 RGB); ``stored_size``: the side images were brought to with Pillow
    (bilinear) when the data were read (class folders; None: they went straight to the model);
    ``size``: the model's input side (a bilinear resize of the uint8 batch); ``mean``/``std``:
    the per-channel standardisation of pixels in [0, 1] (None: only scaled). ``pixel_mean`` and
    ``border_mean``: the training images' mean intensity in [0, 1], overall and on their border
    (see :mod:`resnetlab.inference.photo`), against which prediction tells a photo the wrong way round
    (None: a file written before they were kept; nothing is checked).
    """

    channels: int
    size: int
    stored_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    pixel_mean: float | None = None
    border_mean: float | None = None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images [N, C, H, W] (at ``stored_size``) -> the model's float input [N, C, size, size]."""
        shape = (1, self.channels, 1, 1)
        mean = torch.tensor(self.mean, device=images.device).view(shape) if self.mean is not None else None
        std = torch.tensor(self.std, device=images.device).view(shape) if self.std is not None else None
        return to_model_input(images, self.size, mean, std)


@dataclass
class WeightsHeader:
    """What a weight file says about its weights (see the module)."""

    model: str
    model_args: dict[str, Any]
    class_names: list[str]
    preprocess: Preprocess
    precision: str = "fp32"  # what the run computed in
    preset: str = ""
    epoch: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    data: dict[str, str | None] = field(default_factory=dict)  # each split's fingerprint (train, val, test) as trained
    versions: dict[str, str] = field(default_factory=versions)

    @classmethod
    def of_run(cls, *, model: nn.Module, class_names: list[str], preprocess: Preprocess, config: dict[str, Any],
               row: dict[str, Any], epoch: int, data: dict[str, str | None]) -> "WeightsHeader":
        """The header a training run writes for ``model`` at ``epoch`` (``row``: that epoch's metrics; ``config``: the run's)."""
        # A custom module (resnetlab.train(model=net)) is recorded by its class; only its caller can rebuild it.
        name, args = (config["model"], {}) if is_custom(config["model"]) else (model.model_name, model.model_args)
        return cls(model=name, model_args=args, class_names=class_names, preprocess=preprocess,
                   precision=config["precision"], preset=config["preset"], epoch=epoch,
                   metrics={k: v for k, v in row.items() if v is not None}, config=config, data=data)

    @property
    def num_classes(self) -> int:
        """How many classes the model tells apart."""
        return len(self.class_names)

    @property
    def trained_on(self) -> str | None:
        """The data folder the run was trained on (None: the default Fashion-MNIST)."""
        return self.config.get("data")

    def to_strings(self) -> dict[str, str]:
        """The header as safetensors metadata (strings)."""
        p = self.preprocess
        values: dict[str, Any] = {
            "model": self.model, "model_args": self.model_args, "in_channels": p.channels,
            "num_classes": self.num_classes, "class_names": self.class_names, "input_size": [p.channels, p.size, p.size],
            "stored_size": p.stored_size,
            "normalization": {"mean": list(p.mean), "std": list(p.std)} if p.mean is not None else None,
            "intensity": {"mean": p.pixel_mean, "border": p.border_mean} if p.border_mean is not None else None,
            "precision": self.precision, "preset": self.preset, "epoch": self.epoch, "metrics": self.metrics,
            "config": self.config, "data": self.data, "versions": self.versions,
        }
        return {"format": FORMAT, **{k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}}

    @classmethod
    def from_strings(cls, raw: dict[str, str], path: Path) -> "WeightsHeader":
        """Decode a header read from ``path``; a foreign or damaged one raises :class:`ResnetlabError`."""
        if raw.get("format") != FORMAT:
            raise ResnetlabError(f"{path}: not a resnetlab weight file (no '{FORMAT}' header)")

        def value(key: str, default: Any = KeyError) -> Any:
            if key not in raw:
                if default is KeyError:
                    raise ResnetlabError(f"{path}: the header lacks '{key}'; it was not written by resnetlab's training")
                return default
            text = raw[key]
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                return text  # a plain string (older files wrote model and preset unquoted)

        channels, size, _ = value("input_size")
        norm = value("normalization", None)
        stored = value("stored_size", None)
        intensity = value("intensity", None)  # older files lack it
        preprocess = Preprocess(
            channels=int(channels), size=int(size), stored_size=int(stored) if stored else None,
            mean=tuple(norm["mean"]) if norm else None, std=tuple(norm["std"]) if norm else None,
            pixel_mean=float(intensity["mean"]) if intensity else None,
            border_mean=float(intensity["border"]) if intensity else None,
        )
        config = value("config", {}) or {}
        epoch = value("epoch", None)
        return cls(
            model=str(value("model")), model_args=value("model_args"), class_names=list(value("class_names")),
            preprocess=preprocess, precision=str(value("precision", config.get("precision", "fp32"))),
            preset=str(value("preset", "")), epoch=int(epoch) if epoch not in (None, "") else None,
            metrics=value("metrics", {}) or {}, config=config, data=value("data", {}) or {},
            versions=value("versions", {}) or {},
        )


def save_weights(path: str | os.PathLike[str], state: dict[str, torch.Tensor], header: WeightsHeader) -> None:
    """Write a state dict with its header to ``path`` as safetensors, atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=header.to_strings())


def read_header(path: str | os.PathLike[str]) -> WeightsHeader:
    """Read only the header of a weight file."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except FileNotFoundError:
        raise ResnetlabError(f"{path}: no such file") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise ResnetlabError(f"{path}: not a safetensors weight file ({exc})") from None
    return WeightsHeader.from_strings(raw, path)


def load_weights(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], WeightsHeader]:
    """The state dict and header of a resnetlab weight file."""
    header = read_header(path)
    try:
        return load_file(str(path)), header
    except (SafetensorError, OSError, ValueError) as exc:
        raise ResnetlabError(f"{path}: damaged safetensors file ({exc})") from None


def load_model(path: str | os.PathLike[str], model: nn.Module | None = None) -> tuple[nn.Module, WeightsHeader]:
    """Rebuild the model a weight file describes and load its weights (float32, CPU, eval mode).

    ``model``: a module the caller built, loaded in place instead and put in eval mode, on its
    own device and in its own dtype (the one way to read back a custom module's weights, whose
    header names only its class; a registry model works too).
    """
    state, header = load_weights(path)
    if model is None and is_custom(header.model):
        kind = header.model.removeprefix(CUSTOM_PREFIX)
        raise ResnetlabError(
            f"{path} holds the weights of a custom {kind} (trained with resnetlab.train(model=net)), which only Python "
            f"can rebuild: build the same {kind} and load it with resnetlab.load({str(path)!r}, model=net)"
        )
    given = model is not None
    try:
        if model is None:
            model = create_model(header.model, **header.model_args)
        model.load_state_dict(state)
    except (RuntimeError, TypeError, ValueError, KeyError) as exc:
        which = "the model given" if given else "the model its header names"
        raise ResnetlabError(f"{path}: the weights do not fit {which} ({first_line(exc)})") from None
    if given:
        _finish_lazy_layers(model, header.preprocess)
    return (model if given else model.float()).eval(), header


def _finish_lazy_layers(model: nn.Module, preprocess: Preprocess) -> None:
    """Lazy layers given their weights become ordinary ones only on their first forward pass: run it, on a blank input.

    Until then they are not what tracing (TorchScript, ONNX) or a copy expects.
    """
    from torch.nn.modules.lazy import LazyModuleMixin

    if any(isinstance(m, LazyModuleMixin) for m in model.modules()):
        blank = blank_batch(model, (1, preprocess.channels, preprocess.size, preprocess.size))
        with evaluating(model), torch.no_grad():
            model(blank)
