"""The ResNet family: torchvision parameter counts and key names, the common model surface."""

import pytest
import torch

import resnetlab
from helpers import every_model
from resnetlab import ResNet, UnknownModelError, create_model, list_models, model_spec

TORCHVISION_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "resnext50_32x4d": 25_028_904,
    "wide_resnet50_2": 68_883_240,
    "resnext101_32x8d": 88_791_336,
    "resnext101_64x4d": 83_455_272,
    "wide_resnet101_2": 126_886_696,
}


def count(model):
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_every_builder():
    preact = ["d2l_preact_resnet18", "preact_resnet18", "preact_resnet34"]  # counted in test_preact_resnext.py
    assert list_models() == sorted(["d2l_resnet18", *preact, *TORCHVISION_PARAMS])


@pytest.mark.parametrize("name,expected", sorted(TORCHVISION_PARAMS.items()))
def test_parameter_counts_equal_torchvision(name, expected):
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = create_model(name, in_channels=3, num_classes=1000)
        assert count(model) == expected
        assert count(getattr(resnetlab, name)()) == expected  # the defaults are torchvision's


def test_d2l_resnet18_parameter_count():
    assert count(create_model("d2l_resnet18")) == 11_178_378


def test_torchvision_state_dict_keys():
    keys = set(create_model("resnet50").state_dict())
    for key in [
        "conv1.weight", "bn1.weight", "bn1.running_mean", "bn1.num_batches_tracked",
        "layer1.0.conv1.weight", "layer1.0.bn3.bias", "layer1.0.downsample.0.weight",
        "layer2.0.downsample.0.weight", "layer2.0.downsample.1.running_var",
        "layer4.2.conv3.weight", "fc.weight", "fc.bias",
    ]:
        assert key in keys, key
    assert not any(k.startswith(("stem.", "head.", "classifier.")) for k in keys)
    r18 = set(create_model("resnet18").state_dict())
    assert "layer1.0.downsample.0.weight" not in r18  # no shortcut conv where shapes already match
    assert "layer2.0.downsample.0.weight" in r18
    # ResNet-18 has 62 parameter tensors and 40 buffers in torchvision (3 per batch norm: 20 BNs).
    assert len(r18) == 62 + 60


def test_create_model_records_how_it_was_built():
    model = create_model("resnet18", in_channels=1, num_classes=7, stem="small")
    assert model.model_name == "resnet18"
    assert model.model_args == {"in_channels": 1, "num_classes": 7, "stem": "small"}
    assert (model.in_channels, model.num_classes, model.stem) == (1, 7, "small")


def test_unknown_model_names_the_valid_ones():
    with pytest.raises(UnknownModelError, match="unknown model 'resnet19'.*resnet18"):
        create_model("resnet19")


def test_unknown_stem_is_rejected():
    with pytest.raises(ValueError, match="unknown stem 'tiny'"):
        create_model("resnet18", stem="tiny")


def test_small_stem_keeps_resolution():
    model = create_model("resnet18", in_channels=1, num_classes=10, stem="small").eval()
    feats = model.forward_features(torch.rand(2, 1, 32, 32))
    assert feats.shape == (2, 512, 4, 4)  # 32 / 8: only layers 2-4 halve the size
    big = create_model("resnet18").eval()
    assert big.forward_features(torch.rand(1, 3, 64, 64)).shape == (1, 512, 2, 2)  # 64 / 32


def test_zero_init_residual():
    model = create_model("resnet50", zero_init_residual=True)
    assert all(torch.all(b.bn3.weight == 0) for layer in [model.layer1, model.layer4] for b in layer)
    model = create_model("resnet18", zero_init_residual=True)
    assert all(torch.all(b.bn2.weight == 0) for b in model.layer1)
    assert torch.all(create_model("resnet18").layer1[0].bn2.weight == 1)


def test_resnext_and_wide_widths():
    with torch.device("meta"):
        resnext, wide = create_model("resnext50_32x4d"), create_model("wide_resnet50_2")
    assert resnext.layer1[0].conv2.groups == 32 and resnext.layer1[0].conv2.out_channels == 128
    assert wide.layer1[0].conv2.out_channels == 128 and wide.layer1[0].conv3.out_channels == 256


def small_input(name):
    # Large enough that batch norm in training mode sees more than one value per channel.
    channels = 1 if name.startswith("d2l_") else 3  # the book's nets default to 1 channel
    return torch.rand(2, channels, 64, 64)


@pytest.mark.parametrize("name", every_model())
def test_forward_backward_every_model(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5)
    x = small_input(name)
    out = model(x)
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.logsumexp(dim=1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no finite gradient for {missing[:5]}"
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name", every_model())
def test_common_model_surface(name):
    model = create_model(name).eval()
    x = small_input(name)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.ndim == 4 and feats.shape[1] == model.num_features
        pooled = model.forward_head(feats, pre_logits=True)
        assert pooled.shape == (2, model.num_features)
        torch.testing.assert_close(model.forward_head(feats), model(x))
        model.reset_classifier(3)
        assert model(x).shape == (2, 3) and model.num_classes == 3


def test_resnet_rejects_wrong_layer_count():
    from resnetlab import BasicBlock

    with pytest.raises(ValueError, match="4 stage depths"):
        ResNet(BasicBlock, [2, 2, 2])


def test_registering_a_name_again_replaces_it_with_a_warning():
    from resnetlab.models import model_spec, register_model

    def tiny(**kwargs):
        return resnetlab.resnet18(**kwargs)

    original = model_spec("resnet18")
    try:
        with pytest.warns(UserWarning, match="model 'resnet18' was registered already; the new builder replaces it"):
            register_model("resnet18", image_size=32, first_conv="conv1", classifier="fc", stems=True)(tiny)
        assert model_spec("resnet18").builder is tiny and model_spec("resnet18").image_size == 32
    finally:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            register_model("resnet18", image_size=original.image_size, first_conv=original.first_conv,
                           classifier=original.classifier, stems=original.stems)(original.builder)
    assert model_spec("resnet18") == original


@pytest.mark.parametrize("name", list_models())
def test_the_registry_names_each_models_first_conv_and_classifier(name):
    spec = model_spec(name)
    with torch.device("meta"):
        model = create_model(name, in_channels=2, num_classes=7)
    modules = dict(model.named_modules())
    assert isinstance(modules[spec.first_conv], torch.nn.Conv2d) and modules[spec.first_conv].in_channels == 2
    assert isinstance(modules[spec.classifier], torch.nn.Linear) and modules[spec.classifier].out_features == 7


def test_a_model_registered_without_layer_names_has_them_found():
    import warnings

    from torch import nn

    from resnetlab.engine.initialize import freeze_backbone
    from resnetlab.models.transfer import first_conv_name, head_name
    from resnetlab.models import register_model

    class Tiny(nn.Sequential):
        def __init__(self, in_channels=1, num_classes=10):
            super().__init__(nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the test may run twice in one process
        register_model("test_tiny", image_size=8)(Tiny)
    model = create_model("test_tiny", num_classes=3)
    assert (first_conv_name(model), head_name(model)) == ("0", "3")
    assert freeze_backbone(model) == ["3.weight", "3.bias"]

