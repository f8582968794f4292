"""One process per run folder: a second writer is refused in one line naming the live one; a dead one's lock is gone.

The live run is a real ``resnetlab train`` child that pauses after a save until the test releases
it (helpers.SIGNAL_CHILD's "pause"), so it is certainly alive, mid-run, holding its folder, while
the second process tries, whatever the machine's speed; then it trains on to a normal end.
"""

from __future__ import annotations

import json
import os
import signal

import pytest

from helpers import one_line_error, train_child, wait_for
from resnetlab.cli import main
from resnetlab.errors import ResnetlabError
from resnetlab.util.locks import RUN_LOCK, RunLock, exclusive_lock, run_folder_around

RUN = ["--model", "d2l_resnet18", "--val-split", "100", "--limit-train", "200", "--limit-test", "50",
       "--batch-size", "50", "--epochs", "3", "--precision", "fp32", "--preset", "cpu", "--time-budget", "0"]


def test_a_second_lock_on_a_folder_is_refused_naming_the_holder(tmp_path):
    first = RunLock.acquire(tmp_path, command="resnetlab train --out x")
    with pytest.raises(ResnetlabError) as refused:
        RunLock.acquire(tmp_path)
    message = str(refused.value)
    assert f"{tmp_path} is in use by process {os.getpid()} (resnetlab train --out x, since " in message
    assert "\n" not in message
    first.release()
    RunLock.acquire(tmp_path).release()  # free again; the lock file stays, unlocked
    assert (tmp_path / RUN_LOCK).is_file()


def test_run_folder_around_finds_the_run_a_file_would_be_written_into(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert run_folder_around(run / "best.onnx") is None  # not (yet) a run
    (run / "config.json").write_text("{}")
    assert run_folder_around(run / "best.onnx") is None  # a config.json alone is not a run (a project's, say)
    (run / "best.safetensors").write_bytes(b"")
    assert run_folder_around(run / "best.onnx") == run
    assert run_folder_around(run / "eval-best" / "report.json") == run
    assert run_folder_around(tmp_path / "elsewhere" / "report.json") is None


def test_exclusive_lock_is_exclusive_while_held_and_free_after(tmp_path):
    import fcntl

    path = tmp_path / ".cache.lock"
    with exclusive_lock(path):
        other = os.open(path, os.O_RDWR)  # another process's view: its own open file
        with pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released at the block's end
    os.close(other)
    folder = tmp_path / "data"
    folder.mkdir()
    with exclusive_lock(folder):  # a folder is locked as itself, adding no file to it
        other = os.open(folder, os.O_RDONLY)
        with pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(other)
    assert list(folder.iterdir()) == []


@pytest.mark.slow
def test_a_live_run_refuses_a_second_writer_and_ends_unharmed(tiny_data, tmp_path, capsys):
    run, marker, release = tmp_path / "run", tmp_path / "paused", tmp_path / "go"
    proc = train_child(["--data", str(tiny_data), "--out", str(run), *RUN], 2, marker=marker, release=release,
                       env={"OMP_NUM_THREADS": "1"})
    wait_for(marker, proc)  # after epoch 2's state: epoch 1's weights and files are written, the run is alive
    config_before = (run / "config.json").read_text()
    holder = f"in use by process {proc.pid} ("
    # A second train --resume of the live run, a second run told the same --out, eval and export into its folder.
    one_line_error(capsys, ["train", "--resume", str(run)], holder, "wait for it to end")
    one_line_error(capsys, ["train", "--data", str(tiny_data), "--out", str(run), *RUN], holder)
    one_line_error(capsys, ["eval", str(run / "best.safetensors")], holder, "or write elsewhere with --out")
    one_line_error(capsys, ["export", str(run / "best.safetensors")], holder)
    assert not (run / "eval-best").exists() and not (run / "best.onnx").exists()
    assert (run / "config.json").read_text() == config_before
    # Outside the run's folder an eval may read its weights while it trains.
    assert main(["eval", str(run / "best.safetensors"), "--out", str(tmp_path / "eval")]) == 0
    release.touch()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert json.loads((run / "results.json").read_text())["best_epoch"] >= 1
    assert len((run / "metrics.csv").read_text().strip().splitlines()) == 1 + 3  # header and all 3 epochs
    assert out.strip().splitlines()[-1].endswith("examples/sec on cpu") and "Traceback" not in err
    # Ended, it is free: eval writes into it now.
    assert main(["eval", str(run / "best.safetensors")]) == 0
    assert (run / "eval-best" / "report.json").is_file()


@pytest.mark.slow
def test_a_lock_left_by_a_killed_run_does_not_block_its_resume(tiny_data, tmp_path):
    run, marker = tmp_path / "run", tmp_path / "saved"
    proc = train_child(["--data", str(tiny_data), "--out", str(run), *RUN], 1, marker=marker,
                       env={"OMP_NUM_THREADS": "1"})
    wait_for(marker, proc)
    holder = json.loads((run / RUN_LOCK).read_text())
    assert holder["pid"] == proc.pid and "train" in holder["command"]
    proc.send_signal(signal.SIGKILL)  # no handler runs: the lock file stays, naming a dead process
    proc.communicate(timeout=60)
    assert (run / RUN_LOCK).is_file()
    assert main(["train", "--resume", str(run)]) == 0
    assert (run / "results.json").is_file()
    assert json.loads((run / RUN_LOCK).read_text())["pid"] == os.getpid()  # the resume held it
