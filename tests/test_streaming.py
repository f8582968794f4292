"""Data past memory: lazy subsets, the streamed feed (same batches as resident), its choice, and no host copies in a step."""

from __future__ import annotations

import hashlib
import json
import signal
import threading

import pytest
import torch
from safetensors.torch import load_file

import resnetlab.data.feed as feed_module
from helpers import read_folder, train_child, write_shape_folder
from resnetlab.cli import main
from resnetlab.data import Augment, DeviceLoader, ImageSet
from resnetlab.data.feed import cgroup_memory_limit, choose_feed
from resnetlab.data.loader import background
from resnetlab.data.stats import channel_stats
from resnetlab.engine.state import STATE_FILE, load_train_state


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Each test gets its own cache folder."""
    monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return write_shape_folder(tmp_path_factory.mktemp("shapes") / "data", per_class=40, sizes=(24, 32))


def make_set(n=203, side=20, channels=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, channels, side, side), generator=gen, dtype=torch.uint8)
    return ImageSet(images, torch.randint(0, 5, (n,), generator=gen), tuple("abcde"))


def batches(loader, epoch=0, start=0):
    return [(x.clone(), y.clone()) for x, y in loader.batches(epoch, start)]


def assert_same(a, b):
    assert len(a) == len(b)
    for (x1, y1), (x2, y2) in zip(a, b):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_subsets_of_a_mapped_folder_copy_no_pixels(shapes):
    found = read_folder(shapes, image_size=16)
    train, val = found.train, found.val
    # Both splits select rows of the one memory-mapped array of the cache; nothing was copied.
    assert train.rows is not None and val.rows is not None
    assert train.source.data_ptr() == val.source.data_ptr() and len(train.source) == len(train) + len(val)
    assert torch.equal(train.images, train.source[train.rows]) and train.shape == train.images.shape
    again = train.subset(torch.tensor([5, 0, 3])).limit(2)
    assert again.source is train.source and torch.equal(again.images, train.images[[5, 0]])
    assert torch.equal(train.gather(torch.tensor([7, 2, 7, 0])), train.images[[7, 2, 7, 0]])


def test_fingerprint_and_channel_stats_are_those_of_the_whole_set_at_once():
    whole = make_set(700)
    lazy = ImageSet(torch.cat([whole.images, whole.images[:50]]), torch.cat([whole.labels, whole.labels[:50]]),
                    whole.class_names).subset(torch.arange(700))
    digest = hashlib.sha256(str(tuple(whole.images.shape)).encode())
    digest.update(whole.images.numpy().tobytes())
    digest.update(whole.labels.numpy().tobytes())
    assert whole.fingerprint() == lazy.fingerprint() == digest.hexdigest()
    x = whole.images.transpose(0, 1).reshape(3, -1).double() / 255
    for mean, std in (channel_stats(whole), channel_stats(lazy), channel_stats(whole.images)):
        assert mean == pytest.approx(x.mean(1).tolist(), abs=1e-12) and std == pytest.approx(x.std(1).tolist(), abs=1e-12)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_streamed_batches_equal_resident_ones_for_every_rank_and_from_any_step(world_size):
    full = make_set()
    lazy = full.subset(torch.randperm(203, generator=torch.Generator().manual_seed(1))[:150])
    kw = dict(shuffle=True, drop_last=False, augment=Augment(3, True, 0.5), seed=11, image_size=16,
              mean=[0.2, 0.3, 0.4], std=[0.5, 0.5, 0.6], world_size=world_size)
    for rank in range(world_size):
        resident = DeviceLoader(lazy, 32, rank=rank, **kw)
        streamed = DeviceLoader(lazy, 32, rank=rank, stream=True, prefetch=2, **kw)
        assert streamed.images is None  # nothing held: each batch is gathered
        for start in (0, 2):
            assert_same(batches(resident, 3, start), batches(streamed, 3, start))
    # The ranks' shares make the global batch.
    one = batches(DeviceLoader(lazy, 32, stream=True, **{**kw, "world_size": 1}), 3)
    parts = [batches(DeviceLoader(lazy, 32, rank=r, stream=True, **kw), 3) for r in range(world_size)]
    for step, (x, y) in enumerate(one):
        assert torch.equal(torch.cat([p[step][0] for p in parts]), x)
        assert torch.equal(torch.cat([p[step][1] for p in parts]), y)


@pytest.mark.parametrize("stream", [False, True])
def test_a_step_copies_nothing_from_the_host(monkeypatch, stream):
    """The epoch's order and augmentation reach the device once; a step only slices (issue 20: no host waits).

    On a GPU each ``Tensor.to`` from a CPU tensor is a copy the host may wait for; counted here on
    the CPU, where the calls are the same. A streamed step has exactly one, the batch, non-blocking.
    """
    loader = DeviceLoader(make_set(), 32, shuffle=True, drop_last=True, augment=Augment(2, True, 0.5), seed=3,
                          image_size=24, stream=stream)
    calls = []
    real_to = torch.Tensor.to

    def counting_to(self, *args, **kwargs):
        if "device" in kwargs or any(isinstance(a, (torch.device, str)) for a in args):  # a move, not a dtype cast
            calls.append(kwargs.get("non_blocking", False))
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", counting_to)
    steps = loader.batches(0)
    next(steps)  # the epoch's start: its copies
    calls.clear()
    for _ in range(4):
        next(steps)
    assert calls == ([True] * 4 if stream else []), calls
    steps.close()


def test_the_background_thread_passes_errors_on_and_stops_with_its_consumer():
    def failing():
        yield 1
        raise ValueError("disk gone")

    items = background(failing(), 2)
    assert next(items) == 1
    with pytest.raises(ValueError, match="disk gone"):
        next(items)

    produced = []

    def endless():
        while True:
            produced.append(len(produced))
            yield produced[-1]

    items = background(endless(), 3)
    assert [next(items) for _ in range(5)] == [0, 1, 2, 3, 4]
    items.close()
    assert not any(t.name == "resnetlab-prefetch" and t.is_alive() for t in threading.enumerate())
    assert len(produced) <= 5 + 3 + 1  # it ran at most its depth ahead


def test_the_feed_is_chosen_by_a_quarter_of_the_memory_or_forced():
    cpu = torch.device("cpu")
    memory = (4_000_000_000, "the 4.0 GB of RAM")
    assert not choose_feed(1_000_000_000, cpu, memory=memory).stream
    auto = choose_feed(1_000_000_001, cpu, memory=memory)
    assert auto.stream and auto.reason == ("images streamed batch by batch (1.0 GB, over a quarter of the 4.0 GB of RAM; "
                                           "--feed resident holds them)")
    assert choose_feed(10, cpu, "stream", memory=memory).stream
    assert not choose_feed(10**12, cpu, "resident", memory=memory).stream


def test_the_memory_limit_of_the_process_cgroup_counts(tmp_path):
    v1 = tmp_path / "v1"
    (v1 / "memory/jobs/job7").mkdir(parents=True)
    (v1 / "memory/jobs/memory.limit_in_bytes").write_text("3000000000\n")
    (v1 / "memory/jobs/job7/memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    (v1 / "memory/memory.limit_in_bytes").write_text("9223372036854771712\n")
    (tmp_path / "cg1").write_text("5:cpu:/\n4:memory:/jobs/job7\n0::/\n")
    assert cgroup_memory_limit(str(tmp_path / "cg1"), str(v1)) == 3_000_000_000  # a parent's limit applies
    v2 = tmp_path / "v2"
    (v2 / "user/app").mkdir(parents=True)
    (v2 / "user/app/memory.max").write_text("2147483648\n")
    (v2 / "user/memory.max").write_text("max\n")
    (tmp_path / "cg2").write_text("0::/user/app\n")
    assert cgroup_memory_limit(str(tmp_path / "cg2"), str(v2)) == 2 ** 31
    (tmp_path / "cg3").write_text("0::/\n")
    assert cgroup_memory_limit(str(tmp_path / "cg3"), str(tmp_path / "none")) is None


def _train(shapes, out, *extra):
    return ["train", "--data", str(shapes), "--out", str(out), "--epochs", "2", "--batch-size", "16", "--image-size", "16",
            "--precision", "fp32", "--time-budget", "0", "--recalibrate-bn", "32", *extra]


def test_streamed_and_resident_runs_train_the_same_weights_and_evaluate_alike(shapes, tmp_path, capsys, monkeypatch):
    assert main(_train(shapes, tmp_path / "resident", "--feed", "resident")) == 0
    resident_out = capsys.readouterr().out
    assert "images resident in memory (" in resident_out and "--feed resident)" in resident_out
    # auto, with the data over a quarter of (a pretended) memory: streamed, and the first line says why.
    monkeypatch.setattr(feed_module, "memory_for_data", lambda device: (1000, "a test's 1000 B"))
    assert main(_train(shapes, tmp_path / "streamed")) == 0
    streamed_out = capsys.readouterr().out
    assert "images streamed batch by batch (" in streamed_out and "over a quarter of a test's 1000 B" in streamed_out
    a, b = (load_file(tmp_path / run / "best.safetensors") for run in ("resident", "streamed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = (json.loads((tmp_path / run / "results.json").read_text()) for run in ("resident", "streamed"))
    for key in ("train_loss", "train_acc", "best_val_acc", "test_acc"):
        assert ra[key] == rb[key], key
    reports = []
    for feed in ("resident", "stream"):
        assert main(["eval", str(tmp_path / "resident" / "best.safetensors"), "--feed", feed,
                     "--out", str(tmp_path / f"eval-{feed}")]) == 0
        assert f"--feed {feed})" in capsys.readouterr().out
        reports.append(json.loads((tmp_path / f"eval-{feed}" / "report.json").read_text()))
    assert reports[0]["accuracy"] == reports[1]["accuracy"] and reports[0]["loss"] == reports[1]["loss"]
    assert reports[0]["confusion"] == reports[1]["confusion"] and reports[0]["mistakes"] == reports[1]["mistakes"]


@pytest.mark.slow
def test_a_streamed_run_stopped_mid_epoch_resumes_exactly_and_may_change_its_feed(shapes, tmp_path, capsys):
    assert main(_train(shapes, tmp_path / "whole", "--feed", "stream")) == 0
    capsys.readouterr()
    run = tmp_path / "cut"
    # SIGTERM after the third state save (epoch 1, step 3): the run ends its step, saves and exits 143.
    proc = train_child(_train(shapes, run, "--feed", "stream", "--save-every", "1")[1:], 3, send=signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err
    assert 0 < load_train_state(run / STATE_FILE)["progress"]["step"] < 6  # stopped within epoch 1 (6 steps)
    assert main(["train", "--resume", str(run), "--feed", "resident"]) == 0
    assert "images resident in memory (" in capsys.readouterr().out
    a, b = (load_file(tmp_path / name / "best.safetensors") for name in ("whole", "cut"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("whole", "cut"))
    assert ra["test_acc"] == rb["test_acc"] and ra["best_val_acc"] == rb["best_val_acc"]


@pytest.mark.parametrize("form", ["json", "csv", "table"])
def test_predict_prints_chunk_by_chunk_what_it_printed_at_once(ckpt, shapes, capsys, monkeypatch, form):
    import resnetlab.cli.predict as predict_module

    argv = ["predict", str(ckpt), str(shapes / "circle"), str(shapes / "square"), "--format", form, "--top-k", "2"]
    assert main(argv) == 0
    whole = capsys.readouterr().out
    monkeypatch.setattr(predict_module, "PREDICT_CHUNK", 3)  # 27 chunks, each printed before the next is read
    assert main(argv) == 0
    assert capsys.readouterr().out == whole
    if form == "json":
        assert [r["file"] for r in json.loads(whole)] == sorted(map(str, (shapes / "circle").iterdir())) + \
            sorted(map(str, (shapes / "square").iterdir()))
