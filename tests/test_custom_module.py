"""Your own network through the same loop: ``resnetlab.train(model=net)``, resume, load and the one-line refusals."""

from __future__ import annotations

import copy
import os
import signal

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import resnetlab
from helpers import PLAIN, one_line_error
from resnetlab.engine import TrainConfig, fit, resume
from resnetlab.engine.step import Training
from resnetlab.errors import ResnetlabError, TrainingStopped

quiet = lambda line: None  # noqa: E731


def notes_net() -> nn.Sequential:
    """The learner's ``net``, built cell by cell as the notes build it (b1 ... b5, pool, flatten, linear)."""
    b1 = nn.Sequential(nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3), nn.BatchNorm2d(64), nn.ReLU(),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b2 = nn.Sequential(*resnetlab.resnet_block(64, 64, 2, first_block=True))
    b3 = nn.Sequential(*resnetlab.resnet_block(64, 128, 2))
    b4 = nn.Sequential(*resnetlab.resnet_block(128, 256, 2))
    b5 = nn.Sequential(*resnetlab.resnet_block(256, 512, 2))
    return nn.Sequential(b1, b2, b3, b4, b5, nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(512, 10))


class SmallNet(nn.Module):
    """A small network of the caller's own class, with lazy layers (as the book's ResNeXtBlock has)."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.LazyConv2d(8, 3, padding=1), nn.LazyBatchNorm2d(), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LazyLinear(classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def fields(tiny_data, out, **more):
    """A tiny fp32 run of 300 images at 28 px (no preset recipe, no time budget)."""
    return {**PLAIN, "data": str(tiny_data), "val_split": 100, "limit_train": 300, "limit_test": 100, "image_size": 28,
            "batch_size": 50, "epochs": 1, "lr": 0.05, "precision": "fp32", "out": str(out), **more}


def test_train_takes_the_notes_own_sequential_and_load_reads_it_back(tiny_data, tmp_path):
    torch.manual_seed(0)
    net = notes_net()
    initial = copy.deepcopy(net.state_dict())
    result = resnetlab.train(model=net, **fields(tiny_data, tmp_path / "run"))
    best = load_file(str(result.run_dir / "best.safetensors"))
    header = resnetlab.load(result.run_dir / "best.safetensors", model=notes_net()).header
    assert header.model == "custom:Sequential" and header.model_args == {}
    # The caller's net now holds the best weights (those the test accuracy is of), and it learned something.
    assert best.keys() == net.state_dict().keys()
    assert all(torch.equal(best[k], v) for k, v in net.state_dict().items())
    assert not torch.equal(initial["7.weight"], net.state_dict()["7.weight"])
    assert not net.training and result.test_acc is not None
    # Read back into a module built afresh, it predicts exactly what the trained net does.
    clf = resnetlab.load(result.run_dir / "best.safetensors", model=notes_net())
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        direct = net(clf.prepare(images)).softmax(1)
    assert torch.allclose(clf.probabilities(images), direct, atol=1e-6)
    assert [p.label for p in clf.predict(images)] == [clf.class_names[i] for i in direct.argmax(1).tolist()]
    # Grad-CAM reads the Sequential's parts before the pooling as the notes' stages b1 ... b5.
    assert clf.explain(images[:1], stage="b3").shape == (1, 28, 28)


def test_a_custom_run_stopped_mid_epoch_resumes_with_the_module_bit_for_bit(tiny_data, tmp_path, monkeypatch):
    def run(out, **more):
        torch.manual_seed(1)
        return TrainConfig(**fields(tiny_data, out, epochs=2, deterministic=True, save_every=2, **more)), SmallNet()

    config, net = run(tmp_path / "whole")
    fit(config, log=quiet, model=net)
    real_step = Training.train_step
    stop = {"at": 8}

    def step(self, x, y, global_step, stop_requested=False):
        if global_step == stop["at"]:  # the second epoch's third step: a scheduler's SIGTERM
            stop["at"] = None
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(self, x, y, global_step, stop_requested)

    monkeypatch.setattr(Training, "train_step", step)
    config, stopped_net = run(tmp_path / "stopped")
    with pytest.raises(TrainingStopped):
        fit(config, log=quiet, model=stopped_net)
    assert stop["at"] is None
    with pytest.raises(ResnetlabError, match=r"this run trains a SmallNet, not a Sequential"):
        resume(tmp_path / "stopped", log=quiet, model=nn.Sequential(nn.Flatten(), nn.LazyLinear(10)))

    class SmallNet2(SmallNet):  # noqa: N801 - the same class name, another network
        pass

    SmallNet2.__qualname__ = "SmallNet"  # recorded and named as the run's network is
    wider = SmallNet2()
    wider.features[0] = nn.LazyConv2d(16, 3, padding=1)
    with pytest.raises(ResnetlabError, match=r"the saved weights do not fit the SmallNet given .*; give the network the "
                                             r"run was started with"):
        resume(tmp_path / "stopped", log=quiet, model=wider)
    again = SmallNet()
    resnetlab.resume(tmp_path / "stopped", model=again)  # the library's own entry point
    a, b = load_file(str(tmp_path / "whole" / "last.safetensors")), load_file(str(tmp_path / "stopped" / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(x, y) for x, y in zip(net.state_dict().values(), again.state_dict().values()))


def test_what_needs_the_module_says_so_in_one_line(tiny_data, tmp_path, capsys):
    result = resnetlab.train(model=SmallNet(), **fields(tiny_data, tmp_path / "run"))
    weights = str(result.run_dir / "best.safetensors")
    for command in (["predict", weights, str(tmp_path / "x.png")], ["eval", weights], ["export", weights]):
        one_line_error(capsys, command, "holds the weights of a custom SmallNet", "resnetlab.load(", "model=net)")
    with pytest.raises(ResnetlabError, match="holds the weights of a custom SmallNet"):
        resnetlab.load(weights)
    # From Python, with the module, the file exports (and is checked against PyTorch there).
    from resnetlab.cli.export import export_checkpoint

    exported = export_checkpoint(weights, "torchscript", out=tmp_path / "net.pt", data=str(tiny_data), log=quiet,
                                 model=SmallNet())
    assert exported.is_file()
    one_line_error(capsys, ["train", "--config", str(result.run_dir / "config.json")],
                   "'custom:SmallNet' is a module built in Python")
    (result.run_dir / "results.json").unlink()  # as if it had stopped
    one_line_error(capsys, ["train", "--resume", str(result.run_dir)],
                   "this run trains a custom SmallNet built in Python", f"resnetlab.resume('{result.run_dir}', model=net)")
    with pytest.raises(ResnetlabError, match="names a module built in Python; pass the module"):
        fit(TrainConfig(**fields(tiny_data, tmp_path / "b", model="custom:SmallNet")), log=quiet)
    with pytest.raises(ResnetlabError, match="and a module were both given"):
        fit(TrainConfig(**fields(tiny_data, tmp_path / "c", model="resnet18")), log=quiet, model=SmallNet())


@pytest.mark.parametrize("module, needles", [
    (lambda: SmallNet(classes=5), ("model=SmallNet gives [2, 5]", "the data have 10 classes")),
    (lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.LazyLinear(10)),
     ("model=Sequential fails on this run's input, a batch of shape [2, 1, 28, 28]", "--image-size 28")),
])
def test_a_module_that_does_not_fit_the_data_is_refused_before_training(module, needles, tiny_data, tmp_path):
    with pytest.raises(ResnetlabError) as error:
        resnetlab.train(model=module(), **fields(tiny_data, tmp_path / "run"))
    assert all(needle in str(error.value) for needle in needles), str(error.value)
    assert "\n" not in str(error.value) and not (tmp_path / "run").exists()


def test_a_module_trains_exactly_as_the_registered_model_it_equals(tiny_data, tmp_path):
    """The custom path is the registry path: the same network with the same initial weights ends bit for bit the same."""
    from resnetlab.util.runtime import seed_everything

    run = dict(fields(tiny_data, tmp_path, deterministic=True), preset="cpu", epochs=1)
    registered = resnetlab.train(**{**run, "model": "d2l_resnet18", "out": str(tmp_path / "registered")})
    seed_everything(0)  # as the run seeds itself before it builds a registered model
    net = resnetlab.d2l_resnet18()
    custom = resnetlab.train(**{**run, "model": net, "out": str(tmp_path / "custom")})
    a = load_file(str(registered.run_dir / "last.safetensors"))
    b = load_file(str(custom.run_dir / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    untimed = lambda history: [{k: v for k, v in row.items() if k not in ("examples_per_sec", "seconds")}  # noqa: E731
                               for row in history]
    assert untimed(registered.history) == untimed(custom.history)


def test_the_callers_module_keeps_its_dtype_and_its_submodules_modes(tiny_data, tmp_path):
    net = SmallNet().double()
    net(torch.zeros(1, 1, 28, 28, dtype=torch.float64))  # shapes for the lazy layers
    net.features[1].eval()  # the caller froze this batch norm's statistics
    result = resnetlab.train(model=net, **fields(tiny_data, tmp_path / "run"))
    assert all(p.dtype == torch.float64 for p in net.parameters())  # the run trained a float32 copy
    best = load_file(str(result.run_dir / "best.safetensors"))
    assert all(torch.equal(best[k].double(), v) for k, v in net.state_dict().items() if v.is_floating_point())


def test_a_module_that_answers_otherwise_when_training_is_refused(tiny_data, tmp_path):
    class WithAuxiliary(SmallNet):
        def forward(self, x):
            out = super().forward(x)
            return (out, out) if self.training else out  # as Inception's auxiliary head does

    with pytest.raises(ResnetlabError, match=r"gives a tuple in training mode for a batch of shape \[2, 1, 28, 28\]"):
        resnetlab.train(model=WithAuxiliary(), **fields(tiny_data, tmp_path / "run"))
