"""Several processes (gloo on CPU): the global batch is what one process would compute; a dead rank ends the job.

Why float64: in float32 a rounding-level difference (another thread count, the batch split over
ranks) can flip a ReLU whose input lies within rounding of zero, which moves a gradient by tenths
of a percent after a single step, so float32 runs cannot show that two processes compute what
one computes. In float64 (``--precision fp64``) rounding is 1e-16, and the real command line
under torchrun must agree with one process within a small multiple of what a change of thread
count moves, measured in the same test.
"""

from __future__ import annotations

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

from helpers import SIGNAL_CHILD, signal_child_env, wait_for

pytestmark = pytest.mark.multiprocess


def torchrun(*args: str, nproc: int = 2, script: Path | None = None, env: dict | None = None,
             command: str = "train") -> subprocess.Popen:
    """``torchrun -m resnetlab COMMAND ARGS``, or with ``script`` (a file holding helpers.SIGNAL_CHILD) instead of the module."""
    env = {**os.environ, **(env or {}), "OMP_NUM_THREADS": "1"}
    program = [str(script)] if script is not None else ["-m", "resnetlab"]
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
         *program, command, *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def single(*args: str, threads: str = "1") -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": threads}
    return subprocess.run([sys.executable, "-m", "resnetlab", "train", *args], env=env,
                          capture_output=True, text=True, timeout=300)


def _worst_relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """max over float tensors of ||a - b|| / ||a|| (weights and batch-norm statistics)."""
    worst = 0.0
    for k in a:
        if a[k].is_floating_point():
            x, y = a[k].double(), b[k].double()
            worst = max(worst, ((x - y).norm() / x.norm().clamp_min(1e-300)).item())
    return worst


@pytest.mark.slow
@pytest.mark.parametrize("model", ["d2l_resnet18", "resnet18"])
def test_torchrun_two_processes_train_what_one_trains(tiny_data, tmp_path, model):
    # The real command line, the cpu preset's recipe (crop, flip, label smoothing, Nesterov, one-cycle),
    # 2 epochs of 5 steps, in float64 so that rounding cannot hide a difference in what is computed.
    # The floor is measured here: one process with 1 thread against 2 threads (the same computation,
    # summed in another order). Measured 2026-11-28: two processes 5e-14 (d2l) and 2e-13 (resnet18)
    # from one, floors 6e-12. In float32 the same runs part by about 1e-3 after one step, and so do
    # 1 and 2 threads: one ReLU whose input lies within float32 rounding of zero flips (README).
    args = ["--data", str(tiny_data), "--preset", "cpu", "--model", model, "--sync-bn", "--seed", "5",
            "--batch-size", "64", "--lr", "0.01", "--precision", "fp64", "--no-channels-last", "--val-split", "100",
            "--limit-train", "320", "--limit-test", "64", "--epochs", "2", "--device", "cpu", "--time-budget", "0"]
    proc = torchrun(*args, "--out", str(tmp_path / "two"))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    lines = out.strip().splitlines()
    assert sum(f"training {model}" in line for line in lines) == 1 and "x 2 processes" in out  # rank 0 speaks for all
    for name, threads in (("one", "1"), ("one-2-threads", "2")):
        ref = single(*args, "--out", str(tmp_path / name), threads=threads)
        assert ref.returncode == 0, ref.stderr
    one, two, floor = (load_file(str(tmp_path / d / "last.safetensors")) for d in ("one", "two", "one-2-threads"))
    measured_floor = _worst_relative_difference(one, floor)
    assert 0 < measured_floor < 1e-9  # float64 rounding, grown over 10 steps
    assert _worst_relative_difference(one, two) <= 10 * measured_floor
    ra, rb = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two"))
    assert ra["test_acc"] == rb["test_acc"] and ra["best_val_acc"] == rb["best_val_acc"]
    if model == "d2l_resnet18":
        # The comparison can fail: without --sync-bn each process normalises its own half of the batch.
        proc = torchrun(*[a for a in args if a != "--sync-bn"], "--out", str(tmp_path / "two-local-bn"))
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
        local = load_file(str(tmp_path / "two-local-bn" / "last.safetensors"))
        assert _worst_relative_difference(one, local) > 1e6 * measured_floor


def _children(pid: int) -> list[int]:
    """The child processes of ``pid`` (torchrun's workers), from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            if int(fields[1]) == pid:  # the field after the state is the parent's pid
                found.append(int(entry))
    return sorted(found)


@pytest.mark.slow
def test_a_dead_rank_ends_the_job(tiny_data, tmp_path):
    run = tmp_path / "run"
    proc = torchrun("--data", str(tiny_data), "--out", str(run), "--model", "d2l_resnet18", "--val-split", "100",
                    "--batch-size", "32", "--epochs", "20", "--precision", "fp32", "--save-every", "1",
                    "--dist-timeout", "20", "--time-budget", "0")
    deadline = time.monotonic() + 120
    while not (run / "train_state.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() is not None else "slow"
        time.sleep(0.05)
    workers = _children(proc.pid)
    assert len(workers) == 2, workers
    os.kill(workers[1], signal.SIGKILL)  # one rank dies without a word
    code = proc.wait(timeout=90)  # never a hang: the job ends (a hang would wait for ever; 90 s is 4.5 --dist-timeouts)
    assert code != 0
    assert not (run / "results.json").exists()


@pytest.mark.slow
def test_sigterm_to_torchrun_saves_and_all_ranks_resume_exactly(tiny_data, tmp_path):
    args = ["--data", str(tiny_data), "--model", "d2l_resnet18", "--val-split", "100", "--limit-train", "192",
            "--batch-size", "32", "--epochs", "2", "--precision", "fp32", "--no-channels-last", "--sync-bn",
            "--time-budget", "0"]
    whole = torchrun(*args, "--out", str(tmp_path / "whole"))
    assert whole.wait(timeout=300) == 0, whole.stderr.read()
    run = tmp_path / "stopped"
    # Rank 0 waits after its first save until the signal has reached it, so the run cannot end first.
    script, marker = tmp_path / "signal_child.py", tmp_path / "saved"
    script.write_text(SIGNAL_CHILD)
    # Streamed (each rank gathers only its share of each batch from the source), the whole run resident.
    proc = torchrun(*args, "--feed", "stream", "--save-every", "2", "--out", str(run), script=script,
                    env=signal_child_env(1, marker=marker))
    wait_for(marker, proc)
    proc.send_signal(signal.SIGTERM)  # as a cluster scheduler would; torchrun passes it on to every rank
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "SIGTERM received: finishing the current step" in out
    assert not (run / "results.json").exists()
    resumed = torchrun("--resume", str(run))
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "resuming d2l_resnet18" in out and "x 2 processes" in out and "images streamed batch by batch" in out
    a, b = load_file(str(tmp_path / "whole" / "last.safetensors")), load_file(str(run / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # same topology, same bits


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def two_nodes(args: list[str], cwds: list[Path], *, script: Path | None = None,
              env0: dict | None = None) -> list[subprocess.Popen]:
    """Two torchrun "nodes" of one process each (``--nnodes 2 --node_rank 0|1``, rendezvous on 127.0.0.1), each
    started in its own working directory, as on two machines; ``script``/``env0`` only on node 0."""
    port = _free_port()
    procs = []
    for rank, cwd in enumerate(cwds):
        cwd.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **((env0 or {}) if rank == 0 else {}), "OMP_NUM_THREADS": "1"}
        program = [str(script)] if script is not None and rank == 0 else ["-m", "resnetlab"]
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
             "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port), *program, "train", *args],
            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


@pytest.mark.slow
def test_two_nodes_train_what_one_process_trains_and_resume_after_sigterm(tiny_data, tmp_path):
    # What must be shared between machines is the data and the run folder (absolute paths here); the working
    # directories are not: node 1's must stay empty, since only global rank 0 writes.
    args = ["--data", str(tiny_data), "--preset", "cpu", "--model", "d2l_resnet18", "--sync-bn", "--seed", "3",
            "--batch-size", "64", "--lr", "0.01", "--precision", "fp64", "--no-channels-last", "--val-split", "100",
            "--limit-train", "320", "--limit-test", "64", "--epochs", "2", "--device", "cpu", "--time-budget", "0"]
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    procs = two_nodes([*args, "--out", str(tmp_path / "two")], nodes)
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    assert "x 2 processes" in outs[0][0] and outs[1][0].strip() == ""  # node 1 prints nothing: rank 0 speaks for all
    assert list(nodes[1].iterdir()) == []
    for name, threads in (("one", "1"), ("one-2-threads", "2")):
        ref = single(*args, "--out", str(tmp_path / name), threads=threads)
        assert ref.returncode == 0, ref.stderr
    one, two, floor = (load_file(str(tmp_path / d / "last.safetensors")) for d in ("one", "two", "one-2-threads"))
    measured_floor = _worst_relative_difference(one, floor)
    assert 0 < measured_floor < 1e-9
    assert _worst_relative_difference(one, two) <= 10 * measured_floor
    ra, rb = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two"))
    assert ra["test_acc"] == rb["test_acc"] and ra["best_val_acc"] == rb["best_val_acc"]

    # SIGTERM to both nodes' torchrun, as a scheduler ends a job; then both resume from the shared run folder.
    run = tmp_path / "stopped"
    script, marker = tmp_path / "signal_child.py", tmp_path / "saved"
    script.write_text(SIGNAL_CHILD)
    nodes = [tmp_path / "again0", tmp_path / "again1"]
    procs = two_nodes([*args, "--save-every", "2", "--out", str(run)], nodes, script=script,
                      env0=signal_child_env(1, marker=marker))
    wait_for(marker, procs[0])
    for p in procs:
        p.send_signal(signal.SIGTERM)
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode != 0 for p in procs) and "SIGTERM received: finishing the current step" in outs[0][0]
    assert not (run / "results.json").exists()
    procs = two_nodes(["--resume", str(run)], nodes)
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    assert "resuming d2l_resnet18" in outs[0][0] and "x 2 processes" in outs[0][0]
    assert list(nodes[1].iterdir()) == []
    a, b = load_file(str(tmp_path / "two" / "last.safetensors")), load_file(str(run / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same two nodes, stopped and resumed: the same bits


def test_lr_find_under_torchrun_steps_every_rank_and_rank_0_draws(tiny_data, tmp_path):
    proc = torchrun("--data", str(tiny_data), "--model", "resnet18", "--model-args", '{"stem": "small"}',
                    "--limit-train", "300", "--val-split", "100", "--batch-size", "50", "--precision", "fp32",
                    "--steps", "6", "--end-lr", "1", "--plot", str(tmp_path / "curve.png"), "--out", str(tmp_path / "runs"),
                    command="lr-find")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert out.count("lr-find: suggested lr") == 1  # one report, from rank 0
    assert "batch 50, sgd, fp32, 2 processes (the global batch split among them)" in out
    assert "lr-find: 6 steps from lr 1e-07 to 1" in out
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "runs").exists()  # nothing trained is kept, by any rank
