"""Your own images: class-folder data sets, their cache, --init from our and torchvision's weights, --freeze-backbone."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

import resnetlab
import resnetlab.data.folder_cache as cache_module
from helpers import SHAPES, draw_shape, one_line_error, read_folder, write_shape_folder
from resnetlab.cli import main
from resnetlab.data.folder import is_class_folder
from resnetlab.engine import TrainConfig
from resnetlab.weights import Preprocess, WeightsHeader, save_weights
from resnetlab.engine.initialize import load_initial_weights, read_state_dict
from resnetlab.engine.initialize import build_model
from resnetlab.config import with_base_defaults
from resnetlab.errors import ResnetlabError
from resnetlab.models import create_model


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Each test gets its own cache folder (and subprocesses inherit it)."""
    monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def shapes_split(tmp_path_factory):
    return write_shape_folder(tmp_path_factory.mktemp("shapes") / "data", per_class=96, layout="split")


def test_single_level_folder_is_split_stratified(tmp_path):
    root = write_shape_folder(tmp_path / "d", per_class=20, sizes=(30, 32, 40))
    assert is_class_folder(root) and not is_class_folder(tmp_path / "absent")
    data = read_folder(root, val_fraction=0.25, seed=1)
    assert data.test is None and data.train.class_names == SHAPES
    assert data.train.images.shape[1:] == (3, 32, 32)  # RGB as some images are; the median side, 32
    assert torch.bincount(data.val.labels).tolist() == [5, 5, 5]  # a quarter of each class
    assert torch.bincount(data.train.labels).tolist() == [15, 15, 15]
    again = read_folder(root, val_fraction=0.25, seed=1)
    assert torch.equal(again.val.images, data.val.images)  # seeded
    gray = read_folder(root, channels=1, image_size=24)
    assert gray.train.images.shape[1:] == (1, 24, 24)


@pytest.mark.slow
def test_shapes_train_to_high_accuracy_and_travel_to_eval_and_predict(shapes_split, tmp_path, capsys):
    out = tmp_path / "run"
    # 16 px keeps it to seconds on two cores; AdamW learns these shapes in a few dozen steps.
    argv = ["train", "--data", str(shapes_split), "--out", str(out), "--epochs", "6", "--batch-size", "32",
            "--image-size", "16", "--optimizer", "adamw", "--lr", "0.02", "--momentum", "0", "--no-nesterov",
            "--precision", "fp32", "--time-budget", "0"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "no --preset given: using 'folder' (class folders)"
    assert lines[1].startswith("288 images of 16 px: resnet18 (small stem) at 16 px, batch 32, lr 0.02, 6 epochs")
    assert lines[1].endswith("flip on (--no-flip for digits or text)")
    config = json.loads((out / "config.json").read_text())
    assert config["model_args"] == {"stem": "small"} and config["image_size"] == 16  # resolved and recorded
    results = json.loads((out / "results.json").read_text())
    assert results["best_val_acc"] >= 0.9 and results["test_acc"] >= 0.9, results

    clf = resnetlab.load(out / "best.safetensors")
    assert clf.class_names == list(SHAPES) and clf.channels == 3
    assert main(["eval", str(out / "best.safetensors"), "--out", str(tmp_path / "eval")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"test acc {results['test_acc']:.4f}"
    # A new drawing, at another size, is recognised.
    rng = __import__("numpy").random.default_rng(99)
    pictures = []
    for kind in SHAPES:
        path = tmp_path / f"new-{kind}.png"
        draw_shape(kind, 64, rng, rgb=True).save(path)
        pictures.append(str(path))
    assert main(["predict", str(out / "best.safetensors"), *pictures, "--format", "json", "--top-k", "1"]) == 0
    found = [r["top"][0]["class"] for r in json.loads(capsys.readouterr().out)]
    assert sum(f == k for f, k in zip(found, SHAPES)) >= 2, found


def test_bad_files_are_listed_or_refused(tmp_path, capsys):
    root = write_shape_folder(tmp_path / "d", per_class=6)
    (root / "circle" / "notes.txt").write_text("hello")
    good = (root / "square" / "square000.png").read_bytes()
    (root / "square" / "cut.png").write_bytes(good[: len(good) // 2])  # a truncated PNG
    warnings = []
    data = read_folder(root, warn=warnings.append)
    assert len(data.train) + len(data.val) == 18
    assert len(warnings) == 1 and warnings[0].startswith("warning: skipped 2 file(s)")
    assert "notes.txt (not an image Pillow can read" in warnings[0] and "cut.png" in warnings[0]
    out = tmp_path / "run"
    one_line_error(capsys, ["train", "--data", str(root), "--out", str(out), "--strict", "--epochs", "1"],
                   "--strict: 2 file(s)", "notes.txt")
    assert not out.exists()


def test_empty_class_too_few_classes_no_images(tmp_path, capsys):
    root = write_shape_folder(tmp_path / "a", per_class=4)
    (root / "empty").mkdir()
    one_line_error(capsys, ["train", "--data", str(root), "--epochs", "1"], "empty", "hold no images")
    one_class = write_shape_folder(tmp_path / "b", per_class=4, classes=("circle",))
    one_line_error(capsys, ["train", "--data", str(one_class), "--epochs", "1"], "at least two")
    for name in ("x", "y"):
        (tmp_path / "c" / name).mkdir(parents=True)
        (tmp_path / "c" / name / "readme.txt").write_text("no pictures here")
    one_line_error(capsys, ["train", "--data", str(tmp_path / "c"), "--epochs", "1"], "no images found")


@pytest.mark.parametrize("split", ["val", "test"])
def test_an_empty_val_or_test_folder_is_refused_in_training_and_eval(split, tmp_path, capsys):
    root = write_shape_folder(tmp_path / "d", per_class=6, layout="split", sizes=(16,))
    # A checkpoint trained on the whole folder, then the split emptied (its class folders stay).
    out = tmp_path / "run"
    assert main(["train", "--data", str(root), "--out", str(out), "--epochs", "1", "--batch-size", "6",
                 "--image-size", "16", "--precision", "fp32", "--time-budget", "0"]) == 0
    for image in (root / split).rglob("*.png"):
        image.unlink()
    capsys.readouterr()
    one_line_error(capsys, ["train", "--data", str(root), "--out", str(tmp_path / "again"), "--epochs", "1"],
                   f"{split}/ holds no readable images", f"remove {split}/")
    assert not (tmp_path / "again").exists()
    one_line_error(capsys, ["eval", str(out / "best.safetensors"), "--out", str(tmp_path / "e")],
                   f"{split}/ holds no readable images")


def test_cache_is_reused_and_rebuilt_when_a_file_changes(tmp_path, monkeypatch):
    root = write_shape_folder(tmp_path / "d", per_class=6)
    first = read_folder(root, seed=0)
    assert len(_caches(tmp_path)) == 1
    decoded = []
    real = cache_module._decode
    monkeypatch.setattr(cache_module, "_decode", lambda *a: decoded.append(a) or real(*a))
    second = read_folder(root, seed=0)
    assert decoded == [] and torch.equal(first.train.images, second.train.images)  # from the cache
    explicit = read_folder(root, seed=0, image_size=32, channels=3)  # as eval asks, by number: the same file
    assert decoded == [] and torch.equal(first.train.images, explicit.train.images)
    assert len(_caches(tmp_path)) == 1
    path = root / "circle" / "circle000.png"
    draw_shape("square", 32, __import__("numpy").random.default_rng(5), rgb=False).save(path)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    third = read_folder(root, seed=0)
    assert len(decoded) == 18  # rebuilt
    assert len(_caches(tmp_path)) == 1  # the earlier listing's cache removed
    assert not torch.equal(first.train.images, third.train.images) or not torch.equal(first.val.images, third.val.images)


def _caches(tmp_path):
    """The finished cache folders (temporary ones and lock files start with a dot)."""
    return [p for p in (tmp_path / "cache").iterdir() if p.is_dir() and not p.name.startswith(".")]


def _tiny_fmnist_checkpoint(path):
    model = create_model("resnet18", in_channels=1, num_classes=10, stem="small")
    save_weights(path, model.state_dict(), WeightsHeader("resnet18", model.model_args, [str(i) for i in range(10)],
                                                         Preprocess(channels=1, size=28)))
    return model


def test_init_from_our_checkpoint_with_other_classes_and_channels(tmp_path, capsys):
    source = _tiny_fmnist_checkpoint(tmp_path / "fmnist.safetensors")
    config = with_base_defaults(TrainConfig(model="resnet18", model_args={"stem": "small"}, init=str(tmp_path / "fmnist.safetensors")))
    lines = []
    model = build_model(config, in_channels=3, num_classes=3, log=lines.append)
    table = lines[0].splitlines()
    assert table[0] == f"initial weights from {tmp_path / 'fmnist.safetensors'}:"
    assert table[2].split()[:2] == ["loaded", str(len(model.state_dict()) - 3)]
    assert table[3].split()[:3] == ["adapted", "1", "conv1.weight"] and "1 -> 3 input channels" in table[3]
    assert table[4].split()[:2] == ["re-initialised", "2"] and "fc.weight (10 -> 3 classes)" in table[4]
    assert table[5].split() == ["ignored", "0", "-"]
    src = source.state_dict()
    assert torch.equal(model.state_dict()["layer3.1.conv2.weight"], src["layer3.1.conv2.weight"])
    assert torch.allclose(model.conv1.weight, src["conv1.weight"].repeat(1, 3, 1, 1) / 3)


def test_init_from_a_torchvision_state_dict(tmp_path):
    # torchvision's layout: our resnet18 for 3 channels and 1000 classes, saved as DDP would (module. prefix).
    tv = create_model("resnet18", in_channels=3, num_classes=1000)
    torch.save({"module." + k: v for k, v in tv.state_dict().items()}, tmp_path / "resnet18.pth")
    model = create_model("resnet18", in_channels=1, num_classes=5)
    report = load_initial_weights(model, tmp_path / "resnet18.pth")
    assert len(report.loaded) == len(tv.state_dict()) - 3
    assert report.adapted == [("conv1.weight", "3 -> 1 input channels, kernels summed")]
    assert report.reinitialised == [("fc.weight", "1000 -> 5 classes"), ("fc.bias", "1000 -> 5 classes")]
    assert report.ignored == []
    assert torch.allclose(model.conv1.weight, tv.conv1.weight.sum(1, keepdim=True))
    assert torch.equal(model.layer4[1].bn2.running_var, tv.layer4[1].bn2.running_var)
    lines = report.table().splitlines()
    assert [line.split()[0] for line in lines[2:]] == ["loaded", "adapted", "re-initialised", "ignored"]


def test_init_mismatch_is_an_error_unless_non_strict(tmp_path, capsys):
    torch.save(create_model("resnet50", num_classes=10, in_channels=1).state_dict(), tmp_path / "r50.pth")
    model = create_model("resnet18", in_channels=1, num_classes=10)
    with pytest.raises(ResnetlabError, match="does not fit resnet18: .*has shape.*--init-non-strict"):
        load_initial_weights(model, tmp_path / "r50.pth")
    report = load_initial_weights(model, tmp_path / "r50.pth", non_strict=True)
    assert report.reinitialised and report.ignored and "conv1.weight" in report.loaded


class _Payload:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_init_refuses_a_hostile_pth(tmp_path, capsys, tiny_data):
    evidence = tmp_path / "pwned"
    state = create_model("resnet18", num_classes=10, in_channels=1).state_dict()
    torch.save({"state_dict": state, "extra": _Payload(evidence)}, tmp_path / "evil.pth")
    with pytest.raises(ResnetlabError, match="refused to load it"):
        read_state_dict(tmp_path / "evil.pth")
    one_line_error(capsys, ["train", "--data", str(tiny_data), "--init", str(tmp_path / "evil.pth"), "--epochs", "1",
                            "--model", "resnet18", "--val-split", "100", "--batch-size", "50", "--out", str(tmp_path / "r")],
                   "refused to load it")
    assert not evidence.exists()
    one_line_error(capsys, ["train", "--init", str(tmp_path / "absent.pth")], "--init", "no such file")


def test_init_names_a_value_that_is_not_a_tensor(tmp_path, capsys, tiny_data):
    # Plain containers pass weights_only; a state dict must still hold only tensors, and the line says which does not.
    state = {**create_model("resnet18", num_classes=10, in_channels=1).state_dict(), "epoch": 7}
    torch.save(state, tmp_path / "with-epoch.pth")
    one_line_error(capsys, ["train", "--data", str(tiny_data), "--init", str(tmp_path / "with-epoch.pth"), "--epochs",
                            "1", "--model", "resnet18", "--val-split", "100", "--batch-size", "50", "--out", str(tmp_path / "r")],
                   "expected a state dict (names to tensors), but 'epoch' is not a tensor (int); save the model's state_dict alone")
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_freeze_backbone_trains_only_the_head(shapes_split, tmp_path):
    _tiny_fmnist_checkpoint(tmp_path / "start.safetensors")
    out = tmp_path / "run"
    assert main(["train", "--data", str(shapes_split), "--out", str(out), "--epochs", "1", "--batch-size", "32",
                 "--image-size", "16", "--init", str(tmp_path / "start.safetensors"), "--freeze-backbone",
                 "--precision", "fp32", "--time-budget", "0"]) == 0
    start = build_model(with_base_defaults(TrainConfig(model="resnet18", model_args={"stem": "small"},
                                                       init=str(tmp_path / "start.safetensors"))), 3, 3, log=lambda s: None).state_dict()
    trained = load_file(str(out / "last.safetensors"))
    changed = {k for k in trained if not torch.equal(trained[k], start[k])}
    assert changed == {"fc.weight", "fc.bias"}  # weights and batch-norm statistics of the backbone untouched


def test_show_data_of_a_class_folder(shapes_split, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["show-data", "--data", str(shapes_split), "--n", "9", "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG" and "the first 9 train images" in capsys.readouterr().out


@pytest.mark.slow
def test_eval_of_a_single_level_folder_uses_the_runs_validation_split(tmp_path, capsys):
    root = write_shape_folder(tmp_path / "d", per_class=12)
    out = tmp_path / "run"
    assert main(["train", "--data", str(root), "--out", str(out), "--epochs", "1", "--batch-size", "9",
                 "--image-size", "16", "--precision", "fp32", "--val-fraction", "0.25", "--time-budget", "0"]) == 0
    printed = capsys.readouterr().out.splitlines()
    results = json.loads((out / "results.json").read_text())
    assert results["test_acc"] is None and printed[-2].endswith("(no test split)")
    assert main(["eval", str(out / "best.safetensors"), "--out", str(tmp_path / "e")]) == 0
    report = json.loads((tmp_path / "e" / "report.json").read_text())
    assert report["split"] == "val" and report["count"] == 9  # the same seeded quarter of each class
    assert report["accuracy"] == results["best_val_acc"] and report["same_images_as_training"] is True
    assert capsys.readouterr().out.startswith(f"val acc {results['best_val_acc']:.4f}")
    # Files added since training change the seeded split: what it holds out now may be training images.
    draw_shape("circle", 32, __import__("numpy").random.default_rng(5), rgb=True).save(root / "circle" / "new.png")
    one_line_error(capsys, ["eval", str(out / "best.safetensors"), "--out", str(tmp_path / "e2")],
                   "its files changed since training", "may include training images")
    assert not (tmp_path / "e2" / "report.json").exists()
