"""Residual networks: the seed's d2l blocks, the ResNet family, pre-activation ResNets and the model registry."""

from .blocks import BasicBlock, Bottleneck, PreActBasicBlock, PreActResidual, Residual, ResNeXtBlock, resnet_block
from .preact import D2LPreActResNet, d2l_preact_resnet18, preact_resnet18, preact_resnet34
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
    resnext101_32x8d,
    resnext101_64x4d,
    wide_resnet50_2,
    wide_resnet101_2,
)

__all__ = [
    "BasicBlock", "Bottleneck", "D2LPreActResNet", "D2LResNet", "ModelSpec", "PreActBasicBlock", "PreActResidual",
    "Residual", "ResNeXtBlock", "ResNet", "UnknownModelError", "create_model", "d2l_preact_resnet18", "d2l_resnet18",
    "list_models", "model_spec", "preact_resnet18", "preact_resnet34", "register_model", "resnet_block",
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d",
    "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2",
]
