"""eval, predict, export, show-data, plot and `resnetlab.load`, on a tiny checkpoint trained in seconds."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import resnetlab
from helpers import one_line_error, plain_config
from resnetlab.cli import main
from resnetlab.data import DeviceLoader, load_split
from resnetlab.engine import fit
from resnetlab.scoring import classification_report


def png(path, array):
    Image.fromarray(array).save(path)
    return path


def test_eval_matches_training_and_writes_report(trained, ckpt, tiny_data, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", str(ckpt), "--out", str(out)]) == 0  # data: the folder it was trained on
    lines = capsys.readouterr().out.splitlines()
    results = json.loads((trained / "results.json").read_text())
    report = json.loads((out / "report.json").read_text())
    assert report["accuracy"] == results["test_acc"]  # the same number the run reported
    assert report["same_images_as_training"] is True  # by the fingerprint in the header
    assert lines[0] == f"test acc {results['test_acc']:.4f}"
    assert lines[1].split() == ["class", "precision", "recall", "f1", "support"]
    assert [line.split()[0] for line in lines[2:12]] == [n.split()[0] for n in resnetlab.data.CLASS_NAMES]
    assert report["count"] == 200 and sum(map(sum, report["confusion"])) == 200
    assert sum(report["confusion"][i][i] for i in range(10)) == report["correct"]
    assert (out / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "mistakes.png").exists() == (report["correct"] < 200)


def test_eval_of_a_checkpoint_without_fingerprints_says_it_cannot_tell(ckpt, tmp_path, capsys):
    # A checkpoint written before the header kept each split's fingerprint: eval measures it, and cannot tell.
    from safetensors.torch import load_file

    from resnetlab.weights import read_header, save_weights

    header = read_header(ckpt)
    header.data = {}
    old = tmp_path / "old.safetensors"
    save_weights(old, load_file(str(ckpt)), header)
    assert main(["eval", str(old), "--out", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["same_images_as_training"] is None and "note:" not in capsys.readouterr().out


def test_eval_shows_the_most_confident_mistakes(ckpt, tiny_data, tmp_path, capsys):
    # The same test images with every label moved to the next class: nearly all predictions are mistakes.
    import shutil

    from helpers import write_idx

    data = tmp_path / "mislabelled"
    shutil.copytree(tiny_data, data)
    test = load_split(tiny_data, "test")
    write_idx(data / "t10k-labels-idx1-ubyte.gz", ((test.labels + 1) % 10).numpy().astype(np.uint8))
    out = tmp_path / "eval"
    assert main(["eval", str(ckpt), "--data", str(data), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["same_images_as_training"] is False  # other labels: not the split the run measured, and it says so
    assert capsys.readouterr().out.splitlines()[-1].startswith("note: these test images are not the ones the run measured")
    assert len(report["mistakes"]) == min(32, 200 - report["correct"]) == 32
    probs = [m["prob"] for m in report["mistakes"]]
    assert probs == sorted(probs, reverse=True)  # the most confident errors first
    assert (out / "mistakes.png").read_bytes()[:4] == b"\x89PNG"


def test_classification_report_by_hand():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    preds = torch.tensor([0, 0, 1, 1, 2, 2])
    r = classification_report(labels, preds, ["a", "b", "c"])
    assert r["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    a, b, c = r["per_class"]
    assert (a["precision"], a["recall"], a["support"]) == (1.0, 2 / 3, 3)
    assert (b["precision"], b["recall"]) == (0.5, 0.5) and b["f1"] == 0.5
    assert (c["precision"], c["recall"]) == (0.5, 1.0) and c["f1"] == pytest.approx(2 / 3)
    assert r["macro"]["recall"] == pytest.approx((2 / 3 + 0.5 + 1) / 3)


def test_load_and_predict_agree_with_the_training_pipeline(ckpt, tiny_data, tmp_path):
    clf = resnetlab.load(ckpt)
    assert not clf.model.training and clf.class_names[7] == "Sneaker" and clf.image_size == 28
    test = load_split(tiny_data, "test")
    pre = clf.preprocess
    loader = DeviceLoader(test, 50, device="cpu", image_size=28, mean=pre.mean, std=pre.std)
    with torch.no_grad():
        expected = torch.cat([clf.model(x).softmax(1) for x, _ in loader.batches()])[:6]
    images = test.images[:6]
    # A uint8 batch, float tensors in [0, 1], PIL images and PNG files all give the training pipeline's answer.
    assert torch.allclose(clf.probabilities(images), expected, atol=1e-6)
    assert torch.allclose(clf.probabilities([im.float() / 255 for im in images]), expected, atol=1e-6)
    pil = [Image.fromarray(im[0].numpy()) for im in images]
    assert torch.allclose(clf.probabilities(pil), expected, atol=1e-6)
    files = [png(tmp_path / f"{i}.png", im[0].numpy()) for i, im in enumerate(images)]
    assert torch.allclose(clf.probabilities(files), expected, atol=1e-6)
    preds = clf.predict(files, top_k=3)
    assert [p.label for p in preds] == [clf.class_names[i] for i in expected.argmax(1)]
    assert all(len(p.top) == 3 and p.top[0][1] >= p.top[1][1] >= p.top[2][1] for p in preds)


def test_predict_command_formats_and_bad_files(ckpt, tiny_data, tmp_path, capsys):
    test = load_split(tiny_data, "test")
    folder = tmp_path / "pics"
    folder.mkdir()
    png(folder / "a.png", test.images[0, 0].numpy())
    # An RGB JPEG of another size: converted to the model's one channel and resized.
    rgb = np.stack([np.kron(test.images[1, 0].numpy(), np.ones((2, 2), np.uint8))] * 3, axis=-1)
    Image.fromarray(rgb).save(folder / "b.jpg", quality=95)
    (folder / "notes.txt").write_text("not an image")  # skipped: folders are searched for image suffixes
    bad = tmp_path / "fake.png"
    bad.write_text("not an image either")

    assert main(["predict", str(ckpt), str(folder), "--format", "json", "--top-k", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in result] == [str(folder / "a.png"), str(folder / "b.jpg")]
    assert all(len(r["top"]) == 2 and 0 <= r["top"][1]["prob"] <= r["top"][0]["prob"] <= 1 for r in result)

    assert main(["predict", str(ckpt), str(bad), str(folder / "a.png"), "--format", "csv", "--top-k", "1"]) == 1
    captured = capsys.readouterr()
    assert captured.err.strip() == f"resnetlab predict: error: {bad}: not an image Pillow can read (PNG, JPEG, BMP, WebP, ...)"
    rows = captured.out.strip().splitlines()
    assert rows[0] == "file,rank,class,prob" and rows[1].startswith(f"{folder / 'a.png'},1,")

    assert main(["predict", str(ckpt), str(folder / "a.png")]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(folder / "a.png")) and len(line.split("\t")) == 4  # file + top 3


def test_bad_checkpoints_and_flags(ckpt, tmp_path, capsys):
    one_line_error(capsys, ["eval", str(tmp_path / "none.safetensors")], "no such file")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 100)
    one_line_error(capsys, ["eval", str(junk)], "not a safetensors weight file")
    one_line_error(capsys, ["predict", str(ckpt), str(tmp_path), "--top-k", "0"], "--top-k 0")
    (tmp_path / "empty").mkdir()
    one_line_error(capsys, ["predict", str(ckpt), str(tmp_path / "empty")], "no image files")
    one_line_error(capsys, ["export", str(ckpt), "--format", "torchscript", "--opset", "17"], "--opset applies to --format onnx")
    one_line_error(capsys, ["export", str(ckpt), "--out", str(tmp_path / "no" / "m.onnx")], "does not exist")


@pytest.mark.slow
def test_export_onnx_matches_pytorch(ckpt, tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "m.onnx"
    assert main(["export", str(ckpt), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "checking on 8 test images" in printed and "matches PyTorch at batch sizes 1 and 7" in printed
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["class_names"])[0] == "T-shirt/top" and json.loads(meta["input_size"]) == [1, 28, 28]
    # Any batch size runs, with the standardisation inside the graph.
    clf = resnetlab.load(ckpt)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    got = session.run(["probabilities"], {"pixels": (images.float() / 255).numpy()})[0]
    assert np.allclose(got, clf.probabilities(images).numpy(), atol=1e-4)


def test_export_that_disagrees_leaves_no_file(ckpt, tmp_path, capsys, monkeypatch):
    import resnetlab.inference.export as export

    monkeypatch.setattr(export, "TOLERANCE", -1.0)  # nothing can pass: the check must refuse the file
    out = tmp_path / "m.pt"
    one_line_error(capsys, ["export", str(ckpt), "--format", "torchscript", "--out", str(out)],
                   "disagrees with PyTorch at batch size 1", "no file was written")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_export_torchscript(ckpt, tmp_path, capsys):
    out = tmp_path / "m.pt"
    assert main(["export", str(ckpt), "--format", "torchscript", "--out", str(out)]) == 0
    loaded = torch.jit.load(str(out))
    logits, probs = loaded(torch.rand(3, 1, 28, 28))
    assert logits.shape == probs.shape == (3, 10) and torch.allclose(probs.sum(1), torch.ones(3))


def test_export_without_the_onnx_extra(ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    one_line_error(capsys, ["export", str(ckpt), "--out", str(tmp_path / "m.onnx")], "pip install 'resnetlab[onnx]'")
    assert list(tmp_path.iterdir()) == []


def test_show_data_and_plot(trained, tiny_data, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["show-data", "--data", str(tiny_data), "--n", "12", "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    (trained / "curves.png").unlink()
    assert main(["plot", str(trained)]) == 0
    assert (trained / "curves.png").read_bytes()[:4] == b"\x89PNG"
    one_line_error(capsys, ["plot", str(tmp_path)], "metrics.csv", "cannot read it")


@pytest.mark.slow
def test_eval_of_a_three_channel_fashion_mnist_run(tiny_data, tmp_path, capsys):
    # --channels 3 repeats the gray channel in training; eval must feed the test images the same way.
    out = tmp_path / "run"
    fit(plain_config(model="resnet18", data=str(tiny_data), channels=3, val_split=100, limit_train=200, batch_size=50,
                    epochs=1, precision="fp32", out=str(out)), log=lambda line: None)
    results = json.loads((out / "results.json").read_text())
    assert main(["eval", str(out / "best.safetensors"), "--out", str(tmp_path / "e")]) == 0
    assert capsys.readouterr().out.startswith(f"test acc {results['test_acc']:.4f}")


@pytest.mark.slow
def test_eval_scores_as_the_run_scored_with_or_without_tta(tiny_data, tmp_path, capsys):
    # A run scored with flip TTA (the cpu preset is): eval does the same unless told otherwise, so its figures are the run's.
    out = tmp_path / "run"
    fit(plain_config(model="d2l_resnet18", data=str(tiny_data), val_split=100, limit_train=200, batch_size=50, epochs=1,
                     tta=True, precision="fp32", out=str(out)), log=lambda line: None)
    results = json.loads((out / "results.json").read_text())
    reports = {}
    for flag in ([], ["--no-tta"]):
        assert main(["eval", str(out / "best.safetensors"), "--out", str(tmp_path / f"e{len(flag)}"), *flag]) == 0
        reports[bool(flag)] = json.loads((tmp_path / f"e{len(flag)}" / "report.json").read_text())
    capsys.readouterr()
    assert reports[False]["tta"] is True and reports[True]["tta"] is False
    assert reports[False]["accuracy"] == results["test_acc"]
    assert reports[False]["loss"] == pytest.approx(results["test_loss"], rel=1e-5)
    assert reports[True]["loss"] != pytest.approx(results["test_loss"], rel=1e-5)  # TTA changes the scores


def test_inference_imports_nothing_from_the_training_engine(ckpt, tmp_path):
    image = png(tmp_path / "x.png", np.full((28, 28), 90, dtype=np.uint8))
    code = (
        "import sys, resnetlab\n"
        f"clf = resnetlab.load({str(ckpt)!r})\n"
        f"clf.predict([{str(image)!r}])\n"
        "print(sorted(m for m in sys.modules if m.startswith('resnetlab.engine')))\n"
    )
    import subprocess

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
