"""resnetlab: residual networks on PyTorch, from the d2l chapter's ResNet-18 to the ResNet family.

Quick start::

    import resnetlab
    net = resnetlab.d2l_resnet18()              # the seed's network, 1 channel, 10 classes
    print(resnetlab.summary(net, (1, 1, 256, 256)))
    model = resnetlab.create_model("resnet50", num_classes=10)
    clf = resnetlab.load("runs/latest/best.safetensors")   # a trained model, ready to predict
    clf.predict(["shoe.png"])
"""

from .api import lr_find, resume, train
from .errors import ResnetlabError
from .inference.classifier import Classifier, Prediction, load
from .models import (
    BasicBlock,
    Bottleneck,
    D2LPreActResNet,
    D2LResNet,
    PreActBasicBlock,
    PreActResidual,
    Residual,
    ResNeXtBlock,
    ResNet,
    UnknownModelError,
    create_model,
    d2l_preact_resnet18,
    d2l_resnet18,
    list_models,
    model_spec,
    preact_resnet18,
    preact_resnet34,
    register_model,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
    resnet152,
    resnet_block,
    resnext50_32x4d,
    resnext101_32x8d,
    resnext101_64x4d,
    wide_resnet50_2,
    wide_resnet101_2,
)
from .models.summary import ModelSummary, summary
from .version import __version__

__all__ = [
    "BasicBlock", "Hook", "TrainConfig", "Bottleneck", "Classifier", "D2LPreActResNet", "D2LResNet", "ModelSummary", "PreActBasicBlock",
    "PreActResidual", "Prediction", "Residual", "ResNeXtBlock", "ResNet", "ResnetlabError", "UnknownModelError",
    "__version__", "create_model", "d2l_preact_resnet18", "d2l_resnet18", "list_models", "load", "model_spec",
    "preact_resnet18", "preact_resnet34", "register_model", "resnet18", "resnet34", "resnet50", "resnet101",
    "lr_find", "resnet152", "resnet_block", "resume", "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d", "summary", "train",
    "wide_resnet50_2", "wide_resnet101_2",
]


def __getattr__(name: str):
    """``resnetlab.Hook`` and ``resnetlab.TrainConfig``, imported when first asked for: inference never loads the engine."""
    if name == "Hook":
        from .engine.hooks import Hook

        return Hook
    if name == "TrainConfig":
        from .config import TrainConfig

        return TrainConfig
    raise AttributeError(f"module 'resnetlab' has no attribute {name!r}")
