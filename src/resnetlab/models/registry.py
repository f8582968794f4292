"""A name -> builder registry, as in timm: ``create_model("resnet18", num_classes=10)``.

Each entry also records the model's natural input size, which ``summary`` and the CLI use when
the user gives none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, TypeVar

from torch import nn

from ..errors import ResnetlabError

Builder = TypeVar("Builder", bound=Callable[..., nn.Module])


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows of a model: its builder, its natural square image size, and whether it takes a ``stem``."""

    name: str
    builder: Callable[..., nn.Module]
    image_size: int
    stems: bool = False  # the builder takes stem="imagenet" | "small" (the family; not the seed's fixed net)


class UnknownModelError(ResnetlabError, ValueError):
    """Raised by :func:`create_model` for a name that is not registered; the message lists the valid ones."""


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, *, image_size: int, stems: bool = False) -> Callable[[Builder], Builder]:
    """Decorator that registers a builder under ``name`` with its natural ``image_size`` (pixels); ``stems``: it takes ``stem``."""

    def decorate(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = ModelSpec(name=name, builder=builder, image_size=image_size, stems=stems)
        return builder

    return decorate


def list_models() -> list[str]:
    """Return the registered model names, sorted."""
    return sorted(_REGISTRY)


def model_spec(name: str) -> ModelSpec:
    """Return the registry entry for ``name``; raise :class:`UnknownModelError` naming the valid ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; valid names: {', '.join(list_models())}"
        ) from None


def create_model(name: str, **kwargs: object) -> nn.Module:
    """Build the registered model ``name`` with keyword options (``in_channels``, ``num_classes``, ...).

    The model remembers how it was built in ``model.model_name`` and ``model.model_args`` so a
    checkpoint can rebuild it.
    """
    model = model_spec(name).builder(**kwargs)
    model.model_name = name
    model.model_args = dict(kwargs)
    return model
