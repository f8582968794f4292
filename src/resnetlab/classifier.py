"""A trained model ready to use: ``clf = resnetlab.load("runs/x/best.safetensors")``.

Everything the model needs is read from the weight file's header (model, class names, input
size, normalisation), so images are prepared exactly as in training: converted to the model's
channels, scaled to [0, 1], resized (bilinear) to the input size, standardised.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Union

import torch
from torch import nn

from .data.loader import to_model_input
from .engine.checkpoint import build_from_weights
from .errors import ResnetlabError
from .images import pil_to_tensor, read_image

ImageLike = Union[str, os.PathLike, torch.Tensor, Any]  # a path, a tensor or a PIL image


@dataclass
class Prediction:
    """The most likely class of one image, its probability, and the top-k list."""

    label: str
    prob: float
    top: list[tuple[str, float]]


class Classifier:
    """A model in eval mode with its class names and input preparation; see :func:`load`."""

    def __init__(self, model: nn.Module, metadata: dict[str, Any], device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.metadata = metadata
        self.class_names: list[str] = list(metadata["class_names"])
        self.channels, height, width = metadata["input_size"]
        self.image_size: int = int(height)
        # Images are brought to the size the training data had (Pillow, bilinear) before the
        # model's own resize, as in training; older files without it go straight to the model's size.
        self.stored_size: int | None = metadata.get("stored_size")
        norm = metadata.get("normalization")
        shape = (1, self.channels, 1, 1)
        self.mean = torch.tensor(norm["mean"], device=self.device).view(shape) if norm else None
        self.std = torch.tensor(norm["std"], device=self.device).view(shape) if norm else None

    def to_uint8(self, image: ImageLike) -> torch.Tensor:
        """One image (path, PIL image, or tensor [C, H, W]) -> uint8 tensor [C, H, W] with the model's channels."""
        if isinstance(image, (str, os.PathLike)):
            return read_image(image, self.channels, self.stored_size)
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
            return pil_to_tensor(image, self.channels, self.stored_size)
        raise ResnetlabError(f"cannot read an image from a {type(image).__name__}; give a path, a PIL image or a tensor")

    def prepare(self, images: Sequence[ImageLike] | torch.Tensor) -> torch.Tensor:
        """Images -> the model's float input [N, C, size, size] on its device."""
        if isinstance(images, torch.Tensor) and images.ndim == 4:
            images = list(images)
        batch = [
            to_model_input(self.to_uint8(image).unsqueeze(0).to(self.device), self.image_size, self.mean, self.std)
            for image in images
        ]
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


def load(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Classifier:
    """Load a resnetlab ``.safetensors`` weight file as a :class:`Classifier` (model in eval mode)."""
    model, metadata = build_from_weights(Path(path))
    return Classifier(model, metadata, device)
