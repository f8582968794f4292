"""What the engine needs around saved tensors: the plain model inside its wrappers, and weights-only loading of PyTorch files.

The weight file format itself (safetensors with a typed header) is ``resnetlab.weights``.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ResnetlabError, first_line


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
