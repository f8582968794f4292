"""Small-map matrix products compute the convolution: forward and gradients equal in float64, same state dict."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from resnetlab.models import d2l_resnet18
from resnetlab.models.small_maps import SmallMapConv2d, use_small_map_products

# Measured 2026-11-28: at most 2.8e-16 relative (float64 rounding); a wrong tap would be of order 1.
TOLERANCE = 1e-14


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("kernel, stride, padding, size", [
    (3, 1, 1, (1, 1)), (3, 2, 1, (1, 1)), (3, 1, 1, (2, 2)), (3, 2, 1, (2, 2)),  # the matrix products
    (3, 1, 1, (3, 3)), (3, 1, 1, (1, 2)), (1, 2, 0, (2, 2)), (3, 1, 0, (3, 3)),  # ordinary convolutions
])
def test_forward_and_gradients_equal_the_convolution(kernel, stride, padding, size):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 10, kernel, stride=stride, padding=padding).double()
    small = copy.deepcopy(conv)
    small.__class__ = SmallMapConv2d
    x = torch.randn(4, 6, *size, dtype=torch.float64, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    ref, out = conv(x), small(x2)
    assert out.shape == ref.shape and _relative(out, ref) < TOLERANCE
    grad = torch.randn_like(ref)
    ref.backward(grad)
    out.backward(grad)
    for a, b in ((small.weight.grad, conv.weight.grad), (small.bias.grad, conv.bias.grad), (x2.grad, x.grad)):
        assert _relative(a, b) < TOLERANCE


def test_the_seeds_network_computes_the_same_with_the_same_state_dict():
    torch.manual_seed(0)
    net = d2l_resnet18().double().train()
    fast = use_small_map_products(copy.deepcopy(net))
    assert list(fast.state_dict()) == list(net.state_dict())
    assert sum(isinstance(m, SmallMapConv2d) for m in fast.modules()) == sum(isinstance(m, nn.Conv2d) for m in net.modules())
    x = torch.randn(8, 1, 28, 28, dtype=torch.float64)  # 28 px: the last stage on 1x1 maps, the one before on 2x2
    ref, out = net(x), fast(x)
    assert _relative(out, ref) < 1e-12  # 20 layers of rounding
    ref.sum().backward()
    out.sum().backward()
    # (conv biases before a batch norm get only rounding as gradient; they are left out)
    worst = max(_relative(pf.grad, pr.grad) for pf, pr in zip(fast.parameters(), net.parameters()) if pr.grad.norm() > 1e-8)
    assert worst < 1e-9  # batch norm divides by small variances; still float64 rounding


def test_channels_last_and_bf16_autocast():
    torch.manual_seed(0)
    net = d2l_resnet18().eval()
    fast = use_small_map_products(copy.deepcopy(net)).to(memory_format=torch.channels_last)
    x = torch.randn(4, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = net(x).float(), fast(x).float()
    assert _relative(b, a) < 0.05  # bf16 rounding of two different summation orders
