"""torch.hub entry points: every resnetlab model by its registry name, and a resnetlab weights file loaded back.

    import torch
    net = torch.hub.load("owner/resnetlab", "d2l_resnet18")                  # from GitHub
    net = torch.hub.load("/path/to/resnetlab", "resnet18", source="local",   # from a checkout
                         num_classes=10, in_channels=1)
    net = torch.hub.load("/path/to/resnetlab", "from_weights", source="local", path="runs/latest/best.safetensors")
    print(torch.hub.help("/path/to/resnetlab", "resnet50", source="local"))

Models are built with their own (random) initialisation, or with ``pretrained=True`` from torchvision's
ImageNet weights (fetched once into PyTorch's cache); trained weights of your own come from a weights file
(``from_weights``, or ``classifier`` for the object that also prepares images and names classes).
"""

import os
import sys

dependencies = ["torch", "safetensors", "numpy", "PIL"]

try:  # installed (pip install resnetlab), or run from a checkout whose src/ is not on the path
    import resnetlab
except ImportError:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))
    import resnetlab


def _entry(name):
    """The hub entry for registry model ``name``: it takes the builder's keyword arguments."""
    builder = resnetlab.model_spec(name).builder

    def entry(**kwargs):
        return resnetlab.create_model(name, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = (
        f"resnetlab's {name}, built with its own initialisation (pretrained=True: torchvision's ImageNet weights, "
        f"where published): torch.hub.load(repo, {name!r}, **kwargs) == resnetlab.create_model({name!r}, **kwargs).\n\n"
        f"{(builder.__doc__ or '').strip()}"
    )
    return entry


for _name in resnetlab.list_models():
    globals()[_name] = _entry(_name)


def from_weights(path, device="cpu"):
    """A model read back from a resnetlab weights file (``best.safetensors``, ``last.safetensors``), ready for inference.

    The network the file's header names, rebuilt and given its weights, in eval mode on ``device``
    (float32); ``model.class_names`` are the classes its outputs stand for, and ``model.preprocess``
    turns uint8 images [N, C, H, W] into its input (resize and normalisation as in training).
    For images from files, with the classes named, use the ``classifier`` entry instead.
    """
    from resnetlab.weights import load_model

    model, header = load_model(path)
    model.class_names = list(header.class_names)
    model.preprocess = header.preprocess
    return model.to(device)


def classifier(path, device="cpu"):
    """A resnetlab weights file as a ``resnetlab.Classifier``: ``.predict(["shoe.jpg"])``, ``.probabilities(...)``,
    ``.explain(...)`` (see ``resnetlab.load``)."""
    return resnetlab.load(path, device)
