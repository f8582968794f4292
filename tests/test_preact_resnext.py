"""Pre-activation blocks and nets (He et al. 2016) and the book's ResNeXtBlock: shapes, formulas, counts by hand."""

import pytest
import torch
from torch import nn

import resnetlab
from resnetlab import (
    PreActBasicBlock,
    PreActResidual,
    Residual,
    ResNeXtBlock,
    create_model,
    d2l_preact_resnet18,
    d2l_resnet18,
    model_spec,
    resnet_block,
    summary,
)
from resnetlab.inference.explain import default_stage, grad_cam, stage_outputs

F = nn.functional

# The seed's loop (cell 6) run on d2l_preact_resnet18 at 224 px: the seed's eight kinds of line, with
# the final batch norm and ReLU as two lines of their own between b5 and the pool.
PREACT_TRACE_224 = """\
Sequential output shape:\t torch.Size([1, 64, 56, 56])
Sequential output shape:\t torch.Size([1, 64, 56, 56])
Sequential output shape:\t torch.Size([1, 128, 28, 28])
Sequential output shape:\t torch.Size([1, 256, 14, 14])
Sequential output shape:\t torch.Size([1, 512, 7, 7])
BatchNorm2d output shape:\t torch.Size([1, 512, 7, 7])
ReLU output shape:\t torch.Size([1, 512, 7, 7])
AdaptiveAvgPool2d output shape:\t torch.Size([1, 512, 1, 1])
Flatten output shape:\t torch.Size([1, 512])
Linear output shape:\t torch.Size([1, 10])"""


def count(model):
    return sum(p.numel() for p in model.parameters())


# --- the pre-activation Residual, in the seed's API -------------------------------------------------

def test_preact_residual_same_shape():
    X = torch.rand(4, 3, 6, 6)
    assert Residual(3, 3, preact=True)(X).shape == torch.Size([4, 3, 6, 6])
    assert PreActResidual(3, 3)(X).shape == torch.Size([4, 3, 6, 6])


def test_preact_residual_more_channels_half_size():
    X = torch.rand(4, 3, 6, 6)
    assert Residual(3, 6, use_1x1conv=True, strides=2, preact=True)(X).shape == torch.Size([4, 6, 3, 3])
    assert PreActResidual(3, 6, use_lxlconv=True, strides=2)(X).shape == torch.Size([4, 6, 3, 3])
    assert Residual(3, 6, use_1x1conv=True, preact=True)(X).shape == torch.Size([4, 6, 6, 6])


def test_preact_residual_normalises_its_input_and_keeps_the_layer_names():
    plain = Residual(3, 6, use_1x1conv=True, strides=2)
    pre = Residual(3, 6, use_1x1conv=True, strides=2, preact=True)
    assert (pre.bn1.num_features, pre.bn2.num_features) == (3, 6)  # bn1 sees the input channels
    assert (plain.bn1.num_features, plain.bn2.num_features) == (6, 6)
    assert list(pre.state_dict()) == list(plain.state_dict())
    assert all(c.bias is not None for c in (pre.conv1, pre.conv2, pre.conv3))  # the seed's convs, biases kept
    alias = PreActResidual(3, 6, use_1x1conv=True, strides=2)
    assert isinstance(alias, Residual) and alias.preact
    assert {k: v.shape for k, v in alias.state_dict().items()} == {k: v.shape for k, v in pre.state_dict().items()}


def test_plain_residual_state_dict_is_unchanged():
    keys = list(Residual(3, 6, use_1x1conv=True).state_dict())
    assert keys == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "conv3.weight", "conv3.bias",
                    *[f"bn{i}.{k}" for i in (1, 2)
                      for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]]
    assert not Residual(3, 3).preact


def test_preact_residual_computes_the_paper_formula():
    torch.manual_seed(0)
    X = torch.randn(2, 3, 6, 6)
    blk = Residual(3, 6, use_1x1conv=True, strides=2, preact=True).eval()
    pre = F.relu(blk.bn1(X))
    # The projection takes the pre-activated input (the paper's code, kuangliu's pytorch-cifar, timm).
    expected = blk.conv2(F.relu(blk.bn2(blk.conv1(pre)))) + blk.conv3(pre)
    torch.testing.assert_close(blk(X), expected)
    same = Residual(3, 3, preact=True).eval()
    expected = same.conv2(F.relu(same.bn2(same.conv1(F.relu(same.bn1(X)))))) + X  # identity: X itself
    torch.testing.assert_close(same(X), expected)


def test_preact_output_can_be_negative_the_plain_one_cannot():
    torch.manual_seed(0)
    X = torch.randn(4, 3, 6, 6)
    assert Residual(3, 3, preact=True)(X).min() < 0  # no ReLU after the addition
    assert Residual(3, 3)(X).min() >= 0


def test_resnet_block_passes_preact_on():
    blocks = resnet_block(64, 128, 2, preact=True)
    assert [b.preact for b in blocks] == [True, True]
    assert blocks[0].bn1.num_features == 64 and blocks[0].conv3 is not None and blocks[1].bn1.num_features == 128
    assert [b.preact for b in resnet_block(64, 64, 2, first_block=True)] == [False, False]


# --- d2l_preact_resnet18 -----------------------------------------------------------------------------

def test_d2l_preact_trace_at_224():
    """The seed's loop, run on the pre-activation net, prints its lines plus the final BN and ReLU."""
    net = d2l_preact_resnet18()
    X = torch.rand(size=(1, 1, 224, 224))
    lines = []
    for layer in net:
        X = layer(X)
        lines.append(f"{layer.__class__.__name__} output shape:\t {X.shape}")
    assert "\n".join(lines) == PREACT_TRACE_224


def test_d2l_preact_resnet18_structure():
    net = d2l_preact_resnet18()
    assert isinstance(net, nn.Sequential) and len(net) == 10
    assert [type(m).__name__ for m in net] == [
        "Sequential", "Sequential", "Sequential", "Sequential", "Sequential", "BatchNorm2d", "ReLU",
        "AdaptiveAvgPool2d", "Flatten", "Linear",
    ]
    assert all(b.preact for stage in list(net)[1:5] for b in stage)
    assert [name for name, _ in net.stages()] == ["b1", "b2", "b3", "b4", "b5", "final"]


def test_d2l_parameter_counts_by_hand():
    # d2l_resnet18 (1 channel, 10 classes; every conv has a bias):
    #   b1: 7*7*1*64 + 64 = 3,200, BN(64) 128                                         ->      3,328
    #   Residual(c, c):      2 * (9c^2 + c) + 2 * 2c
    #     c=64: 74,112; c=128: 295,680; c=256: 1,181,184; c=512: 4,721,664
    #   Residual(i, c, 1x1): 9ic + c + 9c^2 + c + ic + c + 2 * 2c (plain: bn1, bn2 both of c)
    #     (64,128): 230,272; (128,256): 919,296; (256,512): 3,673,600
    #   b2 = 2 * 74,112 = 148,224; b3 = 230,272 + 295,680 = 525,952;
    #   b4 = 919,296 + 1,181,184 = 2,100,480; b5 = 3,673,600 + 4,721,664 = 8,395,264
    #   Linear 512*10 + 10 = 5,130
    #   3,328 + 148,224 + 525,952 + 2,100,480 + 8,395,264 + 5,130 = 11,178,378
    assert count(d2l_resnet18()) == 11_178_378
    # d2l_preact_resnet18: the first block of b3..b5 normalises its input, so its bn1 has i channels:
    #   (64,128): 230,272 - 2*64 = 230,144; (128,256): 919,296 - 2*128 = 919,040; (256,512): 3,673,600 - 2*256 = 3,673,088
    #   b3 = 525,824; b4 = 2,100,224; b5 = 8,394,752; final BN(512): 1,024
    #   3,328 + 148,224 + 525,824 + 2,100,224 + 8,394,752 + 1,024 + 5,130 = 11,178,506
    #   (= 11,178,378 - 2*(64+128+256) + 1,024 = 11,178,378 + 128)
    assert count(d2l_preact_resnet18()) == 11_178_506
    assert count(d2l_preact_resnet18(in_channels=3, num_classes=100)) == 11_178_506 + 2 * 49 * 64 + 90 * 513


def test_d2l_preact_surface():
    torch.manual_seed(0)
    net = d2l_preact_resnet18().eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        feats = net.forward_features(x)
        assert feats.shape == (2, 512, 1, 1) and feats.min() >= 0  # after the final ReLU
        torch.testing.assert_close(net.forward_head(feats), net(x))
        assert net.forward_head(feats, pre_logits=True).shape == (2, 512)
    net.reset_classifier(4)
    assert net(x).shape == (2, 4) and net.num_classes == 4 and isinstance(net[9], nn.Linear)


# --- preact_resnet18 / 34 (torchvision's layout) -----------------------------------------------------

def test_preact_resnet_parameter_counts_by_hand():
    # preact_resnet18 at 3 channels, 1000 classes, imagenet stem: torchvision's resnet18 has 11,689,512,
    # and the convs and fc are the same; only the batch norms differ (2 parameters per channel):
    #   - the three downsample BNs go (the 1x1 conv sees normalised input): 128 + 256 + 512 = 896 channels
    #   - the first block's bn1 in layer2..4 normalises the input: 64 + 128 + 256 instead of
    #     128 + 256 + 512, 448 channels fewer
    #   + the final BN(512) before the pool
    #   11,689,512 - 2*896 - 2*448 + 2*512 = 11,689,512 - 1,664 = 11,687,848
    # ResNet-34 has the same four downsampling first blocks and one final BN: 21,797,672 - 1,664.
    with torch.device("meta"):
        assert count(create_model("preact_resnet18", in_channels=3, num_classes=1000)) == 11_687_848
        assert count(resnetlab.preact_resnet18()) == 11_687_848  # the defaults are torchvision's
        assert count(create_model("preact_resnet34")) == 21_796_008
        # Built up instead: stem 9,408 + 128; layer1 147,968; layer2 525,184; layer3 2,098,944;
        # layer4 8,392,192; final BN 1,024; fc 513,000. Sum: 11,687,848.
        model = create_model("preact_resnet18")
        parts = [model.conv1, model.bn1, model.layer1, model.layer2, model.layer3, model.layer4, model.final_bn, model.fc]
        assert [count(m) for m in parts] == [9_408, 128, 147_968, 525_184, 2_098_944, 8_392_192, 1_024, 513_000]


def test_preact_resnet_layout():
    model = create_model("preact_resnet18")
    first = model.layer2[0]
    assert isinstance(first, PreActBasicBlock) and first.bn1.num_features == 64 and first.bn2.num_features == 128
    assert len(first.downsample) == 1 and isinstance(first.downsample[0], nn.Conv2d)  # no batch norm
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))
    keys = set(model.state_dict())
    assert {"conv1.weight", "bn1.weight", "layer2.0.downsample.0.weight", "final_bn.running_var", "fc.weight"} <= keys
    assert "layer2.0.downsample.1.weight" not in keys
    assert [name for name, _ in model.stages()] == ["stem", "layer1", "layer2", "layer3", "layer4", "final"]
    # Plain ResNets keep their exact modules: no final norm.
    assert not hasattr(create_model("resnet18"), "final_bn")


def test_preact_basic_block_formula():
    torch.manual_seed(0)
    down = nn.Sequential(nn.Conv2d(4, 8, 1, stride=2, bias=False))
    blk = PreActBasicBlock(4, 8, stride=2, downsample=down).eval()
    x = torch.randn(2, 4, 6, 6)
    pre = F.relu(blk.bn1(x))
    expected = blk.conv2(F.relu(blk.bn2(blk.conv1(pre)))) + down(pre)
    torch.testing.assert_close(blk(x), expected)
    same = PreActBasicBlock(4, 4).eval()
    torch.testing.assert_close(same(x), same.conv2(F.relu(same.bn2(same.conv1(F.relu(same.bn1(x)))))) + x)


def test_preact_zero_init_residual_zeroes_the_last_conv():
    model = create_model("preact_resnet18", zero_init_residual=True)
    assert all(torch.all(b.conv2.weight == 0) for layer in [model.layer1, model.layer4] for b in layer)


def test_preact_small_stem_and_forward_features():
    model = create_model("preact_resnet18", in_channels=1, num_classes=10, stem="small").eval()
    with torch.no_grad():
        feats = model.forward_features(torch.rand(2, 1, 32, 32))
    assert feats.shape == (2, 512, 4, 4) and feats.min() >= 0  # after final_bn and final_relu


# --- the registry, training step, summary and Grad-CAM -----------------------------------------------

@pytest.mark.parametrize("name,channels,kwargs", [
    ("d2l_preact_resnet18", 1, {}),
    ("preact_resnet18", 3, {"stem": "small"}),
])
def test_create_model_forward_backward(name, channels, kwargs):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, **kwargs)
    out = model(torch.rand(2, channels, 32, 32))
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.logsumexp(dim=1).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_registry_entries():
    d2l, pre18, pre34 = (model_spec(n) for n in ("d2l_preact_resnet18", "preact_resnet18", "preact_resnet34"))
    assert (d2l.image_size, d2l.first_conv, d2l.classifier, d2l.stems) == (96, "0.0", "9", False)
    assert (pre18.image_size, pre18.first_conv, pre18.classifier, pre18.stems) == (224, "conv1", "fc", True)
    assert (pre34.image_size, pre34.first_conv, pre34.classifier, pre34.stems) == (224, "conv1", "fc", True)


def test_summary_of_the_preact_net():
    report = summary(d2l_preact_resnet18(), (1, 1, 224, 224), depth=1)
    assert report.trace == PREACT_TRACE_224.splitlines()
    assert report.total_params == 11_178_506
    assert [r.num_params for r in report.rows][5:] == [1_024, 0, 0, 0, 5_130]


def test_summary_command(capsys):
    from resnetlab.cli import main

    assert main(["summary", "preact_resnet18", "--input-size", "1,3,64,64", "--depth", "1"]) == 0
    out = capsys.readouterr().out
    assert "Total params: 11,687,848" in out and "final_bn" in out


def test_grad_cam_uses_the_final_activation():
    torch.manual_seed(0)
    net = d2l_preact_resnet18()
    x = torch.rand(1, 1, 128, 128)  # b5 and the final ReLU give 4x4 maps
    assert [o.name for o in stage_outputs(net, x)] == ["b1", "b2", "b3", "b4", "b5", "final"]
    assert default_stage(net, x) == "final"
    heat, logits = grad_cam(net, x)
    assert heat.shape == (1, 128, 128) and logits.shape == (1, 10)
    family = create_model("preact_resnet18", in_channels=1, stem="small")
    x = torch.rand(1, 1, 32, 32)
    assert default_stage(family, x) == "final"
    heat, _ = grad_cam(family, x)
    assert heat.shape == (1, 32, 32) and torch.isfinite(heat).all()


# --- the book's ResNeXtBlock ---------------------------------------------------------------------------

def test_resnext_block_book_example():
    blk = ResNeXtBlock(32, 16, 1)
    X = torch.randn(4, 32, 96, 96)
    assert blk(X).shape == torch.Size([4, 32, 96, 96])


def test_resnext_block_halves_with_the_shortcut_conv():
    blk = ResNeXtBlock(32, 16, 1, use_1x1conv=True, strides=2)
    assert blk(torch.randn(4, 32, 96, 96)).shape == torch.Size([4, 32, 48, 48])
    # Lazy input channels: 16 in, 64 out.
    assert ResNeXtBlock(64, 16, 0.5, use_1x1conv=True)(torch.randn(2, 16, 8, 8)).shape == (2, 64, 8, 8)


def test_resnext_groups_is_the_width_of_a_group():
    assert ResNeXtBlock(32, 16, 1).conv2.groups == 2  # bot_channels 32 // group width 16
    blk = ResNeXtBlock(64, 8, 0.5)  # bot_channels = int(round(64 * 0.5)) = 32, 32 // 8 = 4 groups
    blk(torch.randn(1, 64, 4, 4))
    assert blk.conv2.groups == 4 and blk.conv2.weight.shape == (32, 8, 3, 3)
    assert ResNeXtBlock(32, 16, 1).conv4 is None


def test_resnext_block_parameter_count_by_hand():
    blk = ResNeXtBlock(32, 16, 1)
    blk(torch.randn(1, 32, 4, 4))  # materialise the lazy layers
    # bot_channels = 32; conv1 1x1 32->32: 32*32 + 32 = 1,056; conv2 3x3, 2 groups of 16:
    # 32 * 16 * 9 + 32 = 4,640; conv3 1x1 32->32: 1,056; bn1..bn3: 3 * 2*32 = 192. Sum: 6,944.
    assert count(blk) == 6_944
    shortcut = ResNeXtBlock(32, 16, 1, use_1x1conv=True, strides=2)
    shortcut(torch.randn(1, 32, 4, 4))
    assert count(shortcut) == 6_944 + (32 * 32 + 32) + 2 * 32  # conv4 and bn4: 8,064


def test_resnext_block_formula():
    torch.manual_seed(0)
    blk = ResNeXtBlock(8, 4, 1, use_1x1conv=True, strides=2)
    X = torch.randn(2, 4, 6, 6)
    blk(X)
    blk.eval()
    Y = F.relu(blk.bn1(blk.conv1(X)))
    Y = F.relu(blk.bn2(blk.conv2(Y)))
    Y = blk.bn3(blk.conv3(Y))
    torch.testing.assert_close(blk(X), F.relu(Y + blk.bn4(blk.conv4(X))))
