"""Pre-activation ResNets (He et al. 2016, "Identity Mappings in Deep Residual Networks").

Each block normalises and activates before its convs (BN -> ReLU -> conv) and adds its shortcut
last, with no ReLU after the sum, so the signal passes from block to block through identities.
The last block then ends with a conv, so these networks normalise and activate once more
before the pool. ``d2l_preact_resnet18`` is the seed's net built from ``Residual(...,
preact=True)``; ``preact_resnet18`` / ``preact_resnet34`` are ``ResNet`` with
``PreActBasicBlock`` (torchvision's layer names, ``stem`` option).
"""

from __future__ import annotations

from torch import Tensor, nn

from .blocks import PreActBasicBlock
from .registry import register_model
from .resnet import ResNet, d2l_stages


class D2LPreActResNet(nn.Sequential):
    """The seed's ResNet-18 with pre-activation blocks, an ``nn.Sequential`` whose loop prints the trace.

    What differs from ``D2LResNet``: b2..b5 are ``Residual(..., preact=True)`` blocks (a 1x1
    shortcut conv takes the pre-activated input; no ReLU after the sum), and, as in the paper,
    a ``BatchNorm2d(512)`` and a ``ReLU`` follow b5, as two children of their own (indices 5
    and 6): the seed's loop names them in two lines of their own instead of a sixth
    ``Sequential`` that would read like a stage. Pool, flatten and linear move to 7, 8 and 9.

    b1, the stem, is the seed's (conv, BN, ReLU, max-pool), so the first block's BN + ReLU
    normalises a map that is activated already (fb.resnet.torch's preresnet skips that one;
    timm drops the stem's BN instead): kept so that b1 stays the book's. Parameters: 11,178,506
    at 1 channel and 10 classes, 128 more than ``D2LResNet``.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__(
            *d2l_stages(in_channels, preact=True), nn.BatchNorm2d(512), nn.ReLU(),
            nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(512, num_classes),
        )
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.num_features = 512

    def forward_features(self, x: Tensor) -> Tensor:
        """Return b5's output after the final BN and ReLU, the map that is pooled (N, 512, H/32, W/32)."""
        for layer in list(self)[:7]:
            x = layer(x)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool and flatten a feature map; return the logits, or the pooled features if ``pre_logits``."""
        x = self[8](self[7](x))
        return x if pre_logits else self[9](x)

    def stages(self) -> list[tuple[str, nn.Module]]:
        """b1 (the stem) to b5 as in ``D2LResNet``, then ``final``: the final ReLU, whose map is pooled and classified."""
        return [(f"b{i + 1}", self[i]) for i in range(5)] + [("final", self[6])]

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the final linear layer with a freshly initialised one for ``num_classes`` classes."""
        self[9] = nn.Linear(self.num_features, num_classes)
        self.num_classes = num_classes


@register_model("d2l_preact_resnet18", image_size=96, first_conv="0.0", classifier="9")
def d2l_preact_resnet18(in_channels: int = 1, num_classes: int = 10) -> D2LPreActResNet:
    """The seed's ResNet-18 with pre-activation blocks, for 1-channel, 10-class input: 11,178,506 parameters."""
    return D2LPreActResNet(in_channels=in_channels, num_classes=num_classes)


@register_model("preact_resnet18", image_size=224, first_conv="conv1", classifier="fc", stems=True)
def preact_resnet18(**kwargs: object) -> ResNet:
    """Pre-activation ResNet-18 (He et al. 2016), torchvision's layout: 11,687,848 parameters (3 channels, 1000 classes)."""
    return ResNet(PreActBasicBlock, [2, 2, 2, 2], **kwargs)


@register_model("preact_resnet34", image_size=224, first_conv="conv1", classifier="fc", stems=True)
def preact_resnet34(**kwargs: object) -> ResNet:
    """Pre-activation ResNet-34 (He et al. 2016), torchvision's layout: 21,796,008 parameters (3 channels, 1000 classes)."""
    return ResNet(PreActBasicBlock, [3, 4, 6, 3], **kwargs)
