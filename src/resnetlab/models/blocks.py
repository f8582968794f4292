"""Residual blocks: the seed's ``Residual`` (d2l), torchvision's ``BasicBlock`` / ``Bottleneck``, and their relatives.

``Residual`` and ``resnet_block`` follow the d2l chapter in ``shared/seed/`` line for line
(conv biases included), so a learner's state dict and shapes carry over unchanged.
``BasicBlock`` and ``Bottleneck`` follow torchvision's ``models/resnet.py`` (bias-free convs,
``expansion``, ``downsample``) so torchvision weight files load without renaming keys.

The book's exercises and newer edition add two more: the pre-activation block of He et al.
2016, "Identity Mappings in Deep Residual Networks" (``Residual(..., preact=True)`` or
``PreActResidual`` in the seed's API, ``PreActBasicBlock`` in torchvision's), and
``ResNeXtBlock`` as d2l writes it.
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
        preact: the pre-activation order of He et al. 2016 (BN -> ReLU -> conv):
            ``conv2(relu(bn2(conv1(relu(bn1(X)))))) + shortcut``, with no ReLU after the
            addition, so the shortcut path stays an identity from block to block. ``bn1`` then
            normalises the block's input (``input_channels``). The 1x1 shortcut conv, when there
            is one, takes the pre-activated input ``relu(bn1(X))``, as in the paper's code and
            the common reimplementations (fb.resnet.torch's preresnet, kuangliu's
            pytorch-cifar, timm): the projection then sees normalised values, like the residual
            branch; an identity shortcut takes ``X`` itself. Layer names and conv biases are
            the plain block's.
    """

    def __init__(
        self,
        input_channels: int,
        num_channels: int,
        use_1x1conv: bool = False,
        strides: int = 1,
        *,
        use_lxlconv: bool | None = None,
        preact: bool = False,
    ) -> None:
        super().__init__()
        if use_lxlconv is not None:
            use_1x1conv = use_1x1conv or use_lxlconv
        self.preact = preact
        self.conv1 = nn.Conv2d(input_channels, num_channels, kernel_size=3, padding=1, stride=strides)
        self.conv2 = nn.Conv2d(num_channels, num_channels, kernel_size=3, padding=1)
        # The shortcut's 1x1 conv shares the first conv's stride so the two branches can be added.
        self.conv3 = (
            nn.Conv2d(input_channels, num_channels, kernel_size=1, stride=strides) if use_1x1conv else None
        )
        # Pre-activation normalises before conv1, that is the block's input channels.
        self.bn1 = nn.BatchNorm2d(input_channels if preact else num_channels)
        self.bn2 = nn.BatchNorm2d(num_channels)

    def forward(self, X: Tensor) -> Tensor:  # noqa: N803 - the book's name for the input
        """Return ``relu(bn2(conv2(relu(bn1(conv1(X))))) + shortcut(X))``, or the pre-activation form (see above)."""
        if self.preact:
            return self._forward_preact(X)
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3 is not None:
            X = self.conv3(X)
        Y += X
        return F.relu(Y)

    def _forward_preact(self, X: Tensor) -> Tensor:  # noqa: N803
        """Return ``conv2(relu(bn2(conv1(relu(bn1(X)))))) + shortcut``; a 1x1 shortcut conv takes ``relu(bn1(X))``."""
        Y = F.relu(self.bn1(X))
        shortcut = self.conv3(Y) if self.conv3 is not None else X
        Y = self.conv2(F.relu(self.bn2(self.conv1(Y))))
        return Y + shortcut


class PreActResidual(Residual):
    """``Residual`` with ``preact=True``: the pre-activation block of He et al. 2016 in the seed's API.

    Same arguments as ``Residual`` (without ``preact``), same layer names; see ``Residual`` for
    the order of operations and where the 1x1 shortcut conv takes its input.
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
        super().__init__(input_channels, num_channels, use_1x1conv, strides, use_lxlconv=use_lxlconv, preact=True)


def resnet_block(
    input_channels: int, num_channels: int, num_residuals: int, first_block: bool = False, preact: bool = False
) -> list[Residual]:
    """Return the d2l list of ``num_residuals`` ``Residual`` blocks (pre-activation ones if ``preact``).

    The first block halves height and width and changes the channel count through a strided
    1x1 shortcut, except in the first stage (``first_block=True``), whose input the stem has
    already halved twice.
    """
    blk: list[Residual] = []
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blk.append(Residual(input_channels, num_channels, use_1x1conv=True, strides=2, preact=preact))
        else:
            blk.append(Residual(num_channels, num_channels, preact=preact))
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
    preact: bool = False  # post-activation: ResNet gives it a normalised downsample and no final norm

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
    preact: bool = False  # post-activation, as BasicBlock

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


class PreActBasicBlock(nn.Module):
    """The pre-activation basic block of He et al. 2016 in torchvision's layout (``ResNet`` builds preact_resnet18/34).

    ``relu(bn1(x))`` feeds conv1 and, when there is one, the ``downsample`` (a bias-free,
    strided 1x1 conv without a batch norm of its own: its input is normalised already); then
    ``bn2``, ReLU, conv2, and the sum with the shortcut, with no ReLU after it. ``bn1``
    normalises ``inplanes`` channels. ``ResNet`` adds the final BN + ReLU that the last block
    lacks before the pool.
    """

    expansion: int = 1
    preact: bool = True  # ResNet: a bare 1x1 conv as downsample, and a final BN + ReLU after layer4

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
            raise ValueError("PreActBasicBlock only supports groups=1 and width_per_group=64")
        self.bn1 = norm_layer(inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn2 = norm_layer(planes)
        self.conv2 = conv3x3(planes, planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        """Return ``conv2(relu(bn2(conv1(relu(bn1(x))))))`` plus ``x`` or ``downsample(relu(bn1(x)))``."""
        out = self.relu(self.bn1(x))  # in place on bn1's output: x stays as it came, for an identity shortcut
        identity = x if self.downsample is None else self.downsample(out)
        out = self.conv1(out)
        out = self.conv2(self.relu(self.bn2(out)))
        return out + identity

    def zero_init_last(self) -> None:
        """Zero the last conv's weights (no batch norm follows it) so the block starts as its shortcut."""
        nn.init.zeros_(self.conv2.weight)


class ResNeXtBlock(nn.Module):
    """The ResNeXt block as d2l's newer edition writes it (PyTorch): 1x1, grouped 3x3, 1x1 convs and a shortcut.

    ``Y = relu(bn1(conv1(X))); Y = relu(bn2(conv2(Y))); Y = bn3(conv3(Y))``; the output is
    ``relu(Y + X)``, ``X`` through ``bn4(conv4(X))`` when ``use_1x1conv``. The layers are lazy
    (``nn.LazyConv2d``, ``nn.LazyBatchNorm2d``): input channels are read from the first batch,
    so count parameters after one forward pass. Conv biases are kept, as the book does.

    Args:
        num_channels: channels of the output.
        groups: as the book uses it, the width of one group (channels per group), not the count:
            the 3x3 conv has ``bot_channels // groups`` groups. ``ResNeXtBlock(32, 16, 1)`` has
            two groups of 16 channels.
        bot_mul: bottleneck width as a multiple of ``num_channels``
            (``bot_channels = int(round(num_channels * bot_mul))``).
        use_1x1conv: a 1x1 conv (stride ``strides``) and batch norm on the shortcut.
        strides: stride of the 3x3 conv and of the shortcut conv.
    """

    def __init__(
        self, num_channels: int, groups: int, bot_mul: float, use_1x1conv: bool = False, strides: int = 1
    ) -> None:
        super().__init__()
        bot_channels = int(round(num_channels * bot_mul))
        self.conv1 = nn.LazyConv2d(bot_channels, kernel_size=1, stride=1)
        self.conv2 = nn.LazyConv2d(
            bot_channels, kernel_size=3, stride=strides, padding=1, groups=bot_channels // groups
        )
        self.conv3 = nn.LazyConv2d(num_channels, kernel_size=1, stride=1)
        self.bn1 = nn.LazyBatchNorm2d()
        self.bn2 = nn.LazyBatchNorm2d()
        self.bn3 = nn.LazyBatchNorm2d()
        if use_1x1conv:
            self.conv4 = nn.LazyConv2d(num_channels, kernel_size=1, stride=strides)
            self.bn4 = nn.LazyBatchNorm2d()
        else:
            self.conv4 = None

    def forward(self, X: Tensor) -> Tensor:  # noqa: N803 - the book's name for the input
        """Return ``relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(X)))))))) + shortcut(X))``."""
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = F.relu(self.bn2(self.conv2(Y)))
        Y = self.bn3(self.conv3(Y))
        if self.conv4 is not None:
            X = self.bn4(self.conv4(X))
        return F.relu(Y + X)


__all__ = [
    "Residual", "PreActResidual", "resnet_block", "BasicBlock", "Bottleneck", "PreActBasicBlock", "ResNeXtBlock",
    "conv1x1", "conv3x3",
]
