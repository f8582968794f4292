"""Nothing lost: exact resume after SIGKILL, clean stops on SIGINT/SIGTERM, non-finite losses, full disks.

The kill tests run `resnetlab train` as a child process and kill it whenever its train state
has been replaced a given number of times, so the kill lands at an arbitrary instant (inside a
step, an evaluation or a save), which is what the promise is about.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import make_images, one_line_error, scalars, train_child, wait_for, write_idx
from resnetlab.cli import main
from resnetlab.engine.state import STATE_FILE, load_train_state

# The cpu preset without its time budget: what a run does must not depend on how fast the machine is.
RUN = ["--model", "resnet18", "--image-size", "28", "--val-split", "100", "--limit-train", "300",
       "--batch-size", "50", "--epochs", "3", "--precision", "fp32", "--deterministic", "--preset", "cpu", "--time-budget", "0"]
STEPS = 18  # 3 epochs of 6 steps


def child(args: list[str]) -> subprocess.Popen:
    """`python -m resnetlab train ARGS` with the same threads as every other child (bit-exactness needs it)."""
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    return subprocess.Popen([sys.executable, "-m", "resnetlab", "train", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def _version(path: Path):
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def signal_after_saves(proc: subprocess.Popen, state: Path, saves: int, sig: int) -> None:
    """Send ``sig`` to ``proc`` as soon as ``state`` has been replaced ``saves`` times."""
    seen, count = _version(state), 0
    while proc.poll() is None:
        now = _version(state)
        if now != seen:
            seen, count = now, count + 1
            if count >= saves:
                proc.send_signal(sig)
                return
        time.sleep(0.002)
    pytest.fail(f"the run ended before its state was saved {saves} times: {proc.stderr.read()}")


def tensors(obj, prefix=""):
    """Every tensor in a nested train state, by path."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from tensors(v, f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from tensors(v, f"{prefix}/{i}")


def assert_same_run(a: Path, b: Path) -> None:
    """Two finished runs hold bit-identical weights, optimiser state and metrics (timings aside)."""
    sa, sb = load_train_state(a / STATE_FILE), load_train_state(b / STATE_FILE)
    for key in ("model", "optimizer", "best_model", "rng"):
        ta, tb = dict(tensors(sa[key])), dict(tensors(sb[key]))
        assert ta.keys() == tb.keys() and ta, key
        for name in ta:
            assert torch.equal(ta[name], tb[name]), f"{key}{name} differs"
    assert sa["scheduler"] == sb["scheduler"]
    for name in ("best.safetensors", "last.safetensors"):
        wa, wb = load_file(str(a / name)), load_file(str(b / name))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), name
    timing = {"examples_per_sec", "seconds"}
    rows = [[{k: v for k, v in r.items() if k not in timing} for r in csv.DictReader(open(d / "metrics.csv"))]
            for d in (a, b)]
    assert rows[0] == rows[1] and len(rows[0]) == 3
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (a, b))
    for key in ("train_loss", "train_acc", "test_acc", "test_loss", "best_epoch", "best_val_acc"):
        assert ra[key] == rb[key], key


@pytest.mark.slow
def test_killed_three_times_and_resumed_equals_uninterrupted(tiny_data, tmp_path):
    reference = tmp_path / "reference"
    code, _, err = finish(child(["--data", str(tiny_data), "--out", str(reference), *RUN]))
    assert code == 0, err

    run = tmp_path / "killed"
    state = run / STATE_FILE
    proc = child(["--data", str(tiny_data), "--out", str(run), "--save-every", "1", *RUN])
    signal_after_saves(proc, state, 2, signal.SIGKILL)  # early in epoch 1
    assert finish(proc)[0] == -signal.SIGKILL
    for saves in (5, 6):  # about the end of epoch 1, then within epoch 2 or at its end
        proc = child(["--resume", str(run)])
        signal_after_saves(proc, state, saves, signal.SIGKILL)
        assert finish(proc)[0] == -signal.SIGKILL
    # SIGINT: the step is finished, the state saved, and the message says how to continue. The child waits
    # after its first save until the signal has reached it, so the run cannot end first.
    marker = tmp_path / "saved"
    proc = train_child(["--resume", str(run)], 1, marker=marker, env={"OMP_NUM_THREADS": "2"})
    wait_for(marker, proc)
    proc.send_signal(signal.SIGINT)
    code, _, err = finish(proc)
    assert code == 130, err
    assert f"continue with: resnetlab train --resume {run}" in err and "Traceback" not in err
    assert load_train_state(state)["progress"]["global_step"] < STEPS

    code, out, err = finish(child(["--resume", str(run)]))
    assert code == 0, err
    assert "resuming resnet18" in out and out.strip().splitlines()[-1].endswith("examples/sec on cpu")
    assert_same_run(reference, run)
    assert not list(run.glob(".*.tmp")), "a temporary file of a killed save was left behind"
    assert_same_curves(reference, run)


def assert_same_curves(a: Path, b: Path) -> None:
    """Two runs' TensorBoard series hold the same steps, each once, with the same values (measured speed aside):
    what a killed process wrote past its last save was purged, and written again by the run that went on."""
    pytest.importorskip("tensorboard", reason="the tensorboard package is not installed")
    series_a, series_b = ({k: v for k, v in scalars(d).items() if k != "train/images_per_sec"} for d in (a, b))
    assert series_a.keys() == series_b.keys() and "train/loss" in series_a
    assert [s for s, _ in series_a["train/loss"]] == list(range(STEPS))
    for tag in series_a:
        assert series_a[tag] == series_b[tag], tag


@pytest.mark.slow
def test_sigterm_saves_and_exits_143(tiny_data, tmp_path):
    run, marker = tmp_path / "run", tmp_path / "saved"
    # The child waits after its first save until the signal has reached it: the run cannot end first.
    proc = train_child(["--data", str(tiny_data), "--out", str(run), "--save-every", "2", *RUN], 1, marker=marker,
                       env={"OMP_NUM_THREADS": "2"})
    wait_for(marker, proc)
    proc.send_signal(signal.SIGTERM)
    code, out, err = finish(proc)
    assert code == 143, err
    assert out.strip().splitlines()[-1].startswith("SIGTERM received: finishing the current step")
    assert err.strip().startswith("resnetlab train: stopped by SIGTERM at epoch 1 step ") and "\n" not in err.strip()
    progress = load_train_state(run / STATE_FILE)["progress"]
    assert progress["epoch"] == 0 and 2 <= progress["step"] < 6  # saved on the stop, mid-epoch
    assert not (run / "results.json").exists()


def tiny_args(tiny_data, out, *extra):
    return ["train", "--data", str(tiny_data), "--out", str(out), "--model", "resnet18", "--val-split", "100",
            "--limit-train", "300", "--batch-size", "50", "--epochs", "2", "--precision", "fp32", "--time-budget", "0", *extra]


def test_nonfinite_loss_stops_with_exit_3_and_keeps_the_good_state(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    # An absurd learning rate makes the second step's loss infinite.
    assert main(tiny_args(tiny_data, run, "--lr", "1e30", "--momentum", "0", "--no-nesterov")) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "became NaN/inf at epoch 1 step " in err[0]
    assert f"--resume {run} --skip-nonfinite" in err[0]
    state = load_train_state(run / STATE_FILE)
    assert all(torch.isfinite(t).all() for _, t in tensors(state["model"]) if t.is_floating_point())
    # Resumed with --skip-nonfinite, the run finishes and counts what it skipped.
    assert main(["train", "--resume", str(run), "--skip-nonfinite"]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["skipped_batches"] >= 1
    assert json.loads((run / "config.json").read_text())["skip_nonfinite"] is True


@pytest.mark.slow
def test_resume_before_the_first_save_starts_over(tiny_data, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    assert main(tiny_args(tiny_data, first, "--epochs", "1")) == 0
    assert main(tiny_args(tiny_data, second, "--epochs", "1")) == 0
    for name in os.listdir(second):  # as if killed before the first epoch ended
        if name != "config.json":
            (second / name).unlink()
    assert main(["train", "--resume", str(second)]) == 0
    a, b = load_file(str(first / "best.safetensors")), load_file(str(second / "best.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_resume_defaults_to_runs_latest(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = tiny_args(tiny_data, "x", "--epochs", "1")
    args.remove("--out"), args.remove("x")
    assert main(args) == 0
    target = (tmp_path / "runs" / "latest").resolve()
    (target / "results.json").unlink()  # as if stopped after its last epoch, before the final test
    capsys.readouterr()
    assert main(["train", "--resume"]) == 0
    assert f"run folder runs/{target.name}" in capsys.readouterr().out
    assert (target / "results.json").exists()


@pytest.fixture(scope="module")
def finished_run(tiny_data, tmp_path_factory):
    """One finished one-epoch run for the tests that only read it or copy it first."""
    run = tmp_path_factory.mktemp("finished") / "run"
    assert main(tiny_args(tiny_data, run, "--epochs", "1")) == 0
    return run


def test_resume_errors(finished_run, tmp_path, capsys):
    one_line_error(capsys, ["train", "--resume", str(tmp_path / "nope")], "no such run folder")
    (tmp_path / "empty").mkdir()
    one_line_error(capsys, ["train", "--resume", str(tmp_path / "empty")], "no config.json")
    one_line_error(capsys, ["train", "--resume", str(finished_run)], "already finished")
    one_line_error(capsys, ["train", "--resume", str(finished_run), "--lr", "1"], "--lr cannot be changed")
    one_line_error(capsys, ["train", "--resume", str(finished_run), "--config", "c.yaml"], "--config cannot be used")
    one_line_error(capsys, ["train", "--out", str(finished_run)], "already holds a run", f"--resume {finished_run}")


def test_resume_refuses_an_edited_config_or_other_data(finished_run, tiny_data, tmp_path, capsys):
    import shutil

    run = shutil.copytree(finished_run, tmp_path / "run")
    (run / "results.json").unlink()
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "lr": 0.5}))
    one_line_error(capsys, ["train", "--resume", str(run)], "config.json differs", "'lr'")
    from helpers import make_images, write_idx

    other = shutil.copytree(tiny_data, tmp_path / "other")
    write_idx(other / "t10k-images-idx3-ubyte.gz", make_images(200, 99)[0])  # same shape, other pixels
    (run / "config.json").write_text(json.dumps({**config, "data": str(other)}))
    state = torch.load(run / STATE_FILE, weights_only=True)
    state["config"]["data"] = str(other)
    torch.save(state, run / STATE_FILE)
    one_line_error(capsys, ["train", "--resume", str(run)], "the data differ")


def test_damaged_train_state(finished_run, tmp_path, capsys):
    import shutil

    run = shutil.copytree(finished_run, tmp_path / "run")
    (run / "results.json").unlink()
    data = (run / STATE_FILE).read_bytes()
    (run / STATE_FILE).write_bytes(data[: len(data) // 3])
    one_line_error(capsys, ["train", "--resume", str(run)], "damaged train state", STATE_FILE)
    (run / STATE_FILE).write_bytes(b"not a zip or pickle at all")
    one_line_error(capsys, ["train", "--resume", str(run)], STATE_FILE)


class _Payload:
    """Unpickling this calls ``open(path, "w")``: the file appears only if the pickle runs."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_hostile_pickle_is_refused_not_run(finished_run, tmp_path, capsys):
    import shutil

    run = shutil.copytree(finished_run, tmp_path / "run")
    (run / "results.json").unlink()
    evidence = tmp_path / "pwned"
    # A real train state with one object slipped in, as an attacker would ship it.
    state = torch.load(run / STATE_FILE, weights_only=True)
    state["progress"]["history"].append(_Payload(evidence))
    torch.save(state, run / STATE_FILE)
    # The payload works: a plain pickle load would create the file.
    torch.load(run / STATE_FILE, weights_only=False)
    assert evidence.exists()
    evidence.unlink()

    one_line_error(capsys, ["train", "--resume", str(run)], "refused to load it", "could run code")
    assert not evidence.exists()
    # Weight files are safetensors: a pickle under that name is refused the same way, without running it.
    torch.save({"x": _Payload(evidence)}, tmp_path / "evil.safetensors")
    from resnetlab.errors import ResnetlabError
    from resnetlab.weights import load_model

    with pytest.raises(ResnetlabError, match="not a safetensors weight file"):
        load_model(tmp_path / "evil.safetensors")
    assert not evidence.exists()


def _fail_after(real, calls: int, path_part: str):
    """Wrap a save function: the ``calls``-th save whose path contains ``path_part`` writes half, then ENOSPC."""
    count = {"n": 0}

    def save(obj, path, *args, **kwargs):
        if path_part in Path(path).name:
            count["n"] += 1
            if count["n"] == calls:
                real(obj, path, *args, **kwargs)
                size = os.path.getsize(path)
                with open(path, "r+b") as f:
                    f.truncate(size // 2)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(obj, path, *args, **kwargs)

    return save


@pytest.mark.slow
def test_disk_full_during_a_state_save(tiny_data, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    # The 4th state save (steps 1, 2, 3 saved; step 4 fails) runs out of space half-way.
    monkeypatch.setattr(torch, "save", _fail_after(torch.save, 4, STATE_FILE))
    one_line_error(capsys, tiny_args(tiny_data, run, "--save-every", "1"),
                   f"cannot write {run / STATE_FILE}", "No space left on device", "free some space")
    left = sorted(p.name for p in run.iterdir() if not p.name.startswith("events.out.tfevents."))  # TensorBoard's: fine
    assert left == [".lock", "config.json", STATE_FILE]  # no temporary file left
    monkeypatch.undo()
    assert load_train_state(run / STATE_FILE)["progress"]["global_step"] == 3  # the previous good state
    assert main(["train", "--resume", str(run)]) == 0  # space freed: the run goes on


@pytest.mark.slow
def test_disk_full_during_a_weights_save(tiny_data, tmp_path, capsys, monkeypatch):
    import resnetlab.weights as weights

    run = tmp_path / "run"
    # Epoch 1 writes best then last; the second epoch's last.safetensors fails half-way.
    monkeypatch.setattr(weights, "save_file", _fail_after(weights.save_file, 2, "last"))
    one_line_error(capsys, tiny_args(tiny_data, run), f"cannot write {run / 'last.safetensors'}", "No space left")
    assert not list(run.glob(".*.tmp")), "a temporary file was left behind"  # (.lock is the folder's lock)
    assert load_file(str(run / "last.safetensors"))  # the previous, whole file


def test_stop_signals_first_asks_second_ctrl_c_stops_at_once():
    from resnetlab.engine.stop import StopSignals

    notes = []
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals(notes.append) as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert stop.signum == signal.SIGTERM and notes[0].startswith("SIGTERM received")
        os.kill(os.getpid(), signal.SIGTERM)  # a repeated SIGTERM changes nothing
        time.sleep(0.01)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
    assert signal.getsignal(signal.SIGTERM) is before and len(notes) == 1


@pytest.mark.slow
def test_a_run_from_an_init_file_resumes_after_the_file_moved(ckpt, tiny_data, tmp_path, capsys):
    import shutil

    start, run = tmp_path / "start.safetensors", tmp_path / "run"
    shutil.copy(ckpt, start)
    assert main(tiny_args(tiny_data, run, "--epochs", "1", "--init", str(start))) == 0
    (run / "results.json").unlink()  # as if stopped after its last epoch, before the final test
    start.rename(tmp_path / "moved.safetensors")
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0  # the state holds the weights: the file is not read
    assert (run / "results.json").exists()
    # A run that never saved starts over, and needs the file again: one line naming it.
    (run / "results.json").unlink()
    (run / STATE_FILE).unlink()
    one_line_error(capsys, ["train", "--resume", str(run)], f"--init {start}: no such file")


def test_running_out_of_memory_is_one_line_naming_the_batch_size(tiny_data, tmp_path, capsys, monkeypatch):
    from resnetlab.engine.step import Training

    real_step = Training.train_step

    def step(self, x, y, global_step, stop_requested=False):
        if global_step == 3:  # as torch reports it on a GPU; the CPU build raises the same class
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.15 GiB total)")
        return real_step(self, x, y, global_step, stop_requested)

    monkeypatch.setattr(Training, "train_step", step)
    run = tmp_path / "run"
    line = one_line_error(capsys, tiny_args(tiny_data, run, "--save-every", "1"), "out of memory on cpu at --batch-size 50",
                          "CUDA out of memory. Tried to allocate 2.00 GiB", "lower --batch-size (to 25, say)",
                          f"the state saved in {run / STATE_FILE}", f"resnetlab train --resume {run}")
    assert "Traceback" not in line
    assert load_train_state(run / STATE_FILE)["progress"]["global_step"] == 3


def test_running_out_of_memory_while_setting_up_leaves_no_run_folder(tiny_data, tmp_path, capsys, monkeypatch):
    import resnetlab.engine.setup as setup

    def full(*args, **kwargs):  # as moving the data onto a GPU that is too small would
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")

    monkeypatch.setattr(setup, "_loaders", full)
    run = tmp_path / "run"
    one_line_error(capsys, tiny_args(tiny_data, run), "out of memory on cpu at --batch-size 50", "lower --batch-size")
    assert not run.exists()


@pytest.mark.slow
def test_a_run_resumes_where_its_data_moved_with_data_and_only_with_the_same_images(finished_run, tiny_data, tmp_path,
                                                                                       capsys):
    import shutil

    run = shutil.copytree(finished_run, tmp_path / "run")
    (run / "results.json").unlink()  # as if stopped after its last epoch, before the final test
    moved = shutil.copytree(tiny_data, tmp_path / "moved")
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "data": str(tmp_path / "gone")}))
    state = torch.load(run / STATE_FILE, weights_only=True)
    state["config"]["data"] = str(tmp_path / "gone")
    torch.save(state, run / STATE_FILE)  # the run as trained on a folder that is not there any more
    one_line_error(capsys, ["train", "--resume", str(run)], "gone", "does not exist")
    assert main(["train", "--resume", str(run), "--data", str(moved)]) == 0
    assert json.loads((run / "config.json").read_text())["data"] == str(moved)
    other = shutil.copytree(tiny_data, tmp_path / "other")
    write_idx(other / "t10k-images-idx3-ubyte.gz", make_images(200, 99)[0])
    (run / "results.json").unlink()
    one_line_error(capsys, ["train", "--resume", str(run), "--data", str(other)], "the data differ",
                   "--resume RUN_DIR --data DIR")



def test_a_run_written_before_grad_clip_0_meant_off_resumes_unclipped(tiny_data, tmp_path):
    # Before 2026-12-03 a run recorded "no clipping" as null, which now means "not given" (the cpu preset would
    # clip): such a run resumes as it was, not refused for a config that seems to differ, and not clipped.
    from helpers import plain_config
    from resnetlab.engine import Hook, fit
    from resnetlab.weights import read_header

    class StopAfterTheFirstEpoch(Hook):
        def on_epoch_end(self, loop, row):
            raise KeyboardInterrupt  # as a second Ctrl-C would: the epoch's state is saved, the run unfinished

    run = tmp_path / "run"
    config = plain_config(data=str(tiny_data), model="d2l_resnet18", val_split=100, limit_train=100, limit_test=50,
                          batch_size=50, epochs=2, precision="fp32", recalibrate_bn=0, out=str(run))
    with pytest.raises(KeyboardInterrupt):
        fit(config, log=lambda line: None, hooks=[StopAfterTheFirstEpoch()])
    recorded = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**recorded, "grad_clip": None}))
    state = load_train_state(run / STATE_FILE)
    state["config"]["grad_clip"] = None
    torch.save(state, run / STATE_FILE)
    assert main(["train", "--resume", str(run)]) == 0
    assert read_header(run / "last.safetensors").config["grad_clip"] == 0.0
