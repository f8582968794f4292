"""resnetlab.summary: the seed's trace first, then a table whose figures are checked by hand."""

import torch
from torch import nn

from resnetlab import create_model, d2l_resnet18, summary
from helpers import SEED_TRACE


def test_summary_starts_with_the_seed_trace():
    text = str(summary(d2l_resnet18(), (1, 1, 256, 256)))
    assert text.splitlines()[:8] == SEED_TRACE.splitlines()
    assert "Total params: 11,178,378" in text


def test_summary_table_rows_and_depth():
    report = summary(d2l_resnet18(), (1, 1, 256, 256), depth=1)
    assert [r.name for r in report.rows] == [str(i) for i in range(8)]
    assert report.rows[1].output_shape == [1, 64, 64, 64]
    assert report.rows[7].num_params == 512 * 10 + 10
    deeper = summary(d2l_resnet18(), (1, 1, 96, 96), depth=2)
    assert "1.0" in [r.name for r in deeper.rows] and "1.0.conv1" not in [r.name for r in deeper.rows]


def test_macs_by_hand():
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(32, 5))
    report = summary(net, (3, 1, 4, 4))
    # conv: 3 images x 2 maps x 4x4 positions x (1 channel x 3x3 kernel); linear: 3 x 5 x 32.
    assert [r.macs for r in report.rows] == [3 * 2 * 16 * 9, 0, 3 * 5 * 32]
    assert report.total_macs == 864 + 480


def test_grouped_conv_macs():
    net = nn.Sequential(nn.Conv2d(4, 8, 1, groups=2))
    assert summary(net, (1, 4, 2, 2)).total_macs == 8 * 4 * 2  # out elements x (4/2) x 1x1


def test_resnet18_macs_match_the_published_figure():
    # torchvision documents 1.81 GFLOPS (multiply-accumulates) for ResNet-18 at 224 px.
    report = summary(create_model("resnet18"), (1, 3, 224, 224))
    assert round(report.total_macs / 1e9, 2) == 1.81


def test_summary_restores_training_mode():
    net = d2l_resnet18().train()
    summary(net, (1, 1, 96, 96))
    assert net.training
    before = net[0][1].running_mean.clone()
    summary(net, (1, 1, 96, 96))
    torch.testing.assert_close(net[0][1].running_mean, before)  # eval mode: statistics untouched
