"""`resnetlab train` and friends from the command line: a tiny run, and every user error as one line, exit 2."""

import gzip
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import one_line_error, write_idx
from resnetlab.cli import main

# The cpu preset (no --preset on a CPU) without its time budget: no test's outcome may depend on the machine's speed.
TINY = ["--model", "resnet18", "--image-size", "28", "--val-split", "100", "--limit-train", "300",
        "--batch-size", "50", "--epochs", "1", "--lr", "0.02", "--precision", "fp32", "--time-budget", "0"]


def test_train_end_to_end_subprocess(tiny_data, tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "resnetlab", "train", "--data", str(tiny_data), "--out", str(out), *TINY],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "no --preset given: using 'cpu' (no CUDA GPU)"
    assert lines[-2].startswith("loss ") and ", train acc " in lines[-2] and ", test acc " in lines[-2]
    assert lines[-1].endswith("examples/sec on cpu")
    assert any(line.startswith("epoch 1/1 ") for line in lines)  # one plain line per epoch off a terminal
    assert "Traceback" not in result.stderr
    assert (out / "best.safetensors").exists() and (out / "metrics.csv").exists()


@pytest.mark.slow
def test_default_run_folder_and_latest_link(tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", str(tiny_data), *TINY]) == 0
    latest = tmp_path / "runs" / "latest"
    assert latest.is_symlink() and (latest / "config.json").exists()
    assert latest.resolve().name.endswith("-resnet18")


@pytest.mark.slow
def test_config_file_and_flag_precedence(tiny_data, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"preset: d2l\ndata: {tiny_data}\nepochs: 3\nlimit_train: 300\nlimit_test: 50\nimage_size: 28\n")
    assert main(["train", "--config", str(cfg), "--epochs", "1", "--out", str(tmp_path / "r")]) == 0
    import json

    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["preset"] == "d2l" and saved["epochs"] == 1 and saved["image_size"] == 28
    assert saved["init"] == "xavier" and saved["val_split"] == 0  # the rest from the preset


@pytest.mark.parametrize(
    "flags,needles",
    [
        (["--epochs", "-1"], ["--epochs -1 must be at least 1"]),
        (["--batch-size", "0"], ["--batch-size 0 must be at least 1"]),
        (["--preset", "turbo"], ["--preset", "invalid choice", "d2l"]),
        (["--model", "resnet19"], ["unknown model 'resnet19'", "resnet18"]),
        (["--lr", "abc"], ["--lr", "invalid float value"]),
        (["--limit-train", "0"], ["--limit-train 0 must be at least 1"]),
        (["--grad-clip", "nan"], ["--grad-clip nan must be a finite number"]),
        (["--lr", "inf"], ["--lr inf must be a finite number"]),
        (["--model-args", "{bad"], ["--model-args is not valid JSON"]),
        (["--model-args", '{"stem": "huge"}'], ["unknown stem"]),
        (["--device", "cuda"], ["--device cuda"]),
        (["--val-split", "600"], ["--val-split 600"]),
        (["--batch-size", "5000"], ["--batch-size 5000 is larger than"]),
    ],
)
def test_bad_flags(tiny_data, tmp_path, capsys, flags, needles):
    if flags == ["--device", "cuda"]:
        import torch

        if torch.cuda.is_available():
            pytest.skip("CUDA is available here")
    argv = ["train", "--data", str(tiny_data), "--out", str(tmp_path / "r"), *TINY, *flags]
    one_line_error(capsys, argv, *needles)


def test_missing_data_folder(tmp_path, capsys):
    msg = one_line_error(capsys, ["train", "--data", str(tmp_path / "nope"), *TINY], "does not exist")
    assert "apt-get install dataset-fashion-mnist" in msg and "--data" in msg


def test_empty_data_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    one_line_error(capsys, ["train", "--data", str(tmp_path / "empty"), *TINY], "not found in", "apt-get install")


@pytest.mark.parametrize(
    "damage,needle",
    [
        ("truncate", "truncated"),
        ("magic", "bad magic number"),
        ("count", "600 images but train-labels-idx1-ubyte.gz holds 599 labels"),
        ("label", "label 12 is out of range"),
        ("huge", "need"),
    ],
)
def test_damaged_data_files(tiny_data, tmp_path, capsys, damage, needle):
    folder = shutil.copytree(tiny_data, tmp_path / "d")
    images = folder / "train-images-idx3-ubyte.gz"
    labels = folder / "train-labels-idx1-ubyte.gz"
    if damage == "truncate":
        data = images.read_bytes()
        images.write_bytes(data[: len(data) // 2])
    elif damage == "magic":
        images.write_bytes(gzip.compress(b"\x12\x34\x08\x03" + gzip.decompress(images.read_bytes())[4:]))
    elif damage == "count":
        write_idx(labels, np.zeros(599, np.uint8))
    elif damage == "label":
        write_idx(labels, np.full(600, 12, np.uint8))
    elif damage == "huge":
        images.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + (10**6).to_bytes(4, "big") + (1000).to_bytes(4, "big") * 2))
    out = tmp_path / "r"
    one_line_error(capsys, ["train", "--data", str(folder), "--out", str(out), *TINY], needle)
    assert not out.exists()  # nothing written for a run that never started


def test_output_folder_that_cannot_be_created(tiny_data, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    one_line_error(capsys, ["train", "--data", str(tiny_data), "--out", str(blocker / "run"), *TINY],
                   "--out", "cannot create it")


def test_bad_config_file(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text('{"epochs": "many"}')
    one_line_error(capsys, ["train", "--config", str(cfg)], "field 'epochs' must be int")
    one_line_error(capsys, ["train", "--config", str(tmp_path / "absent.json")], "--config", "cannot read it")


def test_unreadable_data_file(tiny_data, tmp_path, capsys, monkeypatch):
    # CI runs as root, which reads any file; simulate the refusal for the training images.
    import resnetlab.data.idx as idx

    real_open = idx._open

    def refuse(path):
        if path.name.startswith("train-images"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path)

    monkeypatch.setattr(idx, "_open", refuse)
    out = tmp_path / "r"
    one_line_error(capsys, ["train", "--data", str(tiny_data), "--out", str(out), *TINY],
                   "train-images-idx3-ubyte.gz", "permission denied")
    assert not out.exists()


def test_a_runs_latest_that_is_a_real_folder_is_left_alone(tiny_data, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    latest = tmp_path / "runs" / "latest"
    latest.mkdir(parents=True)  # say, from an earlier --out runs/latest
    (latest / "notes.txt").write_text("mine")
    assert main(["train", "--data", str(tiny_data), *TINY]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("warning: runs/latest is not the link to the latest run but a folder")
    assert latest.is_dir() and not latest.is_symlink() and (latest / "notes.txt").read_text() == "mine"
    made = [p for p in (tmp_path / "runs").iterdir() if p.name != "latest"]
    assert len(made) == 1 and (made[0] / "results.json").exists()


def test_compile_trains_and_says_what_compiling_took(tiny_data, tmp_path, capsys, monkeypatch):
    # Inductor takes 30-90 s for this model on 2 cores; dynamo's eager backend traces the same graph in seconds.
    # What is checked is the wiring: the mode reaches torch.compile, the first step is timed apart and said.
    real_compile, modes = torch.compile, []

    def compile_eagerly(model, *, mode=None, **kwargs):
        modes.append(mode)
        return real_compile(model, backend="eager")

    monkeypatch.setattr(torch, "compile", compile_eagerly)
    out = tmp_path / "run"
    assert main(["train", "--data", str(tiny_data), "--out", str(out), *TINY, "--compile", "--compile-mode",
                 "max-autotune"]) == 0
    assert modes == ["max-autotune"]
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("compile: first step took ") and line.endswith("not counted in img/s)") for line in lines)
    assert json.loads((out / "config.json").read_text())["compile_mode"] == "max-autotune"


def test_bad_compile_modes_are_one_line_errors(tiny_data, tmp_path, capsys):
    argv = ["train", "--data", str(tiny_data), "--out", str(tmp_path / "r"), *TINY]
    one_line_error(capsys, [*argv, "--compile", "--compile-mode", "fastest"], "--compile-mode", "invalid choice",
                   "reduce-overhead")
    one_line_error(capsys, [*argv, "--compile-mode", "reduce-overhead"], "--compile-mode reduce-overhead needs --compile")
    assert not (tmp_path / "r").exists()
