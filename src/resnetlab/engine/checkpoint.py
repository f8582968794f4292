"""Self-describing weight files: safetensors with everything needed to use them in the header.

The header's metadata (strings only, JSON where structured) names the model and its builder
arguments, the input channels and size, the class names, the normalisation, the preset and the
library versions, so ``eval``, ``predict`` and ``export`` never ask the user to repeat a setting.
Files are written atomically; reading one never unpickles anything.
"""

from __future__ import annotations

import json
import os
import pickle
import platform
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import ResnetlabError, first_line
from ..fileio import atomic_path

FORMAT = "resnetlab.weights/1"
_JSON_KEYS = ("model_args", "class_names", "input_size", "stored_size", "normalization", "metrics", "versions", "config")


def versions() -> dict[str, str]:
    """Versions of the software that wrote a file."""
    from .. import __version__

    return {"resnetlab": __version__, "torch": str(torch.__version__), "python": platform.python_version()}


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside ``torch.compile`` and DistributedDataParallel wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def load_tensors_only(path: Path, *, name: str, refused_hint: str, damaged: str, damaged_hint: str = "") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU: only tensors and plain containers, no code runs.

    A file holding other Python objects is refused, and a damaged one reported, each in one
    line starting with ``name`` (how the user gave the file); ``refused_hint`` and
    ``damaged_hint`` say what to do instead, ``damaged`` says what is wrong with a broken file.
    """
    hint = f"; {damaged_hint}" if damaged_hint else ""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ResnetlabError(f"{name}: no such file") from None
    except pickle.UnpicklingError as exc:
        # The weights-only unpickler names the global it refused; anything else is a broken pickle.
        if "weights only" in str(exc).lower() or "unsupported global" in str(exc).lower():
            raise ResnetlabError(
                f"{name}: refused to load it: it holds Python objects, not just tensors and plain values, and "
                f"loading it could run code; {refused_hint}"
            ) from None
        raise ResnetlabError(f"{name}: {damaged} ({first_line(exc)}){hint}") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ResnetlabError(f"{name}: {damaged} ({first_line(exc)}){hint}") from None


def save_weights(path: str | os.PathLike[str], model: nn.Module, metadata: dict[str, Any]) -> None:
    """Write ``model``'s state dict and ``metadata`` to ``path`` as safetensors, atomically."""
    save_state_dict(path, unwrap(model).state_dict(), metadata)


def save_state_dict(path: str | os.PathLike[str], state: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Write a state dict and ``metadata`` to ``path`` as safetensors, atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    header = {"format": FORMAT}
    for key, value in metadata.items():
        header[key] = json.dumps(value) if key in _JSON_KEYS else str(value)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and decode only the header metadata of a weight file."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except FileNotFoundError:
        raise ResnetlabError(f"{path}: no such file") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise ResnetlabError(f"{path}: not a safetensors weight file ({exc})") from None
    if raw.get("format") != FORMAT:
        raise ResnetlabError(f"{path}: not a resnetlab weight file (no '{FORMAT}' header)")
    return {k: json.loads(v) if k in _JSON_KEYS else v for k, v in raw.items()}


def load_weights(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Return ``(state_dict, metadata)`` of a resnetlab weight file."""
    metadata = read_metadata(path)
    try:
        return load_file(str(path)), metadata
    except (SafetensorError, OSError, ValueError) as exc:
        raise ResnetlabError(f"{path}: damaged safetensors file ({exc})") from None


def build_from_weights(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a weight file describes and load its weights; return ``(model, metadata)``."""
    from ..models import create_model

    state, metadata = load_weights(path)
    try:
        model = create_model(metadata["model"], **metadata["model_args"])
        model.load_state_dict(state)
    except KeyError as exc:
        raise ResnetlabError(f"{path}: the header lacks {exc}; it was not written by resnetlab's training") from None
    except (RuntimeError, TypeError, ValueError) as exc:
        first = first_line(exc)
        raise ResnetlabError(f"{path}: the weights do not fit the model its header names ({first})") from None
    return model, metadata
