"""A trained model ready to use: ``clf = resnetlab.load("runs/x/best.safetensors")``.

Everything the model needs comes from the weight file's header (``weights.py``): the model,
its class names and its :class:`~resnetlab.weights.Preprocess`, so images are prepared exactly
as in training: converted to the model's channels, brought to the stored size with Pillow,
scaled to [0, 1], resized (bilinear) to the input size, standardised. A photo (a dark object on
a light background, off centre) is not what a Fashion-MNIST model saw: ``invert=True`` and
``center=True`` fix it (:mod:`resnetlab.inference.photo`), and an image whose background is the other way
round from the training images' is warned of (:class:`UnlikeTrainingWarning`). Nothing here
imports the training engine.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any, Sequence, Union

import torch
from torch import nn

from ..data.images import pil_to_tensor, read_image, resize_tensor
from ..data.stats import border_mean
from ..errors import ResnetlabError
from ..weights import WeightsHeader, load_model
from . import photo
from .explain import grad_cam

ImageLike = Union[str, os.PathLike, torch.Tensor, Any]  # a path, a tensor or a PIL image


@dataclass
class Prediction:
    """The most likely class of one image, its probability, and the top-k list."""

    label: str
    prob: float
    top: list[tuple[str, float]]


class UnlikeTrainingWarning(UserWarning):
    """Images unlike the training images (a light background where those had a dark one): the answers are doubtful."""


def unlike_training_lines(reasons: Sequence[str | None], *, inverted: bool, invert_option: str = "invert=True",
                          center_option: str = "center=True", names: Sequence[str] | None = None) -> list[str]:
    """One line per way some images are unlike the training ones (``reasons``: :meth:`Classifier.unlike_training`'s).

    "3 of 10 images have a light background, unlike the training images (dark); try invert=True
    ...", the one image's name in place of the count where ``names`` are given, and the fix in
    the caller's words (``invert_option``, ``center_option``: the CLI's flags, say).
    """
    if inverted:
        hint = f"{invert_option} made {'it' if len(reasons) == 1 else 'them'} so; leave it out"
    else:
        hint = f"try {invert_option} (and {center_option} if the object is off centre or small)"
    lines = []
    for reason in dict.fromkeys(r for r in reasons if r is not None):
        flagged = [i for i, r in enumerate(reasons) if r == reason]
        if len(flagged) == 1 and names is not None:
            who = f"{names[flagged[0]]} has"
        elif len(reasons) == 1:
            who = "the image has"
        else:
            who = f"{len(flagged)} of {len(reasons)} images have"
        lines.append(f"{who} {reason}; {hint}")
    return lines


class Classifier:
    """A model in eval mode with its class names and input preparation; see :func:`load`."""

    def __init__(self, model: nn.Module, header: WeightsHeader, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.header = header
        self.preprocess = header.preprocess
        self.class_names: list[str] = list(header.class_names)
        self.channels: int = self.preprocess.channels
        self.image_size: int = self.preprocess.size

    def to_uint8(self, image: ImageLike, *, invert: bool = False, center: bool = False) -> torch.Tensor:
        """One image (path, PIL image, or tensor [C, H, W]) -> uint8 tensor [C, H, W] with the model's channels.

        ``invert``: ``255 - pixels`` before anything else is done to them (a photo's dark object on
        a light background becomes a light one on a dark background, as Fashion-MNIST has them);
        ``center``: then cropped to a square around its object (:func:`resnetlab.inference.photo.center_on_object`)
        and brought to the stored size.
        """
        stored = self.preprocess.stored_size
        # Centring looks at the image as given: a small object in a large photo shrunk first would be a few pixels.
        x = self._read(image, None if center else stored)
        if invert:
            x = photo.invert(x)  # after the resize to the stored size, which is linear: the same up to rounding
        if center:
            x = photo.center_on_object(x)
            if stored is not None:
                x = resize_tensor(x, stored)
        return x

    def _read(self, image: ImageLike, stored: int | None) -> torch.Tensor:
        """One image as uint8 [C, H, W] with the model's channels, a file or PIL image brought to ``stored`` (None: as is)."""
        if isinstance(image, (str, os.PathLike)):
            return read_image(image, self.channels, stored)
        if isinstance(image, torch.Tensor):
            if image.ndim != 3 or image.shape[0] != self.channels:
                raise ResnetlabError(
                    f"a tensor image must be [C, H, W] with C = {self.channels}, got {list(image.shape)}"
                )
            if image.dtype == torch.uint8:
                return image
            # Float tensors are taken as pixels in [0, 1], as torchvision's ToTensor gives them.
            return (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
        if hasattr(image, "convert"):  # a PIL image
            return pil_to_tensor(image, self.channels, stored)
        raise ResnetlabError(f"cannot read an image from a {type(image).__name__}; give a path, a PIL image or a tensor")

    def unlike_training(self, image: torch.Tensor) -> str | None:
        """Why a uint8 image as prepared (:meth:`to_uint8`'s) looks unlike the training images, in words, or None.

        The background tells (:func:`resnetlab.inference.photo.background_mismatch`): a light border where the
        training images' was dark, or the reverse. The images' mean intensity is not judged: one
        Fashion-MNIST image in a hundred is brighter than 0.57 and its brightest are 0.75, so no
        distance from the mean (0.29) tells a photo from a pullover. A weight file written before
        the header kept the training images' intensity says nothing (None).
        """
        trained = self.preprocess.border_mean
        return None if trained is None else photo.background_mismatch(trained, border_mean(image))

    def _inputs(self, images: Sequence[ImageLike] | torch.Tensor, invert: bool,
                center: bool) -> tuple[torch.Tensor, list[str | None]]:
        """The model's input for the images, and each one's :meth:`unlike_training`."""
        if isinstance(images, torch.Tensor) and images.ndim == 4:
            images = list(images)
        pixels = [self.to_uint8(image, invert=invert, center=center) for image in images]
        if not pixels:
            return torch.empty(0, self.channels, self.image_size, self.image_size, device=self.device), []
        batch = torch.cat([self.preprocess(x.unsqueeze(0).to(self.device)) for x in pixels])
        return batch, [self.unlike_training(x) for x in pixels]

    @staticmethod
    def _warn(unlike: list[str | None], invert: bool) -> None:
        """One :class:`UnlikeTrainingWarning` for a call whose images are unlike the training ones, pointing at the caller."""
        lines = unlike_training_lines(unlike, inverted=invert)
        if lines:
            warnings.warn(" ".join(lines), UnlikeTrainingWarning, stacklevel=3)

    def prepare(self, images: Sequence[ImageLike] | torch.Tensor, *, invert: bool = False,
                center: bool = False) -> torch.Tensor:
        """Images -> the model's float input [N, C, size, size] on its device (``invert``, ``center``: :meth:`to_uint8`)."""
        return self._inputs(images, invert, center)[0]

    @torch.no_grad()
    def _probabilities(self, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Class probabilities [N, classes] (on the CPU) of the model's input ``x``, in eval mode."""
        self.model.eval()
        out = [self.model(x[i : i + batch_size]).float().softmax(1).cpu() for i in range(0, len(x), batch_size)]
        return torch.cat(out) if out else torch.empty(0, len(self.class_names))

    def probabilities(self, images: Sequence[ImageLike] | torch.Tensor, batch_size: int = 64, *, invert: bool = False,
                      center: bool = False, warn: bool = True) -> torch.Tensor:
        """Class probabilities [N, classes] (on the CPU) for the images, in eval mode.

        ``invert``, ``center``: see :meth:`to_uint8`. Images unlike the training ones (see
        :meth:`unlike_training`) give one :class:`UnlikeTrainingWarning` for the call (``warn=False``: none).
        """
        x, unlike = self._inputs(images, invert, center)
        if warn:
            self._warn(unlike, invert)
        return self._probabilities(x, batch_size)

    def class_index(self, target: str | int) -> int:
        """The index of a class given by name or index; a one-line error names the choices."""
        if isinstance(target, str):
            if target not in self.class_names:
                raise ResnetlabError(f"--class {target!r} is not a class of this model; its classes are "
                                     f"{', '.join(self.class_names)}")
            return self.class_names.index(target)
        if not 0 <= int(target) < len(self.class_names):
            raise ResnetlabError(f"class index {target} is out of range: this model has {len(self.class_names)} classes")
        return int(target)

    def explain(self, images: Sequence[ImageLike] | torch.Tensor, target: str | int | None = None, *,
                stage: str | None = None) -> torch.Tensor:
        """Grad-CAM heatmaps [N, H, W] in [0, 1] at the model's input size: where the evidence for ``target`` lay.

        ``target`` is a class name or index (None: each image's top class); ``stage`` a stage name
        (None: the last whose maps are at least 4x4; see ``model.stages()``). See :func:`resnetlab.inference.explain.grad_cam`.
        """
        x = self.prepare(images)
        chosen = None if target is None else torch.full((len(x),), self.class_index(target), dtype=torch.long)
        heatmaps, _ = grad_cam(self.model, x, chosen, stage)
        return heatmaps

    def predict(self, images: Sequence[ImageLike] | torch.Tensor, top_k: int = 5, *, invert: bool = False,
                center: bool = False, warn: bool = True) -> list[Prediction]:
        """The top-``top_k`` classes of each image, most likely first.

        ``invert``, ``center`` (for photos): see :meth:`to_uint8`; ``warn``: see :meth:`probabilities`.
        """
        x, unlike = self._inputs(images, invert, center)
        if warn:
            self._warn(unlike, invert)
        probs = self._probabilities(x, 64)
        k = max(1, min(top_k, len(self.class_names)))
        values, indices = probs.topk(k, dim=1)
        result = []
        for p, i in zip(values.tolist(), indices.tolist()):
            top = [(self.class_names[c], q) for c, q in zip(i, p)]
            result.append(Prediction(label=top[0][0], prob=top[0][1], top=top))
        return result


def load(path: str | os.PathLike[str], device: str | torch.device = "cpu", *, model: nn.Module | None = None) -> Classifier:
    """Load a resnetlab ``.safetensors`` weight file as a :class:`Classifier` (model in eval mode).

    ``model``: a module you built, given the file's weights in place (and moved to ``device``);
    needed for a file of your own network (``resnetlab.train(model=net)``), whose class only
    your code defines.
    """
    model, header = load_model(path, model)
    return Classifier(model, header, device)
