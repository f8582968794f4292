"""ResNet networks: the seed's d2l ResNet-18 and the torchvision-compatible ResNet family (pre-activation ones too).

Every model here has the same surface (after timm): ``in_channels``, ``num_classes``,
``num_features``, ``forward_features(x)`` (the last feature map), ``forward_head(x)`` (pool and
classify) and ``reset_classifier(num_classes)``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from .blocks import BasicBlock, Bottleneck, NormLayer, PreActBasicBlock, conv1x1, resnet_block
from .registry import register_model

STEMS = ("imagenet", "small")


def d2l_stages(in_channels: int, preact: bool = False) -> list[nn.Sequential]:
    """The seed's b1 (7x7 conv, BN, ReLU, 3x3 max-pool) and b2..b5 (two ``Residual`` blocks each; pre-activation ones if ``preact``)."""
    b1 = nn.Sequential(
        nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )
    b2 = nn.Sequential(*resnet_block(64, 64, 2, first_block=True, preact=preact))
    b3 = nn.Sequential(*resnet_block(64, 128, 2, preact=preact))
    b4 = nn.Sequential(*resnet_block(128, 256, 2, preact=preact))
    b5 = nn.Sequential(*resnet_block(256, 512, 2, preact=preact))
    return [b1, b2, b3, b4, b5]


class D2LResNet(nn.Sequential):
    """The seed's ResNet-18: ``nn.Sequential(b1, b2, b3, b4, b5, AdaptiveAvgPool2d, Flatten, Linear)``.

    Kept a plain ``nn.Sequential`` so that iterating over it prints the seed's shape trace and its
    state-dict keys (``0.0.weight`` ...) match the book's ``net``.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__(*d2l_stages(in_channels), nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(512, num_classes))
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.num_features = 512

    def forward_features(self, x: Tensor) -> Tensor:
        """Return the output of b5, the last feature map (N, 512, H/32, W/32)."""
        for stage in list(self)[:5]:
            x = stage(x)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool and flatten a feature map; return the logits, or the pooled features if ``pre_logits``."""
        x = self[6](self[5](x))
        return x if pre_logits else self[7](x)

    def stages(self) -> list[tuple[str, nn.Module]]:
        """The named stages whose outputs the seed prints: b1 (the stem) to b5."""
        return [(f"b{i + 1}", self[i]) for i in range(5)]

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the final linear layer with a freshly initialised one for ``num_classes`` classes."""
        self[7] = nn.Linear(self.num_features, num_classes)
        self.num_classes = num_classes


class ResNet(nn.Module):
    """A torchvision-compatible ResNet / ResNeXt / wide ResNet, or a pre-activation ResNet.

    State-dict keys are torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``,
    ``layer2.0.downsample.0``, ``fc``), so its weight files load without renaming.

    With a pre-activation block (``block.preact``, He et al. 2016) the stem stays as it is
    (conv, BN, ReLU, max-pool, as in fb.resnet.torch's preresnet), each downsample is a bare
    1x1 conv (``layer2.0.downsample.0``, no batch norm: it sees the block's pre-activated input),
    and ``final_bn`` + ``final_relu`` follow ``layer4``, since the last block ends with a conv.

    Args:
        block: ``BasicBlock``, ``Bottleneck`` or ``PreActBasicBlock``.
        layers: blocks per stage, e.g. ``[2, 2, 2, 2]`` for ResNet-18.
        in_channels: input channels (3 for RGB, 1 for grayscale).
        num_classes: outputs of the final linear layer.
        stem: ``"imagenet"`` (7x7 stride-2 conv and 3x3 stride-2 max-pool, as the seed) or
            ``"small"`` (3x3 stride-1 conv, no pool: keeps detail on 28-32 px inputs).
        zero_init_residual: start each block's last batch-norm scale at zero, so every block
            begins as the identity (Goyal et al. 2017).
        groups: convolution groups in bottleneck blocks (ResNeXt's cardinality).
        width_per_group: bottleneck width per group (64 standard, 128 for wide ResNets).
        norm_layer: normalisation layer factory, ``nn.BatchNorm2d`` by default.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck] | type[PreActBasicBlock],
        layers: Sequence[int],
        *,
        in_channels: int = 3,
        num_classes: int = 1000,
        stem: str = "imagenet",
        zero_init_residual: bool = False,
        groups: int = 1,
        width_per_group: int = 64,
        norm_layer: NormLayer | None = None,
    ) -> None:
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"unknown stem {stem!r}; valid stems: {', '.join(STEMS)}")
        if len(layers) != 4:
            raise ValueError(f"layers must give 4 stage depths, got {list(layers)}")
        self._norm_layer = norm_layer or nn.BatchNorm2d
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.stem = stem
        self.inplanes = 64
        self.groups = groups
        self.base_width = width_per_group

        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, self.inplanes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = self._norm_layer(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if stem == "imagenet" else nn.Identity()
        self.preact = getattr(block, "preact", False)  # a block class of the user's own may not say
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.num_features = 512 * block.expansion
        if self.preact:
            # The last pre-activation block ends with a conv: normalise and activate before pooling.
            self.final_bn = self._norm_layer(self.num_features)
            self.final_relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.num_features, num_classes)

        # torchvision's initialisation, so a freshly built model trains like theirs.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck, PreActBasicBlock)):
                    m.zero_init_last()

    def _make_layer(
        self, block: type[BasicBlock] | type[Bottleneck] | type[PreActBasicBlock], planes: int, blocks: int,
        stride: int = 1,
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            shortcut = [conv1x1(self.inplanes, planes * block.expansion, stride)]
            if not self.preact:  # a pre-activation block feeds its downsample normalised input
                shortcut.append(self._norm_layer(planes * block.expansion))
            downsample = nn.Sequential(*shortcut)
        layers = [
            block(self.inplanes, planes, stride, downsample, self.groups, self.base_width, self._norm_layer)
        ]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(
                block(self.inplanes, planes, groups=self.groups, base_width=self.base_width, norm_layer=self._norm_layer)
            )
        return nn.Sequential(*layers)

    def forward_features(self, x: Tensor) -> Tensor:
        """Return the last feature map: the output of ``layer4`` (after ``final_bn`` and ``final_relu`` if pre-activation)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        return self.final_relu(self.final_bn(x)) if self.preact else x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool and flatten a feature map; return the logits, or the pooled features if ``pre_logits``."""
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        """Return the logits for a batch of images (N, in_channels, H, W)."""
        return self.forward_head(self.forward_features(x))

    def stages(self) -> list[tuple[str, nn.Module]]:
        """The named stages: the stem (its last module: the max-pool, or an identity for the small stem) and layer1 to layer4.

        A pre-activation ResNet adds ``final`` (``final_relu``): layer4's output is not yet
        normalised or activated, so Grad-CAM's default is the map that is pooled and classified.
        """
        stages = [("stem", self.maxpool)] + [(f"layer{i}", getattr(self, f"layer{i}")) for i in range(1, 5)]
        return (stages + [("final", self.final_relu)]) if self.preact else stages

    def reset_classifier(self, num_classes: int) -> None:
        """Replace ``fc`` with a freshly initialised linear layer for ``num_classes`` classes."""
        self.fc = nn.Linear(self.num_features, num_classes)
        self.num_classes = num_classes


@register_model("d2l_resnet18", image_size=96, first_conv="0.0", classifier="7")
def d2l_resnet18(in_channels: int = 1, num_classes: int = 10) -> D2LResNet:
    """The seed's (d2l's) ResNet-18 for 1-channel, 10-class input: 11,178,378 parameters."""
    return D2LResNet(in_channels=in_channels, num_classes=num_classes)


@register_model("resnet18", image_size=224, first_conv="conv1", classifier="fc", stems=True)
def resnet18(**kwargs: object) -> ResNet:
    """ResNet-18 (He et al. 2015) in torchvision's layout."""
    return ResNet(BasicBlock, [2, 2, 2, 2], **kwargs)


@register_model("resnet34", image_size=224, first_conv="conv1", classifier="fc", stems=True)
def resnet34(**kwargs: object) -> ResNet:
    """ResNet-34 (He et al. 2015) in torchvision's layout."""
    return ResNet(BasicBlock, [3, 4, 6, 3], **kwargs)


@register_model("resnet50", image_size=224, first_conv="conv1", classifier="fc", stems=True)
def resnet50(**kwargs: object) -> ResNet:
    """ResNet-50 (v1.5: stride on the 3x3 conv) in torchvision's layout."""
    return ResNet(Bottleneck, [3, 4, 6, 3], **kwargs)


@register_model("resnet101", image_size=224, first_conv="conv1", classifier="fc", stems=True)
def resnet101(**kwargs: object) -> ResNet:
    """ResNet-101 (v1.5) in torchvision's layout."""
    return ResNet(Bottleneck, [3, 4, 23, 3], **kwargs)


@register_model("resnet152", image_size=224, first_conv="conv1", classifier="fc", stems=True)
def resnet152(**kwargs: object) -> ResNet:
    """ResNet-152 (v1.5) in torchvision's layout."""
    return ResNet(Bottleneck, [3, 8, 36, 3], **kwargs)


@register_model("resnext50_32x4d", image_size=224, first_conv="conv1", classifier="fc", stems=True)
def resnext50_32x4d(**kwargs: object) -> ResNet:
    """ResNeXt-50 32x4d (Xie et al. 2017): 32 groups of width 4."""
    return ResNet(Bottleneck, [3, 4, 6, 3], groups=32, width_per_group=4, **kwargs)


@register_model("resnext101_32x8d", image_size=224, first_conv="conv1", classifier="fc", stems=True)
def resnext101_32x8d(**kwargs: object) -> ResNet:
    """ResNeXt-101 32x8d (Xie et al. 2017): 32 groups of width 8."""
    return ResNet(Bottleneck, [3, 4, 23, 3], groups=32, width_per_group=8, **kwargs)


@register_model("resnext101_64x4d", image_size=224, first_conv="conv1", classifier="fc", stems=True)
def resnext101_64x4d(**kwargs: object) -> ResNet:
    """ResNeXt-101 64x4d (torchvision's, 2022): 64 groups of width 4."""
    return ResNet(Bottleneck, [3, 4, 23, 3], groups=64, width_per_group=4, **kwargs)


@register_model("wide_resnet50_2", image_size=224, first_conv="conv1", classifier="fc", stems=True)
def wide_resnet50_2(**kwargs: object) -> ResNet:
    """Wide ResNet-50-2 (Zagoruyko & Komodakis 2016): bottlenecks twice as wide."""
    return ResNet(Bottleneck, [3, 4, 6, 3], width_per_group=128, **kwargs)


@register_model("wide_resnet101_2", image_size=224, first_conv="conv1", classifier="fc", stems=True)
def wide_resnet101_2(**kwargs: object) -> ResNet:
    """Wide ResNet-101-2 (Zagoruyko & Komodakis 2016): bottlenecks twice as wide."""
    return ResNet(Bottleneck, [3, 4, 23, 3], width_per_group=128, **kwargs)
