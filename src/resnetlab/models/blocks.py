"""Residual blocks: the seed's ``Residual`` (d2l) and torchvision's ``BasicBlock`` / ``Bottleneck``.

``Residual`` and ``resnet_block`` follow the d2l chapter in ``shared/seed/`` line for line
(conv biases included), so a learner's state dict and shapes carry over unchanged.
``BasicBlock`` and ``Bottleneck`` follow torchvision's ``models/resnet.py`` (bias-free convs,
``expansion``, ``downsample``) so torchvision weight files load without renaming keys.
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor, nn
from torch.nn import functional as F


class Residual(nn.Module):
    """The d2l residual block: two 3x3 convs with batch norm and an optional 1x1 conv shortcut.

    Args:
        input_channels: channels of the input.
        num_channels: channels of the output.
        use_1x1conv: put a 1x1 conv (stride ``strides``) on the shortcut so that it matches a
            change of channels or resolution. The seed's notes spell it ``use_lxlconv``; that
            spelling is accepted too.
        strides: stride of the first 3x3 conv (and of the shortcut conv).
    """

    def __init__(
        self,
        input_channels: int,
        num_channels: int,
        use_1x1conv: bool = False,
        strides: int = 1,
        *,
        use_lxlconv: bool | None = None,
    ) -> None:
        super().__init__()
        if use_lxlconv is not None:
            use_1x1conv = use_1x1conv or use_lxlconv
        self.conv1 = nn.Conv2d(input_channels, num_channels, kernel_size=3, padding=1, stride=strides)
        self.conv2 = nn.Conv2d(num_channels, num_channels, kernel_size=3, padding=1)
        # The shortcut's 1x1 conv shares the first conv's stride so the two branches can be added.
        self.conv3 = (
            nn.Conv2d(input_channels, num_channels, kernel_size=1, stride=strides) if use_1x1conv else None
        )
        self.bn1 = nn.BatchNorm2d(num_channels)
        self.bn2 = nn.BatchNorm2d(num_channels)

    def forward(self, X: Tensor) -> Tensor:  # noqa: N803 - the book's name for the input
        """Return ``relu(bn2(conv2(relu(bn1(conv1(X))))) + shortcut(X))``."""
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3 is not None:
            X = self.conv3(X)
        Y += X
        return F.relu(Y)


def resnet_block(
    input_channels: int, num_channels: int, num_residuals: int, first_block: bool = False
) -> list[Residual]:
    """Return the d2l list of ``num_residuals`` ``Residual`` blocks.

    The first block halves height and width and changes the channel count through a strided
    1x1 shortcut, except in the first stage (``first_block=True``), whose input the stem has
    already halved twice.
    """
    blk: list[Residual] = []
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blk.append(Residual(input_channels, num_channels, use_1x1conv=True, strides=2))
        else:
            blk.append(Residual(num_channels, num_channels))
    return blk


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding and no bias (a batch norm follows it)."""
    return nn.Conv2d(
        in_planes, out_planes, kernel_size=3, stride=stride, padding=1, groups=groups, bias=False,
    )


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution with no bias (a batch norm follows it)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


NormLayer = Callable[[int], nn.Module]


class BasicBlock(nn.Module):
    """torchvision's basic block (ResNet-18/34): two 3x3 convs, output channels ``planes``."""

    expansion: int = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        norm_layer: NormLayer | None = None,
    ) -> None:
        super().__init__()
        norm_layer = norm_layer or nn.BatchNorm2d
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock only supports groups=1 and width_per_group=64")
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        """Return ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)

    def zero_init_last(self) -> None:
        """Zero the last batch norm's scale so the block starts as the identity."""
        nn.init.zeros_(self.bn2.weight)


class Bottleneck(nn.Module):
    """torchvision's bottleneck block (ResNet-50 and up): 1x1, 3x3 (stride, groups), 1x1 convs.

    The stride sits on the 3x3 conv (ResNet v1.5), as in torchvision. Output channels are
    ``planes * expansion``; ``groups`` and ``base_width`` give ResNeXt and wide ResNets.
    """

    expansion: int = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        norm_layer: NormLayer | None = None,
    ) -> None:
        super().__init__()
        norm_layer = norm_layer or nn.BatchNorm2d
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = norm_layer(width)
        self.conv2 = conv3x3(width, width, stride, groups)
        self.bn2 = norm_layer(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        """Return ``relu(bn3(conv3(...conv1(x)...)) + shortcut(x))``."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)

    def zero_init_last(self) -> None:
        """Zero the last batch norm's scale so the block starts as the identity."""
        nn.init.zeros_(self.bn3.weight)


__all__ = ["Residual", "resnet_block", "BasicBlock", "Bottleneck", "conv1x1", "conv3x3"]
