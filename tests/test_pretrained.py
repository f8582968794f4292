"""ImageNet weights by name (``--init imagenet``): the download path against a server on 127.0.0.1 (a good file,
a corrupt one, a truncated one, the mirror variable), the offline paths, the gray adaptation, and the
normalisation the weights travel with (the header, predict and ONNX)."""

from __future__ import annotations

import hashlib
import http.server
import json
import socket
import threading
from pathlib import Path

import pytest
import torch

import resnetlab
from helpers import one_line_error, write_shape_folder
from resnetlab.cli import main
from resnetlab.errors import ResnetlabError
from resnetlab.models import create_model, list_models
from resnetlab.models import pretrained
from resnetlab.models.pretrained import (IMAGENET_GRAY_MEAN, IMAGENET_GRAY_STD, IMAGENET_WEIGHTS, PublishedWeights,
                                         imagenet_state_dict)
from resnetlab.models.transfer import fit_state_dict

REAL_NAME = IMAGENET_WEIGHTS["resnet18"]["IMAGENET1K_V1"].file  # resnet18-f37072fd.pth


@pytest.fixture(autouse=True)
def private_places(tmp_path, monkeypatch):
    """PyTorch's cache and ours in the test's folder; no mirror unless a test sets one."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("RESNETLAB_WEIGHTS_URL", raising=False)


@pytest.fixture(scope="module")
def imagenet_like(tmp_path_factory) -> tuple[bytes, dict[str, torch.Tensor]]:
    """A torchvision-layout resnet18 (3 channels, 1,000 classes) saved as torchvision saves it: its bytes and tensors."""
    torch.manual_seed(0)
    state = create_model("resnet18", in_channels=3, num_classes=1000).state_dict()
    path = tmp_path_factory.mktemp("weights") / "r18.pth"
    torch.save(state, path)
    return path.read_bytes(), state


def named_for(data: bytes) -> PublishedWeights:
    """The table entry a file of these bytes would have: torchvision's naming, the SHA-256 prefix after the dash."""
    return PublishedWeights(f"resnet18-{hashlib.sha256(data).hexdigest()[:8]}.pth", 69.758)


class Server:
    """A file server on 127.0.0.1: ``files`` by name; a name in ``truncate`` is cut at half while promising it all."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.truncate: set[str] = set()
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the standard library's name
                name = self.path.rsplit("/", 1)[-1]
                outer.requests.append(self.path)
                data = outer.files.get(name)
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2] if name in outer.truncate else data)
                if name in outer.truncate:
                    self.close_connection = True

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/mirror/models/"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server(monkeypatch):
    served = Server()
    monkeypatch.setenv("RESNETLAB_WEIGHTS_URL", served.url)
    yield served
    served.stop()


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on: a connection to it is refused, as without a network."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cache_files(tmp_path: Path) -> list[str]:
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_every_published_name_is_a_registry_model_and_the_table_is_torchvisions():
    assert set(IMAGENET_WEIGHTS) <= set(list_models())
    assert {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d",
            "wide_resnet50_2", "wide_resnet101_2"} <= set(IMAGENET_WEIGHTS)
    for versions in IMAGENET_WEIGHTS.values():
        assert "IMAGENET1K_V1" in versions
        for weights in versions.values():
            assert len(weights.hash_prefix) == 8 and int(weights.hash_prefix, 16) >= 0
    assert IMAGENET_WEIGHTS["resnet50"]["IMAGENET1K_V2"].file == "resnet50-11ad3fa6.pth"


def test_a_good_download_through_the_mirror_is_cached_and_then_used_offline(server, imagenet_like, tmp_path,
                                                                               monkeypatch):
    data, state = imagenet_like
    entry = named_for(data)
    monkeypatch.setitem(IMAGENET_WEIGHTS, "resnet18", {"IMAGENET1K_V1": entry})
    server.files[entry.file] = data
    got = imagenet_state_dict("resnet18", progress=False)
    assert server.requests == [f"/mirror/models/{entry.file}"]  # the mirror variable's base, the table's name
    assert got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state)
    assert cache_files(tmp_path) == [entry.file]
    # Offline now: the cached file is used, nothing is asked of the network.
    monkeypatch.setenv("RESNETLAB_WEIGHTS_URL", f"http://127.0.0.1:{closed_port()}/")
    again = imagenet_state_dict("resnet18", progress=False)
    assert torch.equal(again["fc.weight"], state["fc.weight"]) and len(server.requests) == 1


@pytest.mark.parametrize("fault", ["corrupt", "truncated"])
def test_a_corrupt_or_truncated_download_is_refused_and_leaves_nothing(fault, server, imagenet_like, tmp_path,
                                                                       monkeypatch):
    data, _ = imagenet_like
    entry = named_for(data)
    monkeypatch.setitem(IMAGENET_WEIGHTS, "resnet18", {"IMAGENET1K_V1": entry})
    if fault == "corrupt":
        server.files[entry.file] = data[:1000] + bytes([data[1000] ^ 0xFF]) + data[1001:]
    else:
        server.files[entry.file] = data
        server.truncate.add(entry.file)
    with pytest.raises(ResnetlabError) as caught:
        imagenet_state_dict("resnet18", progress=False)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("--init imagenet: ")
    assert server.url + entry.file in message and "--init FILE" in message
    if fault == "corrupt":
        assert "damaged or truncated" in message and entry.hash_prefix in message
    assert cache_files(tmp_path) == []  # no file, no partial file


def test_offline_without_the_file_says_the_url_the_cache_path_and_init_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RESNETLAB_WEIGHTS_URL", f"http://127.0.0.1:{closed_port()}/models")
    with pytest.raises(ResnetlabError) as caught:
        imagenet_state_dict("resnet18", progress=False)
    message = str(caught.value)
    assert f"/models/{REAL_NAME}" in message and str(tmp_path / "torch" / "hub" / "checkpoints" / REAL_NAME) in message
    assert "--init FILE" in message and cache_files(tmp_path) == []


@pytest.mark.parametrize("base", ["not a url at all", "http://[::1"])
def test_a_mirror_variable_that_is_not_a_url_is_one_line(base, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RESNETLAB_WEIGHTS_URL", base)
    root = write_shape_folder(tmp_path / "shapes", per_class=4, sizes=(16,))
    one_line_error(capsys, ["train", "--data", str(root), "--init", "imagenet", "--epochs", "1", "--time-budget", "0"],
                   f"RESNETLAB_WEIGHTS_URL={base!r} is not a URL", "https://")
    assert cache_files(tmp_path) == []


def test_a_damaged_cached_file_is_one_line(tmp_path):
    cached = tmp_path / "torch" / "hub" / "checkpoints" / REAL_NAME
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ResnetlabError, match=f"the cached weights {cached} cannot be read.*delete the file"):
        imagenet_state_dict("resnet18", progress=False)


def test_models_without_published_weights_say_what_to_use():
    with pytest.raises(ResnetlabError, match="d2l_resnet18 has no published ImageNet weights.*--model resnet18"):
        pretrained.published("d2l_resnet18")
    with pytest.raises(ResnetlabError, match="no IMAGENET1K_V2 weights for resnet18.*--init imagenet"):
        pretrained.published("resnet18", "imagenet-v2")


def test_a_gray_image_gives_what_the_rgb_network_gives_on_it_in_three_channels(imagenet_like):
    _, state = imagenet_like
    rgb = create_model("resnet18", in_channels=3, num_classes=1000)
    rgb.load_state_dict(state)
    gray = create_model("resnet18", in_channels=1, num_classes=1000)
    report = fit_state_dict(gray, state, "imagenet-like")
    assert report.adapted == [("conv1.weight", "3 -> 1 input channels, kernels summed")] and not report.reinitialised
    x = torch.randn(4, 1, 64, 64)  # a standardised gray batch
    with torch.no_grad():
        assert torch.allclose(gray.eval()(x), rgb.eval()(x.repeat(1, 3, 1, 1)), atol=1e-4)


def test_create_model_pretrained_reads_the_cache(imagenet_like, tmp_path):
    _, state = imagenet_like
    cached = tmp_path / "torch" / "hub" / "checkpoints" / REAL_NAME
    cached.parent.mkdir(parents=True)
    # As if torchvision had fetched it before (a cached file is not hashed again), saved by an older PyTorch that
    # wrote no num_batches_tracked counters.
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, cached)
    model = create_model("resnet18", pretrained=True, num_classes=5, in_channels=1)
    assert torch.equal(model.layer3[0].conv1.weight, state["layer3.0.conv1.weight"])
    assert torch.allclose(model.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))
    assert model.fc.weight.shape == (5, 512) and "pretrained" not in model.model_args
    hub = torch.hub.load(str(Path(__file__).resolve().parents[1]), "resnet18", source="local", trust_repo=True,
                         pretrained=True)
    assert torch.equal(hub.fc.weight, state["fc.weight"])


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*light background")  # random pixels, unlike the training images
def test_train_on_a_folder_with_imagenet_weights_and_use_the_model(imagenet_like, tmp_path, capsys, monkeypatch):
    _, state = imagenet_like
    cached = tmp_path / "torch" / "hub" / "checkpoints" / REAL_NAME
    cached.parent.mkdir(parents=True)
    torch.save(state, cached)
    monkeypatch.setenv("RESNETLAB_WEIGHTS_URL", f"http://127.0.0.1:{closed_port()}/")  # no network at all
    root = write_shape_folder(tmp_path / "shapes", per_class=8, layout="split", sizes=(32,))
    out = tmp_path / "run"
    assert main(["train", "--data", str(root), "--init", "imagenet", "--out", str(out), "--epochs", "1",
                 "--batch-size", "8", "--channels", "1", "--time-budget", "0", "--precision", "fp32"]) == 0
    printed = capsys.readouterr().out
    assert f"--init imagenet: resnet18's ImageNet weights ({REAL_NAME}, top-1 69.8% on ImageNet)" in printed
    assert "classifier is replaced by a new one for the 3 classes here" in printed
    assert "adapted" in printed and "3 -> 1 input channels, kernels summed" in printed
    header = resnetlab.weights.read_header(out / "best.safetensors")
    assert header.preprocess.mean == IMAGENET_GRAY_MEAN and header.preprocess.std == IMAGENET_GRAY_STD
    assert header.model_args["stem"] == "imagenet"
    # predict applies the header's normalisation (the images are at the model's size: nothing is resized).
    classifier = resnetlab.load(out / "best.safetensors")
    images = torch.randint(0, 256, (3, 1, 32, 32), dtype=torch.uint8)
    assert header.preprocess.size == 32
    expected = ((images.float() / 255) - IMAGENET_GRAY_MEAN[0]) / IMAGENET_GRAY_STD[0]
    assert torch.allclose(header.preprocess(images), expected, atol=1e-6)
    with torch.no_grad():
        want = torch.softmax(classifier.model(expected), 1)
    assert torch.allclose(classifier.probabilities(images), want, atol=1e-5)
    # ... and so does the ONNX graph, whose metadata says so.
    onnx = pytest.importorskip("onnx")
    assert main(["export", str(out / "best.safetensors"), "--out", str(tmp_path / "m.onnx")]) == 0
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert json.loads(meta["normalization"]) == {"mean": list(IMAGENET_GRAY_MEAN), "std": list(IMAGENET_GRAY_STD)}


def test_init_imagenet_offline_without_the_file_is_one_line_and_leaves_no_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RESNETLAB_WEIGHTS_URL", f"http://127.0.0.1:{closed_port()}/")
    root = write_shape_folder(tmp_path / "shapes", per_class=4, sizes=(16,))
    one_line_error(capsys, ["train", "--data", str(root), "--init", "imagenet", "--out", str(tmp_path / "run"),
                            "--epochs", "1", "--time-budget", "0"],
                   "--init imagenet: could not download resnet18's ImageNet weights", REAL_NAME, "--init FILE")
    assert not (tmp_path / "run").exists()
    one_line_error(capsys, ["train", "--data", str(root), "--model", "d2l_resnet18", "--init", "imagenet",
                            "--epochs", "1", "--time-budget", "0"], "d2l_resnet18 has no published ImageNet weights")


def test_the_folder_preset_says_its_fine_tuning_recipe_and_a_slower_backbone_can_be_asked_for(tmp_path, capsys):
    from resnetlab.config import RunConfig, TrainConfig
    from resnetlab.config.rules import FINE_TUNE_BACKBONE_LR_SCALE
    from resnetlab.engine.schedule import make_optimizer

    torch.save(create_model("resnet18", in_channels=3, num_classes=1000).state_dict(), tmp_path / "source.pth")
    root = write_shape_folder(tmp_path / "shapes", per_class=4, sizes=(32,))  # 32 px: the ImageNet stem, as the file's
    out = tmp_path / "run"
    assert main(["train", "--data", str(root), "--init", str(tmp_path / "source.pth"), "--out", str(out),
                 "--epochs", "1", "--time-budget", "0", "--precision", "fp32", "--no-tensorboard"]) == 0
    printed = capsys.readouterr().out
    assert f"fine-tuning recipe (--init {tmp_path / 'source.pth'}): every layer at the folder recipe's rate" in printed
    config = RunConfig.from_given(TrainConfig.from_dict(json.loads((out / "config.json").read_text())))
    assert config.backbone_lr_scale == FINE_TUNE_BACKBONE_LR_SCALE == 1.0
    # Asked for, the backbone learns at its share of the rate, the head at the full rate; nothing is said then.
    assert main(["train", "--data", str(root), "--init", str(tmp_path / "source.pth"), "--out", str(tmp_path / "slow"),
                 "--backbone-lr-scale", "0.1", "--epochs", "1", "--time-budget", "0", "--no-tensorboard"]) == 0
    assert main(["train", "--data", str(root), "--out", str(tmp_path / "scratch"), "--epochs", "1", "--time-budget", "0",
                 "--no-tensorboard"]) == 0
    assert "fine-tuning recipe" not in capsys.readouterr().out
    slow = RunConfig.from_given(TrainConfig.from_dict(json.loads((tmp_path / "slow" / "config.json").read_text())))
    assert slow.backbone_lr_scale == 0.1
    assert json.loads((tmp_path / "scratch" / "config.json").read_text())["backbone_lr_scale"] == 1.0
    model = create_model("resnet18", num_classes=3)
    rates = {id(p): g["lr"] for g in make_optimizer(slow, model).param_groups for p in g["params"]}
    assert rates[id(model.fc.weight)] == slow.lr and rates[id(model.fc.bias)] == slow.lr
    assert rates[id(model.conv1.weight)] == pytest.approx(slow.lr * 0.1)
    assert rates[id(model.layer4[1].bn2.bias)] == pytest.approx(slow.lr * 0.1)
    assert len(rates) == sum(1 for _ in model.parameters())  # every parameter learns, once


@pytest.mark.parametrize("side, file_stem, size_stem", [(12, "imagenet", "small"), (32, "small", "imagenet")])
def test_a_weight_files_stem_decides_a_stem_left_to_the_data(side, file_stem, size_stem, tmp_path, capsys):
    # On the CPU the folder rule gives images of 16 px or less the small stem (3x3 conv1), larger ones the ImageNet
    # stem (7x7): a file trained with the other stem fits only that one, so its conv1 decides, and the run says so.
    source = tmp_path / "source.pth"
    torch.save(create_model("resnet18", in_channels=3, num_classes=1000, stem=file_stem).state_dict(), source)
    root = write_shape_folder(tmp_path / "shapes", per_class=4, sizes=(side,))
    out = tmp_path / "run"
    assert main(["train", "--data", str(root), "--init", str(source), "--out", str(out), "--epochs", "1",
                 "--time-budget", "0", "--no-tensorboard"]) == 0
    printed = capsys.readouterr().out
    assert (f"--init {source}: its first convolution is the {file_stem} stem's, so the {file_stem} stem "
            f"(at {side} px the {size_stem} stem would have been chosen)") in printed
    assert json.loads((out / "config.json").read_text())["model_args"] == {"stem": file_stem}
    # A stem the user gave is theirs: the file must fit it, and a misfit is one line.
    one_line_error(capsys, ["train", "--data", str(root), "--init", str(source), "--model-args",
                            json.dumps({"stem": size_stem}), "--epochs", "1", "--time-budget", "0"], str(source))
