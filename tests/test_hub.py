"""torch.hub: the repository's hubconf.py builds every registry model and loads a weights file back (source="local")."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import resnetlab
from helpers import every_model

REPO = Path(__file__).resolve().parents[1]


def load(name, **kwargs):
    return torch.hub.load(str(REPO), name, source="local", trust_repo=True, **kwargs)


@pytest.mark.parametrize("name", every_model())
def test_every_registry_name_loads_through_torch_hub(name):
    model = load(name, num_classes=7)
    reference = resnetlab.create_model(name, num_classes=7)
    assert type(model) is type(reference) and model.model_name == name
    assert model.state_dict().keys() == reference.state_dict().keys()
    size = resnetlab.model_spec(name).image_size
    channels = model.model_args.get("in_channels", 1 if name.startswith("d2l") else 3)
    assert model.eval()(torch.rand(1, channels, size, size)).shape == (1, 7)


def test_hub_entries_are_the_registry_and_each_says_what_it_is():
    spec = importlib.util.spec_from_file_location("hubconf", REPO / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    entries = {n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith("_")}
    assert entries == {*resnetlab.list_models(), "from_weights", "classifier"}
    for name in entries:  # what torch.hub.help(repo, name) prints
        assert getattr(hubconf, name).__doc__.strip(), name
    assert "resnetlab.create_model('resnet50'" in hubconf.resnet50.__doc__


def test_a_weights_file_loads_through_torch_hub_ready_for_inference(ckpt):
    model = load("from_weights", path=str(ckpt))
    clf = resnetlab.load(ckpt)
    assert not model.training and model.class_names == clf.class_names
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        expected = clf.model(clf.preprocess(images))
        assert torch.equal(model(model.preprocess(images)), expected)
    assert isinstance(load("classifier", path=str(ckpt)), resnetlab.Classifier)
