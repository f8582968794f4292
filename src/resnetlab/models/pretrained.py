"""ImageNet weights by name: torchvision's published files for the ResNet family, fetched the way PyTorch fetches them.

``--init imagenet`` (``resnetlab.train(init="imagenet")``, ``create_model(name, pretrained=True)``)
reads torchvision's ``IMAGENET1K_V1`` weights of the model; ``--init imagenet-v2`` its
``IMAGENET1K_V2`` ones where torchvision publishes them. Our ResNets have torchvision's layout,
so its files load as they are.

**Why V1 by default** (torchvision's own default is V2 where it exists): V1 exists for every
member of the family, so one name means one recipe (the paper's simple one) for all; and the V2
recipe's gains on ImageNet come from label smoothing, mixup, cutmix, long training and EMA, which
Kornblith et al. (2021, "Why do better loss functions lead to less transferable features?") found
to make the penultimate features transfer worse to other data sets when only the head is trained.
V2 stays one word away for a full fine-tuning, where the difference is small.

The file is downloaded with :func:`torch.hub.load_state_dict_from_url` into PyTorch's cache
(``$TORCH_HOME/hub/checkpoints``, ``~/.cache/torch`` by default), so a file torchvision or timm
already fetched is reused, and its SHA-256 prefix (in the file name) is checked before it is
moved into place: a corrupt or truncated download leaves nothing behind. The file is read with
``weights_only=True``: no code in it runs. ``RESNETLAB_WEIGHTS_URL`` replaces the base URL
(``https://download.pytorch.org/models/``) by a mirror or an air-gapped copy holding the same
file names.
"""

from __future__ import annotations

import http.client
import os
import sys
import urllib.error
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ResnetlabError, first_line

# The statistics the ImageNet weights were trained with (pixels in [0, 1]); their average for gray input.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_GRAY_MEAN = (round(sum(IMAGENET_MEAN) / 3, 4),)
IMAGENET_GRAY_STD = (round(sum(IMAGENET_STD) / 3, 4),)

DEFAULT_BASE_URL = "https://download.pytorch.org/models/"
BASE_URL_VARIABLE = "RESNETLAB_WEIGHTS_URL"

# The ``init`` values that name published weights, and the torchvision version each reads.
PRETRAINED_INITS = {"imagenet": "IMAGENET1K_V1", "imagenet-v2": "IMAGENET1K_V2"}


@dataclass(frozen=True)
class PublishedWeights:
    """One of torchvision's weight files: its name on the server (the SHA-256 prefix after the dash) and its
    ImageNet top-1 accuracy (%, torchvision's figure, at 224 px)."""

    file: str
    top1: float

    @property
    def hash_prefix(self) -> str:
        """The SHA-256 prefix the file name carries, which the download is checked against."""
        return self.file.rsplit("-", 1)[1].split(".")[0]


# torchvision 0.2x's weights table (torchvision/models/resnet.py), by our registry names.
IMAGENET_WEIGHTS: dict[str, dict[str, PublishedWeights]] = {
    "resnet18": {"IMAGENET1K_V1": PublishedWeights("resnet18-f37072fd.pth", 69.758)},
    "resnet34": {"IMAGENET1K_V1": PublishedWeights("resnet34-b627a593.pth", 73.314)},
    "resnet50": {"IMAGENET1K_V1": PublishedWeights("resnet50-0676ba61.pth", 76.130),
                 "IMAGENET1K_V2": PublishedWeights("resnet50-11ad3fa6.pth", 80.858)},
    "resnet101": {"IMAGENET1K_V1": PublishedWeights("resnet101-63fe2227.pth", 77.374),
                  "IMAGENET1K_V2": PublishedWeights("resnet101-cd907fc2.pth", 81.886)},
    "resnet152": {"IMAGENET1K_V1": PublishedWeights("resnet152-394f9c45.pth", 78.312),
                  "IMAGENET1K_V2": PublishedWeights("resnet152-f82ba261.pth", 82.284)},
    "resnext50_32x4d": {"IMAGENET1K_V1": PublishedWeights("resnext50_32x4d-7cdf4587.pth", 77.618),
                        "IMAGENET1K_V2": PublishedWeights("resnext50_32x4d-1a0047aa.pth", 81.198)},
    "resnext101_32x8d": {"IMAGENET1K_V1": PublishedWeights("resnext101_32x8d-8ba56ff5.pth", 79.312),
                         "IMAGENET1K_V2": PublishedWeights("resnext101_32x8d-110c445d.pth", 82.834)},
    # Published once only, trained with the new recipe: torchvision calls it V1.
    "resnext101_64x4d": {"IMAGENET1K_V1": PublishedWeights("resnext101_64x4d-173b62eb.pth", 83.246)},
    "wide_resnet50_2": {"IMAGENET1K_V1": PublishedWeights("wide_resnet50_2-95faca4d.pth", 78.468),
                        "IMAGENET1K_V2": PublishedWeights("wide_resnet50_2-9ba9bcbe.pth", 81.602)},
    "wide_resnet101_2": {"IMAGENET1K_V1": PublishedWeights("wide_resnet101_2-32ee1156.pth", 78.848),
                         "IMAGENET1K_V2": PublishedWeights("wide_resnet101_2-d733dc28.pth", 82.510)},
}


def is_pretrained_init(init: str | None) -> bool:
    """Whether ``init`` names published weights (``imagenet``, ``imagenet-v2``) rather than a scheme or a file."""
    return init in PRETRAINED_INITS


def published(model: str, init: str = "imagenet") -> PublishedWeights:
    """The file ``init`` names for ``model``; a model or version without one is one line saying what to use."""
    version = PRETRAINED_INITS[init]
    versions = IMAGENET_WEIGHTS.get(model)
    if not versions:
        have = ", ".join(IMAGENET_WEIGHTS)
        raise ResnetlabError(
            f"--init {init}: {model} has no published ImageNet weights (torchvision publishes them for {have}); "
            f"use --model resnet18 (or another of those) with --init {init}, or --init FILE with weights of your own"
        )
    if version not in versions:
        raise ResnetlabError(f"--init {init}: torchvision publishes no {version} weights for {model}, only "
                             f"{', '.join(versions)}; use --init imagenet")
    return versions[version]


def weights_url(weights: PublishedWeights) -> str:
    """Where the file is fetched from: ``$RESNETLAB_WEIGHTS_URL`` (a mirror) or PyTorch's server, and its name."""
    base = os.environ.get(BASE_URL_VARIABLE) or DEFAULT_BASE_URL
    try:
        scheme = urllib.parse.urlparse(base).scheme
    except ValueError:  # e.g. an unclosed IPv6 bracket
        scheme = ""
    if scheme not in ("http", "https", "file"):
        raise ResnetlabError(f"{BASE_URL_VARIABLE}={base!r} is not a URL: give one that starts with https://, http:// "
                             "or file:// (a folder holding torchvision's file names), or unset it")
    return base.rstrip("/") + "/" + weights.file


def cache_path(weights: PublishedWeights) -> Path:
    """Where PyTorch keeps the file once fetched (``$TORCH_HOME/hub/checkpoints/<file>``), as torchvision and timm do."""
    return Path(torch.hub.get_dir()) / "checkpoints" / weights.file


def imagenet_state_dict(model: str, init: str = "imagenet", progress: bool | None = None) -> dict[str, torch.Tensor]:
    """The ImageNet state dict ``init`` names for ``model``: from PyTorch's cache, else downloaded into it.

    ``progress``: a progress bar on stderr (default: when stderr is a terminal). Every way it can
    fail is one :class:`ResnetlabError` naming the URL, the cache path and ``--init FILE``.
    """
    weights = published(model, init)
    url, cached = weights_url(weights), cache_path(weights)
    instead = f"or download it elsewhere, put it at {cached}, or give it with --init FILE"
    if not cached.is_file():
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ResnetlabError(f"--init {init}: cannot create PyTorch's weight cache {cached.parent} ({exc.strerror}); "
                                 "set TORCH_HOME to a folder you can write, or give the file with --init FILE") from None
    partial_before = set(cached.parent.glob(f"{cached.name}.*.partial"))
    try:
        state = torch.hub.load_state_dict_from_url(
            url, map_location="cpu", progress=sys.stderr.isatty() if progress is None else progress,
            check_hash=True, weights_only=True,
        )
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as exc:
        # No network, a server that refuses or answers 404, or a connection cut mid-file (nothing is left in the cache).
        reason = getattr(exc, "reason", None) or first_line(exc) or type(exc).__name__
        raise ResnetlabError(f"--init {init}: could not download {model}'s ImageNet weights from {url} ({reason}); "
                             f"check the network or {BASE_URL_VARIABLE}, {instead}") from None
    except RuntimeError as exc:
        if "invalid hash value" in str(exc):  # the download is refused and removed before it reaches the cache
            raise ResnetlabError(f"--init {init}: the file downloaded from {url} is damaged or truncated (its SHA-256 "
                                 f"does not start with {weights.hash_prefix}); nothing was kept: try again, "
                                 f"{instead}") from None
        raise _damaged_cache(init, cached, exc) from None
    except OSError as exc:
        if cached.is_file():
            raise _damaged_cache(init, cached, exc) from None
        raise ResnetlabError(f"--init {init}: could not save {url} into {cached.parent} ({exc.strerror or exc}); free "
                             f"space there or set TORCH_HOME to another folder, {instead}") from None
    except Exception as exc:  # noqa: BLE001 - a cached file torch.load cannot read fails in many ways (unpickling, zip)
        if cached.is_file():
            raise _damaged_cache(init, cached, exc) from None
        raise ResnetlabError(f"--init {init}: could not download {model}'s ImageNet weights from {url} "
                             f"({first_line(exc)[:160]}); {instead}") from None
    finally:
        # torch.hub removes its partial file on most failures, not all (one before the transfer starts): whatever
        # partial file this call left goes, so that a failure leaves nothing in the cache.
        for leftover in set(cached.parent.glob(f"{cached.name}.*.partial")) - partial_before:
            leftover.unlink(missing_ok=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise _damaged_cache(init, cached, TypeError(f"found a {type(state).__name__}, not a state dict"))
    return state


def _damaged_cache(init: str, cached: Path, exc: BaseException) -> ResnetlabError:
    """The line for a cached file that cannot be read: delete it, and the next run fetches it again."""
    return ResnetlabError(f"--init {init}: the cached weights {cached} cannot be read ({first_line(exc)[:120]}); "
                          "delete the file and run again to download it afresh, or give a good copy with --init FILE")
