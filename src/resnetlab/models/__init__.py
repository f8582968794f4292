"""Residual networks: the seed's d2l blocks, the ResNet family and the model registry."""

from .blocks import BasicBlock, Bottleneck, Residual, resnet_block
from .registry import ModelSpec, UnknownModelError, create_model, list_models, model_spec, register_model
from .resnet import (
    D2LResNet,
    ResNet,
    d2l_resnet18,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
    resnet152,
    resnext50_32x4d,
    wide_resnet50_2,
)

__all__ = [
    "BasicBlock", "Bottleneck", "D2LResNet", "ModelSpec", "Residual", "ResNet", "UnknownModelError",
    "create_model", "d2l_resnet18", "list_models", "model_spec", "register_model", "resnet_block",
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "wide_resnet50_2",
]
