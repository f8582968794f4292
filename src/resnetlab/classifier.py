"""A trained model ready to use: ``clf = resnetlab.load("runs/x/best.safetensors")``.

Everything the model needs comes from the weight file's header (``weights.py``): the model,
its class names and its :class:`~resnetlab.weights.Preprocess`, so images are prepared exactly
as in training: converted to the model's channels, brought to the stored size with Pillow,
scaled to [0, 1], resized (bilinear) to the input size, standardised. Nothing here imports the
training engine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence, Union

import torch
from torch import nn

from .errors import ResnetlabError
from .explain import grad_cam
from .images import pil_to_tensor, read_image
from .weights import WeightsHeader, load_model

ImageLike = Union[str, os.PathLike, torch.Tensor, Any]  # a path, a tensor or a PIL image


@dataclass
class Prediction:
    """The most likely class of one image, its probability, and the top-k list."""

    label: str
    prob: float
    top: list[tuple[str, float]]


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

    def to_uint8(self, image: ImageLike) -> torch.Tensor:
        """One image (path, PIL image, or tensor [C, H, W]) -> uint8 tensor [C, H, W] with the model's channels."""
        stored = self.preprocess.stored_size
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

    def prepare(self, images: Sequence[ImageLike] | torch.Tensor) -> torch.Tensor:
        """Images -> the model's float input [N, C, size, size] on its device."""
        if isinstance(images, torch.Tensor) and images.ndim == 4:
            images = list(images)
        batch = [self.preprocess(self.to_uint8(image).unsqueeze(0).to(self.device)) for image in images]
        if not batch:
            return torch.empty(0, self.channels, self.image_size, self.image_size, device=self.device)
        return torch.cat(batch)

    @torch.no_grad()
    def probabilities(self, images: Sequence[ImageLike] | torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Class probabilities [N, classes] (on the CPU) for the images, in eval mode."""
        self.model.eval()
        x = self.prepare(images)
        out = [self.model(x[i : i + batch_size]).float().softmax(1).cpu() for i in range(0, len(x), batch_size)]
        return torch.cat(out) if out else torch.empty(0, len(self.class_names))

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
        (None: the last whose maps are at least 4x4; see ``model.stages()``). See :func:`resnetlab.explain.grad_cam`.
        """
        x = self.prepare(images)
        chosen = None if target is None else torch.full((len(x),), self.class_index(target), dtype=torch.long)
        heatmaps, _ = grad_cam(self.model, x, chosen, stage)
        return heatmaps

    def predict(self, images: Sequence[ImageLike] | torch.Tensor, top_k: int = 5) -> list[Prediction]:
        """The top-``top_k`` classes of each image, most likely first."""
        probs = self.probabilities(images)
        k = max(1, min(top_k, len(self.class_names)))
        values, indices = probs.topk(k, dim=1)
        result = []
        for p, i in zip(values.tolist(), indices.tolist()):
            top = [(self.class_names[c], q) for c, q in zip(i, p)]
            result.append(Prediction(label=top[0][0], prob=top[0][1], top=top))
        return result


def load(path: str | os.PathLike[str], device: str | torch.device = "cpu", *, model: nn.Module | None = None) -> Classifier:
    """Load a resnetlab ``.safetensors`` weight file as a :class:`Classifier` (model in eval mode).

    ``model``: a module you built, given the file's weights in place; needed for a file of your
    own network (``resnetlab.train(model=net)``), whose class only your code defines.
    """
    model, header = load_model(path, model)
    return Classifier(model, header, device)
