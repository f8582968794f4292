"""The model a run starts from: built by name, initialised (its own init, the book's Xavier, ImageNet
weights by name with ``--init imagenet``, or trained weights with ``--init FILE``), and optionally
with only its head trainable (``--freeze-backbone``).

A file is one of our ``.safetensors`` files (or any safetensors state dict), or a PyTorch
``.pth``/``.pt`` file such as torchvision's ResNet weights, read with
``torch.load(weights_only=True)``, so no code in it runs. ImageNet weights come from PyTorch's
cache or its server (``models/pretrained.py``). Either is fitted into the model by
``models/transfer.py`` (the head re-initialised for other classes, the first convolution adapted
to other input channels), and a table of what was loaded is returned for printing.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
from torch import nn

from ..config import RunConfig
from ..config.fields import INIT_SCHEMES, no_such_init_file
from ..errors import ResnetlabError, first_line
from ..models import create_model
from ..models.pretrained import is_pretrained_init
from ..models.probe import blank_batch, evaluating
from ..models.transfer import InitReport, fit_state_dict, head_name, load_published_weights, stem_of
from ..util.compat import BatchNormBase
from ..util.log import Log
from .state import load_tensors_only



def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors of a weight file: safetensors, or a ``.pth``/``.pt`` read with ``weights_only=True``.

    A checkpoint dict holding the weights under ``state_dict`` or ``model`` (as many training
    scripts and our ``train_state.pt`` write) is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise no_such_init_file(path)
    with open(path, "rb") as f:
        head = f.read(8)
    if path.suffix == ".safetensors" or (len(head) == 8 and not head.startswith(b"PK") and head[:1] != b"\x80"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ResnetlabError(f"--init {path}: not a readable safetensors file ({exc})") from None
    obj = load_tensors_only(
        path, name=f"--init {path}", damaged="not a readable PyTorch weight file",
        refused_hint="save its state_dict alone (torch.save(model.state_dict(), FILE)) from a source you trust",
    )
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ResnetlabError(f"--init {path}: expected a state dict (names to tensors), found {type(obj).__name__}")
    other = next((k for k, v in obj.items() if not isinstance(v, torch.Tensor)), None)
    if other is not None:
        raise ResnetlabError(f"--init {path}: expected a state dict (names to tensors), but {str(other)!r} is not a tensor "
                             f"({type(obj[other]).__name__}); save the model's state_dict alone")
    return obj


def stem_of_init_file(init: str | None) -> str | None:
    """The stem the ``--init`` weight file was trained with (its conv1 kernel), or None: not a file, or not telling."""
    if init is None or init in INIT_SCHEMES or is_pretrained_init(init):
        return None
    return stem_of(read_state_dict(init))


def load_initial_weights(model: nn.Module, path: str | os.PathLike[str], non_strict: bool = False) -> InitReport:
    """Copy the weights of the file ``path`` into ``model`` as far as they fit (``models/transfer.py``)."""
    return fit_state_dict(model, read_state_dict(path), str(path), non_strict=non_strict)


def freeze_backbone(model: nn.Module) -> list[str]:
    """Let only the classifier head learn: other parameters stop requiring gradients. Returns the trainable names."""
    head = head_name(model)
    trainable = []
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(head + "."))
        if p.requires_grad:
            trainable.append(name)
    return trainable


def set_train_mode(model: nn.Module, frozen_backbone: bool) -> None:
    """``model.train()``; with a frozen backbone its batch-norm layers stay in eval mode (statistics frozen too)."""
    model.train()
    if frozen_backbone:
        head = head_name(model)
        for name, m in model.named_modules():
            if isinstance(m, BatchNormBase) and not name.startswith(head):
                m.eval()


def xavier_init(model: nn.Module) -> None:
    """The book's ``init_weights``: Xavier-uniform weights for every linear and conv layer."""
    for m in model.modules():
        if type(m) in (nn.Linear, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)


def build_model(config: RunConfig, in_channels: int, num_classes: int, log: Log | None = None,
                module: nn.Module | None = None) -> nn.Module:
    """Create the configured model for the data's channels and classes, with the configured init.

    ``module``: a network the caller built (``resnetlab.train(model=net)``); a copy of it is
    trained instead of a registry model (:func:`copy_custom_module`). With ``--init FILE`` the
    file's weights are copied in as far as they fit and the table of what was loaded is passed
    to ``log``; without ``log`` (a resumed run, whose state holds the weights) the file is not
    read at all.
    """
    if module is not None:
        model = copy_custom_module(module, in_channels, num_classes, config.image_size)
    else:
        args = {"in_channels": in_channels, "num_classes": num_classes, **config.model_args}
        try:
            model = create_model(config.model, **args)
        except (TypeError, ValueError) as exc:
            raise ResnetlabError(f"--model-args {json.dumps(config.model_args)} do not fit {config.model} ({exc})") from None
    if config.init == "xavier":
        xavier_init(model)
    elif is_pretrained_init(config.init) and log is not None:
        log(load_published_weights(model, config.init).table())
    elif config.init not in INIT_SCHEMES and log is not None:
        log(load_initial_weights(model, config.init, non_strict=config.init_non_strict).table())
    if config.freeze_backbone:
        freeze_backbone(model)
    return model


def copy_custom_module(module: nn.Module, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """A float32 CPU copy of the caller's ``module``, checked first on a batch of this run's input shape.

    A copy, so that what the run does to its model (the device, the precision, channels-last,
    the small-map convolutions, DDP) never reaches the caller's object; the run gives the
    caller's module its best weights when it ends. The check (two blank images on the module's
    own device and in its dtype, no gradients) turns a module built for other images or classes
    into one line before any training, and gives lazy layers (``nn.LazyConv2d``) their shapes,
    in the caller's module as the book's dummy forward pass does: a module with uninitialised
    lazy layers can be neither copied nor optimised. It runs in eval mode on the caller's module
    (every submodule's mode put back as it was), then in training mode on the copy (whose state
    is put back), since some networks answer differently when training.
    """
    name = type(module).__name__
    shape = [2, in_channels, image_size, image_size]
    blank = blank_batch(module, shape)
    with evaluating(module):
        _check_output(module, blank, num_classes, name)
    if not any(p.requires_grad for p in module.parameters()):
        raise ResnetlabError(f"model={name} has no trainable parameters; give it layers whose parameters require "
                             "gradients (requires_grad=True)")
    model = copy.deepcopy(module).cpu().float()
    saved = copy.deepcopy(model.state_dict())  # a training-mode pass moves batch norm's running statistics
    model.train()
    _check_output(model, blank.cpu().float(), num_classes, name)
    model.load_state_dict(saved)
    return model


def _check_output(model: nn.Module, blank: torch.Tensor, num_classes: int, name: str) -> None:
    """Run ``model`` on ``blank`` without gradients: it must give one score per class, else one line says what is wrong."""
    shape = list(blank.shape)
    try:
        with torch.no_grad():
            out = model(blank)
    except Exception as exc:  # noqa: BLE001 - any failure of a caller's module on our input is a misfit
        raise ResnetlabError(
            f"model={name} fails on this run's input, a batch of shape {shape} ({shape[1]}-channel images at "
            f"--image-size {shape[-1]}): {first_line(exc)[:200]}; build it for that input, or set image_size (and the "
            "data's channels) to what it takes"
        ) from None
    if not isinstance(out, torch.Tensor) or list(out.shape) != [shape[0], num_classes]:
        got = list(out.shape) if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        mode = "in training mode " if model.training else ""
        raise ResnetlabError(f"model={name} gives {got} {mode}for a batch of shape {shape}, but the data have "
                             f"{num_classes} classes: its output must be one tensor [batch, {num_classes}] (a score per class)")
