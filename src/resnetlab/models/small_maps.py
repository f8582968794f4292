"""3x3 convolutions on feature maps of 1x1 or 2x2 pixels, computed as one matrix product without the padding.

At 28 px the seed's ResNet-18 runs its last stage on 1x1 maps and the one before on 2x2 maps.
There a 3x3 convolution with padding 1 mostly multiplies padding zeros: on a 1x1 map only the
centre tap meets data (8 of 9 products are zeros); from a 2x2 map to a 1x1 one (stride 2) 4
taps of 9; from 2x2 to 2x2, 16 products of 36. Over the pixels that exist the same function is

    out[n, p, o] = sum over input pixels q and channels c of x[n, q, c] * W[o, c, 1 + q - p]

(offsets in rows and columns), one matrix product whose matrix is a view of the kernel: its
centre tap, its lower-right 2x2 corner, or its 2x2 windows (``Tensor.unfold``). So the
parameters, the state dict and the gradients are the convolution's (taps that never meet data
get zero gradient, as they do there). :func:`use_small_map_products` switches a model's 3x3
convolutions over; on other maps they stay ordinary convolutions. Measured on a 2-core Intel
Xeon in fp32, the seed's net at 28 px trains 1.3x faster with it (``benchmarks/cpu_step.py``).
"""

from __future__ import annotations

import torch
from torch import nn


def _matrix(weight: torch.Tensor, size: tuple[int, int], stride: int) -> tuple[torch.Tensor, int] | None:
    """The (input pixels x C, output pixels x O) matrix of a 3x3, padding-1 kernel on a ``size`` map, and the output side.

    None where the map is not one of the three cases (the convolution is used then). Output
    pixels of the 2x2 -> 2x2 case come in reversed order (see :meth:`SmallMapConv2d.forward`).
    """
    out_c, in_c = weight.shape[:2]
    if size == (1, 1):
        return weight[:, :, 1, 1].t(), 1
    if size != (2, 2):
        return None
    if stride == 2:  # input pixel q meets tap 1 + q of the single output's window
        return weight[:, :, 1:3, 1:3].permute(2, 3, 1, 0).reshape(4 * in_c, out_c), 1
    # Stride 1: output p = 1 - p' meets input q through tap q + p': a 2x2 window of the kernel.
    windows = weight.permute(2, 3, 1, 0).unfold(0, 2, 1).unfold(1, 2, 1)  # [p'y, p'x, C, O, qy, qx]
    return windows.permute(4, 5, 2, 0, 1, 3).reshape(4 * in_c, 4 * out_c), 2


class SmallMapConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` that computes 3x3, padding-1 convolutions of 1x1 and 2x2 maps as one matrix product."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        found = None
        if self.kernel_size == (3, 3) and self.padding == (1, 1) and self.groups == 1 and self.dilation == (1, 1) \
                and self.padding_mode == "zeros" and self.stride[0] == self.stride[1] and self.stride[0] in (1, 2):
            found = _matrix(self.weight, tuple(x.shape[-2:]), self.stride[0])
        if found is None:
            return super().forward(x)
        matrix, side = found
        n, pixels = x.shape[0], x.shape[-2] * x.shape[-1]
        flat = x.permute(0, 2, 3, 1).reshape(n, pixels * x.shape[1])  # pixels, then channels
        out = (flat @ matrix).view(n, side, side, self.out_channels)
        if side == 2:
            out = out.flip(1, 2)  # the reversed output order of the 2x2 case
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.permute(0, 3, 1, 2)  # NCHW shape, channels-last memory


def use_small_map_products(model: nn.Module) -> nn.Module:
    """Switch every plain ``nn.Conv2d`` of ``model`` to :class:`SmallMapConv2d` in place (same parameters and state dict)."""
    for module in model.modules():
        if type(module) is nn.Conv2d:
            module.__class__ = SmallMapConv2d
    return model
