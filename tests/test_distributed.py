"""Several processes (gloo on CPU): the global batch is what one process would compute; a dead rank ends the job.

Why two kinds of comparison: in float32 this network's training is chaotic at these sizes
(the last stage sees 1x1 feature maps): two single-process runs that differ only in their
thread count (so in float rounding) drift apart by tens of percent of the weight change after
a few dozen steps. So the exactness of the distributed computation (rank slices of each global
batch, batch norm over the global batch, gradient averaging) is shown in float64 over 24 steps,
where rounding stays far below the tolerance; the real command under torchrun is compared with
one process in float32 within what rounding alone moves (measured and quoted in the test).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

pytestmark = pytest.mark.multiprocess

STEPS = int(os.environ.get("RESNETLAB_TEST_STEPS", "24"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_float64(data, rank: int, world: int, port: int, out: str | None) -> dict[str, torch.Tensor]:
    """Train d2l_resnet18 in float64 for STEPS steps with our loader, step and (under world > 1) DDP + sync BN."""
    from resnetlab.data import Augment, DeviceLoader
    from resnetlab.engine import TrainConfig
    from resnetlab.engine.distributed import convert_sync_batchnorm, wrap_ddp
    from resnetlab.engine.optim import make_optimizer, make_scheduler
    from resnetlab.engine.steps import Training
    from resnetlab.engine.initialize import build_model

    torch.set_num_threads(1)
    if world > 1:
        import torch.distributed as dist

        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    config = TrainConfig(lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4, label_smoothing=0.1,
                         schedule="onecycle", warmup_epochs=1, epochs=2, batch_size=32)
    torch.manual_seed(0)
    model = build_model(config, 1, 10).double()
    step_model = model
    if world > 1:
        model = convert_sync_batchnorm(model, "cpu")
        step_model = wrap_ddp(model, torch.device("cpu"))
    loader = DeviceLoader(data, 32, device="cpu", image_size=28, shuffle=True, drop_last=True, seed=0,
                          augment=Augment(crop_padding=2, flip=True), rank=rank, world_size=world)
    optimizer = make_optimizer(config, model)
    training = Training(config, model, step_model, optimizer, make_scheduler(config, optimizer, len(loader)),
                        nn.CrossEntropyLoss(label_smoothing=0.1), None, torch.device("cpu"), False,
                        distributed=world > 1)
    batches = ((x, y) for epoch in range(config.epochs) for x, y in loader.batches(epoch))
    for _, (x, y) in zip(range(STEPS), batches):
        assert training.train_step(x.double(), y) is not None
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if world > 1:
        if rank == 0:
            torch.save(state, out)
        torch.distributed.destroy_process_group()
    return state


def _worker(rank: int, data, port: int, out: str) -> None:
    _train_float64(data, rank, 2, port, out)


@pytest.mark.slow
def test_two_ranks_compute_the_one_process_global_batch_in_float64(tiny_data, tmp_path):
    import torch.multiprocessing as mp

    from resnetlab.data import load_split

    data = load_split(tiny_data, "train").subset(torch.arange(320))  # 10 steps per epoch
    threads = torch.get_num_threads()
    try:
        one = _train_float64(data, 0, 1, 0, None)
    finally:
        torch.set_num_threads(threads)  # the reference runs in this process; leave it as it was
    out = str(tmp_path / "two.pt")
    mp.spawn(_worker, args=(data, _free_port(), out), nprocs=2)
    two = torch.load(out, weights_only=True)
    assert one.keys() == two.keys()
    for name in one:
        if one[name].is_floating_point():
            scale = one[name].abs().max().item() + 1e-12
            assert (one[name] - two[name]).abs().max().item() <= 1e-7 * scale + 1e-12, name
        else:
            assert torch.equal(one[name], two[name]), name  # num_batches_tracked


def torchrun(*args: str, nproc: int = 2) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
         "-m", "resnetlab", "train", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def single(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "resnetlab", "train", *args], env=env,
                          capture_output=True, text=True, timeout=300)


# Float32 and contiguous tensors: on CPU, channels-last backward at this net's 1x1 last stage
# strays about 0.3% from float64 in PyTorch 2.13. 56 px and 30 steps at lr 0.01 end near 0.9
# test accuracy on the tiny data, where rounding moves it by at most a few images.
COMMON = ["--model", "d2l_resnet18", "--val-split", "100", "--limit-train", "480", "--batch-size", "32",
          "--epochs", "2", "--precision", "fp32", "--no-channels-last", "--lr", "0.01", "--image-size", "56"]


def _relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    keys = [k for k in a if a[k].is_floating_point() and "running" not in k]
    num = sum((a[k].double() - b[k].double()).pow(2).sum().item() for k in keys)
    return (num / sum(a[k].double().pow(2).sum().item() for k in keys)) ** 0.5


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tiny_data, tmp_path):
    proc = torchrun("--data", str(tiny_data), "--out", str(tmp_path / "two"), "--sync-bn", *COMMON)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    lines = out.strip().splitlines()
    assert lines[0] == "no --preset given: using 'cpu' (no CUDA GPU)"  # once: rank 0 speaks for all
    assert sum("training d2l_resnet18" in line for line in lines) == 1 and "x 2 processes" in lines[1]
    ref = single("--data", str(tiny_data), "--out", str(tmp_path / "one"), *COMMON)
    assert ref.returncode == 0, ref.stderr
    ra, rb = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two"))
    # Measured 2026-11-26: one process with 1 vs 2 threads differ by 0.6% of the weights and one
    # test image; two processes with --sync-bn by 3% and none; without --sync-bn by 4% and 36 images.
    assert abs(ra["test_acc"] - rb["test_acc"]) <= 0.02 and abs(ra["best_val_acc"] - rb["best_val_acc"]) <= 0.03
    assert abs(ra["train_loss"] - rb["train_loss"]) < 0.05
    a, b = load_file(str(tmp_path / "one" / "last.safetensors")), load_file(str(tmp_path / "two" / "last.safetensors"))
    assert _relative_difference(a, b) < 0.1


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
                    "--dist-timeout", "20")
    deadline = time.monotonic() + 120
    while not (run / "train_state.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() is not None else "slow"
        time.sleep(0.05)
    workers = _children(proc.pid)
    assert len(workers) == 2, workers
    os.kill(workers[1], signal.SIGKILL)  # one rank dies without a word
    start = time.monotonic()
    code = proc.wait(timeout=90)  # never a hang: the job ends well inside the timeout
    assert code != 0
    assert time.monotonic() - start < 60
    assert not (run / "results.json").exists()


@pytest.mark.slow
def test_sigterm_to_torchrun_saves_and_all_ranks_resume_exactly(tiny_data, tmp_path):
    args = ["--data", str(tiny_data), "--model", "d2l_resnet18", "--val-split", "100", "--limit-train", "192",
            "--batch-size", "32", "--epochs", "2", "--precision", "fp32", "--no-channels-last", "--sync-bn"]
    whole = torchrun(*args, "--out", str(tmp_path / "whole"))
    assert whole.wait(timeout=300) == 0, whole.stderr.read()
    run = tmp_path / "stopped"
    proc = torchrun(*args, "--save-every", "2", "--out", str(run))
    while not (run / "train_state.pt").exists():
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # as a cluster scheduler would; torchrun passes it on to every rank
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "SIGTERM received: finishing the current step" in out
    assert not (run / "results.json").exists()
    resumed = torchrun("--resume", str(run))
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "resuming d2l_resnet18" in out and "x 2 processes" in out
    a, b = load_file(str(tmp_path / "whole" / "last.safetensors")), load_file(str(run / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # same topology, same bits
