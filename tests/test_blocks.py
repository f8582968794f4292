"""The seed's printed results, verbatim: the three Residual shapes and the cell-6 trace."""

import torch
from torch import nn

from helpers import SEED_TRACE
from resnetlab import Residual, d2l_resnet18, resnet_block


def test_residual_same_shape():
    X = torch.rand(4, 3, 6, 6)
    assert Residual(3, 3)(X).shape == torch.Size([4, 3, 6, 6])


def test_residual_more_channels_half_size():
    X = torch.rand(4, 3, 6, 6)
    assert Residual(3, 6, use_1x1conv=True, strides=2)(X).shape == torch.Size([4, 6, 3, 3])


def test_residual_more_channels_same_size():
    X = torch.rand(4, 3, 6, 6)
    assert Residual(3, 6, use_1x1conv=True, strides=1)(X).shape == torch.Size([4, 6, 6, 6])


def test_residual_accepts_the_notes_spelling():
    blk = Residual(3, 6, use_lxlconv=True, strides=2)
    assert isinstance(blk.conv3, nn.Conv2d) and blk.conv3.stride == (2, 2)
    assert Residual(3, 3).conv3 is None


def test_residual_layers_match_the_seed():
    blk = Residual(3, 6, use_1x1conv=True, strides=2)
    assert (blk.conv1.kernel_size, blk.conv1.padding, blk.conv1.stride) == ((3, 3), (1, 1), (2, 2))
    assert (blk.conv2.kernel_size, blk.conv2.padding, blk.conv2.stride) == ((3, 3), (1, 1), (1, 1))
    assert blk.conv3.kernel_size == (1, 1)
    # The seed keeps nn.Conv2d's default bias.
    assert all(c.bias is not None for c in (blk.conv1, blk.conv2, blk.conv3))


def test_residual_computes_the_seed_formula():
    torch.manual_seed(0)
    blk = Residual(3, 6, use_1x1conv=True, strides=2).eval()
    X = torch.rand(2, 3, 6, 6)
    F = nn.functional
    expected = F.relu(blk.bn2(blk.conv2(F.relu(blk.bn1(blk.conv1(X))))) + blk.conv3(X))
    torch.testing.assert_close(blk(X), expected)


def test_resnet_block_structure():
    first = resnet_block(64, 64, 2, first_block=True)
    assert [b.conv3 is None for b in first] == [True, True]
    later = resnet_block(64, 128, 2)
    assert later[0].conv3 is not None and later[0].conv1.stride == (2, 2)
    assert later[1].conv3 is None and later[1].conv1.in_channels == 128


def test_seed_trace_verbatim():
    """The seed's loop, run on our network, prints the seed's eight lines."""
    net = d2l_resnet18()
    X = torch.rand(size=(1, 1, 256, 256))
    lines = []
    for layer in net:
        X = layer(X)
        lines.append(f"{layer.__class__.__name__} output shape:\t {X.shape}")
    assert "\n".join(lines) == SEED_TRACE


def test_d2l_resnet18_is_the_seed_sequential():
    net = d2l_resnet18()
    assert isinstance(net, nn.Sequential) and len(net) == 8
    assert [type(m).__name__ for m in net] == [
        "Sequential", "Sequential", "Sequential", "Sequential", "Sequential",
        "AdaptiveAvgPool2d", "Flatten", "Linear",
    ]
    assert sum(p.numel() for p in net.parameters()) == 11_178_378
