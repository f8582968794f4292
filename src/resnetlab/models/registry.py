"""A name -> builder registry, as in timm: ``create_model("resnet18", num_classes=10)``.

Each entry records what the rest of the package needs to know about a model without building
it: its natural input size (``summary`` and the CLI use it when the user gives none), whether it
takes a ``stem``, and the names of its first convolution and its classifier (``--init``
adapts the one to other input channels and re-initialises the other for other classes;
``--freeze-backbone`` trains only the classifier), as timm's per-model config names them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, TypeVar

from torch import nn

from ..errors import ResnetlabError

Builder = TypeVar("Builder", bound=Callable[..., nn.Module])


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows of a model: its builder, natural square image size, stem option, first conv and classifier."""

    name: str
    builder: Callable[..., nn.Module]
    image_size: int
    first_conv: str | None = None  # the convolution that sees the input channels ("conv1"; "0.0" in the book's net)
    classifier: str | None = None  # the final linear layer ("fc"; "7" in the book's net)
    stems: bool = False  # the builder takes stem="imagenet" | "small" (the family; not the seed's fixed net)


class UnknownModelError(ResnetlabError, ValueError):
    """Raised by :func:`create_model` for a name that is not registered; the message lists the valid ones."""


_REGISTRY: dict[str, ModelSpec] = {}

# A run of a module built in Python (``resnetlab.train(model=net)``) names it "custom:<class>" in its
# config and weight files: not a registry name, so nothing but the caller's module can rebuild it.
CUSTOM_PREFIX = "custom:"


def custom_model_name(module: nn.Module) -> str:
    """The name a run of ``module`` (not from the registry) records: ``custom:`` and its class (``custom:Sequential``)."""
    return CUSTOM_PREFIX + type(module).__qualname__


def is_custom(name: str | None) -> bool:
    """Whether ``name`` is a custom module's recorded name rather than a registry name."""
    return name is not None and name.startswith(CUSTOM_PREFIX)


def register_model(name: str, *, image_size: int, first_conv: str | None = None, classifier: str | None = None,
                   stems: bool = False) -> Callable[[Builder], Builder]:
    """Decorator that registers a builder under ``name`` (see :class:`ModelSpec` for the rest).

    ``first_conv`` and ``classifier`` name the model's layers (qualified module names); left
    out, the model's first ``nn.Conv2d`` and last ``nn.Linear`` are taken. Registering a name
    again replaces the entry, with a warning: a notebook cell that defines a model may be run twice.
    """

    def decorate(builder: Builder) -> Builder:
        if name in _REGISTRY:
            warnings.warn(f"model {name!r} was registered already; the new builder replaces it", stacklevel=2)
        _REGISTRY[name] = ModelSpec(name=name, builder=builder, image_size=image_size, first_conv=first_conv,
                                    classifier=classifier, stems=stems)
        return builder

    return decorate


def list_models() -> list[str]:
    """Return the registered model names, sorted."""
    return sorted(_REGISTRY)


def model_spec(name: str) -> ModelSpec:
    """Return the registry entry for ``name``; raise :class:`UnknownModelError` naming the valid ones."""
    if is_custom(name):
        raise UnknownModelError(
            f"model {name!r} is a module built in Python, not a registered name: only that module can be trained, "
            "resumed or loaded again, from Python (resnetlab.train(model=net), resnetlab.resume(run, model=net), "
            "resnetlab.load(path, model=net))"
        )
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; valid names: {', '.join(list_models())}"
        ) from None


def create_model(name: str, pretrained: bool | str = False, **kwargs: object) -> nn.Module:
    """Build the registered model ``name`` with keyword options (``in_channels``, ``num_classes``, ...).

    ``pretrained``: True (or ``"imagenet"``) starts from torchvision's IMAGENET1K_V1 weights,
    ``"imagenet-v2"`` from its V2 ones, fetched once into PyTorch's cache (``models/pretrained.py``);
    for other classes the classifier keeps its own initial values, for gray input the first
    convolution's kernels are summed over their colours. The model remembers how it was built in
    ``model.model_name`` and ``model.model_args`` so a checkpoint can rebuild it.
    """
    model = model_spec(name).builder(**kwargs)
    model.model_name = name
    model.model_args = dict(kwargs)
    if pretrained:
        from .pretrained import PRETRAINED_INITS
        from .transfer import load_published_weights

        init = "imagenet" if pretrained is True else pretrained
        if init not in PRETRAINED_INITS:
            raise ResnetlabError(f"pretrained={pretrained!r}: give True, 'imagenet' or 'imagenet-v2'")
        load_published_weights(model, str(init), flag="pretrained weights")
    return model
