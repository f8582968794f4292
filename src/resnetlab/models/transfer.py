"""Fitting another network's weights into a model: torchvision's files, ImageNet weights, a run of our own.

Our ResNets use torchvision's key names, so its files fit as they are. What does not fit is
handled in the open:

- ``module.`` (DataParallel/DDP) and ``_orig_mod.`` (torch.compile) prefixes are stripped;
- the classifier head keeps the model's own initial values when the number of classes differs;
- batch norm's ``num_batches_tracked`` counters, which files saved by older PyTorch lack, may be missing;
- the first convolution is adapted when the input channels differ (:func:`adapt_input_conv`);
- any other missing key or shape mismatch is an error, unless ``non_strict``, which keeps the
  model's own initial values for those and lists them.

:class:`InitReport` tables what was loaded, adapted, re-initialised and ignored, for printing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import ResnetlabError
from ..util.compat import WRAPPER_KEY_PREFIXES
from .pretrained import imagenet_state_dict
from .registry import list_models, model_spec


def head_name(model: nn.Module) -> str:
    """The qualified name of the model's classifier: as its registry entry names it (``fc``; ``7`` in the book's
    net), else its last ``nn.Linear``."""
    named = _registered(model, "classifier")
    if named is not None:
        return named
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ResnetlabError(f"{type(model).__name__} has no linear classifier to replace or train")
    return names[-1]


def first_conv_name(model: nn.Module) -> str | None:
    """The qualified name of the convolution that sees the input channels: as the registry names it, else the first."""
    named = _registered(model, "first_conv")
    if named is not None:
        return named
    return next((name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)


def _registered(model: nn.Module, which: str) -> str | None:
    """The layer name the model's registry entry gives for ``which`` (None: not registered, or not named)."""
    name = getattr(model, "model_name", None)
    return getattr(model_spec(name), which) if name in list_models() else None


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove ``module.`` and ``_orig_mod.`` wherever they lead a key (they can be nested)."""
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in WRAPPER_KEY_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


@dataclass
class InitReport:
    """What happened to each key of the model: loaded, adapted, re-initialised, or ignored (source only)."""

    source: str
    loaded: list[str] = field(default_factory=list)
    adapted: list[tuple[str, str]] = field(default_factory=list)
    reinitialised: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)

    def table(self) -> str:
        """The printed table: one row per status with its count and keys (loaded keys abbreviated)."""
        rows = [
            ("loaded", len(self.loaded), ", ".join(self.loaded[:4]) + (", ..." if len(self.loaded) > 4 else "")),
            ("adapted", len(self.adapted), "; ".join(f"{k} ({why})" for k, why in self.adapted)),
            ("re-initialised", len(self.reinitialised), "; ".join(f"{k} ({why})" for k, why in self.reinitialised)),
            ("ignored", len(self.ignored), "; ".join(f"{k} ({why})" for k, why in self.ignored)),
        ]
        lines = [f"initial weights from {self.source}:", f"  {'status':<15s}{'keys':>5s}  which"]
        lines += [f"  {status:<15s}{count:5d}  {which or '-'}" for status, count, which in rows]
        return "\n".join(lines)


def fit_state_dict(model: nn.Module, source: dict[str, torch.Tensor], label: str, non_strict: bool = False,
                   flag: str = "--init") -> InitReport:
    """Copy ``source`` (another network's weights, called ``label``) into ``model`` as far as they fit (see the module).

    Raises :class:`ResnetlabError` naming ``flag`` when a key other than the head's and the first
    convolution's does not fit, unless ``non_strict``.
    """
    source = strip_prefixes(source)
    target = model.state_dict()
    head = head_name(model)
    conv = first_conv_name(model)
    report = InitReport(source=label)
    new_state, problems = {}, []
    for key, value in target.items():
        if key not in source:
            if key.endswith("num_batches_tracked"):
                # A counter only (used when batch norm has no momentum); files saved by older PyTorch lack it.
                continue
            if key.startswith(head + "."):
                report.reinitialised.append((key, "not in the source"))
            elif non_strict:
                report.reinitialised.append((key, "not in the source"))
            else:
                problems.append(f"{key} is missing")
            continue
        got = source[key]
        if got.shape == value.shape:
            new_state[key] = got.to(value.dtype)
            report.loaded.append(key)
        elif key.startswith(head + "."):
            report.reinitialised.append((key, f"{got.shape[0]} -> {value.shape[0]} classes"))
        elif conv is not None and key == f"{conv}.weight" and got.ndim == 4 and got.shape[0] == value.shape[0] \
                and got.shape[2:] == value.shape[2:]:
            new_state[key] = adapt_input_conv(got.float(), value.shape[1]).to(value.dtype)
            how = "summed" if value.shape[1] == 1 else "repeated and scaled"
            report.adapted.append((key, f"{got.shape[1]} -> {value.shape[1]} input channels, kernels {how}"))
        elif non_strict:
            report.reinitialised.append((key, f"shape {list(got.shape)} does not fit {list(value.shape)}"))
        else:
            problems.append(f"{key} has shape {list(got.shape)}, the model needs {list(value.shape)}")
    for key in source:
        if key not in target:
            report.ignored.append((key, "not in the model"))
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ResnetlabError(
            f"{flag} {label} does not fit {getattr(model, 'model_name', type(model).__name__)}: "
            f"{'; '.join(problems[:3])}{more}; use weights of the same architecture, or --init-non-strict to keep "
            "the model's own values where they do not fit"
        )
    model.load_state_dict(new_state, strict=False)
    return report


def load_published_weights(model: nn.Module, init: str, flag: str = "--init") -> InitReport:
    """Copy the published ImageNet weights ``init`` names (``imagenet``, ``imagenet-v2``) into the registry ``model``."""
    name = getattr(model, "model_name", type(model).__name__)
    return fit_state_dict(model, imagenet_state_dict(name, init), f"{init} ({name})", flag=flag)


# The family's first convolution (conv1) by stem: a 7x7 kernel is the ImageNet stem, a 3x3 one the small stem.
STEM_BY_KERNEL = {7: "imagenet", 3: "small"}


def stem_of(state: dict[str, torch.Tensor]) -> str | None:
    """The stem a family network's weights were trained with, read from ``conv1.weight``'s kernel; None if not told."""
    weight = strip_prefixes(state).get("conv1.weight")
    if weight is None or weight.dim() != 4:
        return None
    return STEM_BY_KERNEL.get(int(weight.shape[-1]))


def adapt_input_conv(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """A first-conv kernel [O, C_src, k, k] made for ``channels`` inputs (timm's ``adapt_input_conv``).

    For one channel the kernels are summed over their inputs: a gray image then gives exactly what
    the source network gives on that image repeated in every channel. For more, they are repeated
    and scaled by ``C_src / channels`` (the response keeps its scale).
    """
    source = weight.shape[1]
    if channels == 1:
        return weight.sum(1, keepdim=True)
    repeats = -(-channels // source)
    return weight.repeat(1, repeats, 1, 1)[:, :channels] * (source / channels)
