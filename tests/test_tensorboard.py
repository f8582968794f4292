"""TensorBoard: what a run writes (read back with TensorBoard's own reader and through a real server on 127.0.0.1),
that it changes nothing the run computes, a resumed run's curves (each step once), eval's pictures, and the switch."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import plain_config, plugin_tags, read_events, scalars
from resnetlab.cli import main
from resnetlab.engine import fit

pytest.importorskip("tensorboard", reason="the tensorboard package is not installed (pip install 'resnetlab[tensorboard]')")

def test_a_run_writes_scalars_images_text_and_hyperparameters(trained):
    series = scalars(trained)
    config = json.loads((trained / "config.json").read_text())
    steps = 2 * 10  # 2 epochs of 500 training images (the 100 validation images held out first), batches of 50
    assert config["epochs"] == 2 and config["batch_size"] == 50
    # Per step: each step once, in order; the lr is the schedule's (a plain constant rate here).
    assert [s for s, _ in series["train/loss"]] == list(range(steps))
    assert [v for _, v in series["train/lr"]] == pytest.approx([0.05] * steps)
    # Per epoch, at the step the epoch ended on; the values are metrics.csv's.
    rows = list(map(lambda line: line.split(","), (trained / "metrics.csv").read_text().splitlines()))
    header, rows = rows[0], rows[1:]
    for tag, column in (("val/acc", "val_acc"), ("train/acc", "train_acc"), ("train/epoch_loss", "train_loss")):
        assert [s for s, _ in series[tag]] == [10, 20], tag
        assert [v for _, v in series[tag]] == pytest.approx([float(r[header.index(column)]) for r in rows], rel=1e-5)
    assert [s for s, _ in series["val/loss"]] == [10, 20] and "train/images_per_sec" in series
    # At the end: the best weights' test figures (as results.json) and the HParams tab's metrics.
    results = json.loads((trained / "results.json").read_text())
    assert series["test/acc"] == [(20, pytest.approx(results["test_acc"]))]
    assert series["hparams/test_acc"] == [(20, pytest.approx(results["test_acc"]))]
    assert series["hparams/best_val_acc"] == [(20, pytest.approx(results["best_val_acc"]))]
    mistakes = ["test/mistakes"] if results["test_acc"] < 1 else []  # the tiny data are often learnt perfectly
    assert plugin_tags(trained, "images") == ["test/confusion", *mistakes]
    assert "config/text_summary" in plugin_tags(trained, "text")
    assert {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"} <= set(
        plugin_tags(trained, "hparams"))
    assert read_events(trained).Graph() is not None  # the model's graph, traced from a copy


def test_tensorboard_changes_nothing_the_run_computes_and_can_be_turned_off(tiny_data, tmp_path):
    runs = {}
    for name, on in (("with", True), ("without", False)):
        out = tmp_path / name
        fit(plain_config(model="d2l_resnet18", data=str(tiny_data), val_split=100, limit_train=200, batch_size=50,
                         epochs=1, precision="fp32", deterministic=True, tensorboard=on, out=str(out)), log=lambda l: None)
        runs[name] = out
    a, b = (load_file(str(runs[n] / "best.safetensors")) for n in ("with", "without"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # batch-norm statistics included
    assert list(runs["with"].glob("events.out.tfevents.*")) and not list(runs["without"].glob("events.out.tfevents.*"))


def test_without_the_package_the_header_says_how_to_get_it(tiny_data, tmp_path, monkeypatch):
    import resnetlab.engine.tensorboard as tensorboard

    monkeypatch.setattr(tensorboard, "tensorboard_installed", lambda: False)
    lines = []
    fit(plain_config(data=str(tiny_data), val_split=100, limit_train=100, batch_size=50, epochs=1, out=str(tmp_path / "r")),
        log=lines.append)
    said = [line for line in lines if line.startswith("TensorBoard:")]
    assert len(said) == 1 and 'pip install "resnetlab[tensorboard]"' in said[0] and "--no-tensorboard" in said[0]
    assert not list((tmp_path / "r").glob("events.out.tfevents.*"))


def test_eval_adds_its_pictures_to_the_run_folder_once(trained, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    for _ in range(2):  # evaluated twice: the second replaces the first (purge), nothing doubles
        assert main(["eval", str(run / "best.safetensors"), "--data", json.loads((run / "config.json").read_text())["data"]]) == 0
    assert "TensorBoard event files" in capsys.readouterr().out
    folder = run / "eval-best"
    series = scalars(folder)
    report = json.loads((folder / "report.json").read_text())
    best_epoch = json.loads((run / "results.json").read_text())["best_epoch"]
    assert series["test/acc"] == [(best_epoch, pytest.approx(report["accuracy"]))]  # at the checkpoint's epoch
    assert plugin_tags(folder, "images") == ["test/confusion", *(["test/mistakes"] if report["mistakes"] else [])]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, data: dict | None = None):
    body = json.dumps(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"} if body else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_a_tensorboard_server_on_localhost_serves_the_runs_scalars(trained, tmp_path):
    logdir = trained.parent
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1",
                               "--port", str(port), "--load_fast=false"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:  # until it answers, and has read the run (it loads event files in the background)
            try:
                runs = get_json(f"{base}/data/runs")
                if runs:
                    break
            except OSError:
                pass
            assert server.poll() is None, server.stdout.read()
            assert time.monotonic() < deadline, "TensorBoard did not answer within 120 s"
            time.sleep(0.5)
        assert runs == [trained.name]
        tags = get_json(f"{base}/data/plugin/scalars/tags")[trained.name]
        assert {"train/loss", "train/lr", "val/acc", "test/acc"} <= set(tags)
        query = urllib.parse.urlencode({"run": trained.name, "tag": "train/loss"})
        points = get_json(f"{base}/data/plugin/scalars/scalars?{query}")  # [wall time, step, value] each
        assert [p[1] for p in points] == list(range(20))
        assert points == sorted(points, key=lambda p: p[1])
        experiment = get_json(f"{base}/data/plugin/hparams/experiment", {"experimentName": ""})
        names = {h["name"] for h in experiment["hparamInfos"]}
        assert {"lr", "batch_size", "model", "epochs"} <= names
        assert {m["name"]["tag"] for m in experiment["metricInfos"]} == {"hparams/test_acc", "hparams/best_val_acc"}
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_report_pictures_show_the_confusion_matrix_and_the_mistakes(tmp_path):
    from resnetlab.data.imageset import ImageSet
    from resnetlab.engine.tensorboard import add_report_pictures, open_writer

    images = ImageSet(torch.randint(0, 255, (4, 1, 28, 28), dtype=torch.uint8), torch.tensor([0, 1, 0, 1]), ["a", "b"])
    report = {"accuracy": 0.5, "confusion": [[1, 1], [1, 1]],
              "mistakes": [{"index": 1, "true": "b", "predicted": "a", "prob": 0.9},
                           {"index": 2, "true": "a", "predicted": "b", "prob": 0.7}]}
    writer = open_writer(tmp_path)
    add_report_pictures(writer, "val", report, images, ["a", "b"], 3)
    writer.close()
    assert plugin_tags(tmp_path, "images") == ["val/confusion", "val/mistakes"]
