"""Device and precision selection, with the availability probes monkeypatched; the step guard on the device."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from helpers import one_line_error
from resnetlab.engine import TrainConfig
from resnetlab.config import with_base_defaults
from resnetlab.util import runtime
from resnetlab.engine.schedule import make_optimizer, make_scheduler
from resnetlab.util.runtime import Precision, resolve_device, resolve_precision
from resnetlab.engine.step import Ema, Snapshot, Training
from resnetlab.errors import ResnetlabError


def _machine(monkeypatch, cuda: bool = False, mps: bool = False, fast_bf16: bool = True) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(runtime, "mps_available", lambda: mps)
    monkeypatch.setattr(runtime, "cuda_has_fast_bf16", lambda device: fast_bf16)


@pytest.mark.parametrize("cuda, mps, expected", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_auto_device_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    _machine(monkeypatch, cuda=cuda, mps=mps)
    assert resolve_device("auto").type == expected


def test_missing_devices_are_one_line_errors(monkeypatch, capsys, tiny_data, tmp_path):
    _machine(monkeypatch)
    with pytest.raises(ResnetlabError, match="--device mps: Apple's MPS is not available here"):
        resolve_device("mps")
    with pytest.raises(ResnetlabError, match="--device cuda: no CUDA GPU"):
        resolve_device("cuda")
    one_line_error(capsys, ["train", "--data", str(tiny_data), "--device", "mps", "--out", str(tmp_path / "r")],
                   "--device mps", "use --device cpu or auto")
    assert not (tmp_path / "r").exists()


def test_precision_by_capability(monkeypatch):
    cuda, cpu, mps = torch.device("cuda"), torch.device("cpu"), torch.device("mps")
    _machine(monkeypatch, cuda=True, fast_bf16=True)
    assert resolve_precision("auto", cuda).name == "bf16"
    _machine(monkeypatch, cuda=True, fast_bf16=False)  # a T4 or V100: bf16 only emulated
    assert resolve_precision("auto", cuda) == Precision("fp16") and Precision("fp16").needs_scaler
    assert resolve_precision("auto", mps).name == "fp32"
    monkeypatch.setenv("RESNETLAB_CPU_BF16", "0")  # the switch that makes any CPU act as one without native bf16
    assert resolve_precision("auto", cpu).name == "fp32"
    monkeypatch.setenv("RESNETLAB_CPU_BF16", "1")
    assert resolve_precision("auto", cpu).name == "bf16"
    assert resolve_precision("fp64", cpu).dtype == torch.float64
    with pytest.raises(ResnetlabError, match="--precision fp16 needs a GPU"):
        resolve_precision("fp16", cpu)
    with pytest.raises(ResnetlabError, match="--precision fp64 runs on the CPU only"):
        resolve_precision("fp64", cuda)


def test_fp16_on_the_cpu_is_refused_in_one_line(capsys, tiny_data, tmp_path):
    one_line_error(capsys, ["train", "--data", str(tiny_data), "--device", "cpu", "--precision", "fp16",
                            "--out", str(tmp_path / "r")], "--precision fp16 needs a GPU")
    assert not (tmp_path / "r").exists()


def _training(skip: bool = False, ema: bool = True, precision: str = "fp32") -> Training:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    config = with_base_defaults(TrainConfig(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3, schedule="onecycle",
                                            warmup_epochs=1, epochs=3, skip_nonfinite=skip))
    optimizer = make_optimizer(config, model)
    return Training(config, model, model, optimizer, make_scheduler(config, optimizer, 4), nn.CrossEntropyLoss(),
                    Ema(model, 0.9) if ema else None, torch.device("cpu"), Precision(precision))


def _snapshot(t: Training) -> dict:
    return copy.deepcopy({"model": t.model.state_dict(), "opt": t.optimizer.state_dict(),
                          "ema": t.ema.module.state_dict() if t.ema else None, "lr": t.optimizer.param_groups[0]["lr"]})


def _batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 1, 8, 8, generator=gen), torch.randint(0, 3, (8,), generator=gen)) for _ in range(n)]


def _equal(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


def test_a_bad_step_halts_on_the_device_and_leaves_the_state_before_it():
    batches = _batches(7)
    training = _training()
    for step, (x, y) in enumerate(batches[:3]):
        assert training.train_step(x, y, step).applied
    before = _snapshot(training)
    poisoned = torch.full_like(batches[3][0], float("nan"))
    assert not training.train_step(poisoned, batches[3][1], 3).applied
    for step, (x, y) in enumerate(batches[4:], start=4):  # steps between two readings apply nothing
        assert not training.train_step(x, y, step).applied
    reading = training.guard.read()
    assert reading.halted and reading.first_bad == 3 and reading.skipped == 0
    training.rewind(reading.first_bad)
    assert _equal(_snapshot(training), before)  # weights, batch norm, momentum, EMA and lr, bit for bit


def test_skip_mode_skips_each_bad_step_and_applies_the_rest():
    batches = _batches(5)
    skipping, reference = _training(skip=True), _training(skip=True)
    for step, (x, y) in enumerate(batches):
        bad = step == 2
        out = skipping.train_step(torch.full_like(x, float("inf")) if bad else x, y, step)
        assert bool(out.applied) is not bad
        if bad:
            reference.scheduler.step()  # a skipped step advances only the schedule
        else:
            reference.train_step(x, y, step)
    reading = skipping.guard.read()
    assert not reading.halted and reading.skipped == 1 and skipping.guard.read().skipped == 0
    assert _equal(_snapshot(skipping), _snapshot(reference))


def test_fp16_overflow_is_the_scalers_business_not_a_bad_step(tmp_path):
    # fp16 autocast on the CPU exists in PyTorch for testing; the command line refuses it (no fast kernels).
    training = _training(ema=False, precision="fp16")
    training.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**100)  # every gradient overflows at first
    x, y = _batches(1)[0]
    before = copy.deepcopy(dict(training.model.named_parameters()))
    out = training.train_step(x, y, 0)
    assert out.applied and training.guard.read() == (False, -1, 0, False)  # judged good: no exit 3
    assert _equal(dict(training.model.named_parameters()), before)  # but the overflowing update was skipped ...
    assert training.scaler.get_scale() == 2.0**99  # ... and the scale lowered
    # The scale travels through train_state.pt, so a resumed fp16 run goes on with it.
    from resnetlab.engine.state import Progress, load_train_state, restore_train_state, save_train_state

    save_train_state(tmp_path / "train_state.pt", training, Progress(), None, {}, {"train": "fingerprint"})
    again = _training(ema=False, precision="fp16")
    again.scaler = torch.amp.GradScaler("cpu")
    restore_train_state(load_train_state(tmp_path / "train_state.pt"), again)
    assert again.scaler.get_scale() == 2.0**99 and again.scaler.state_dict() == training.scaler.state_dict()


class _CountOps(TorchDispatchMode):
    """Records the ATen operations dispatched inside it (on a GPU each is one kernel launch or more)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def _blocks(n: int) -> nn.Module:
    return nn.Sequential(*[nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2)) for _ in range(n)])


def test_the_guard_takes_and_puts_back_the_buffers_in_as_many_operations_for_any_model():
    keep = torch.tensor(False)
    seen = []
    for n in (1, 30):  # 3 buffers against 90
        snapshot = Snapshot(list(_blocks(n).buffers()))
        with _CountOps() as taking:
            snapshot.take()
        with _CountOps() as putting:
            snapshot.put_back(keep)
        seen.append((taking.ops, putting.ops))
    assert seen[0] == seen[1]
    # Two dtypes (the float statistics, the long batch counters): one fused copy each to take; to put back
    # a fused copy in, one select and a fused copy out each.
    assert len(seen[0][0]) == 2 and len(seen[0][1]) == 6, seen[0]


def test_a_snapshot_puts_back_bit_for_bit_and_lets_no_nan_through():
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn(3, generator=gen), torch.randn(2, 2, generator=gen), torch.tensor(7), torch.randn((), generator=gen),
               torch.zeros(0), torch.randn(4, generator=gen, dtype=torch.float64)]
    before = [t.clone() for t in tensors]
    addresses = [t.data_ptr() for t in tensors]
    snapshot = Snapshot(tensors)
    snapshot.take()

    def spoil() -> list[torch.Tensor]:
        for t in tensors:
            if t.is_floating_point():
                t.copy_(torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0]).to(t.dtype).repeat(2)[:t.numel()]
                        .view(t.shape))
            else:
                t.add_(1)
        return [t.clone() for t in tensors]

    def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
        as_int = {torch.float32: torch.int32, torch.float64: torch.int64}
        return torch.equal(a.view(as_int[a.dtype]), b.view(as_int[b.dtype])) if a.is_floating_point() else torch.equal(a, b)

    spoilt = spoil()
    snapshot.put_back(torch.tensor(True))  # kept: the new values, NaN and -0.0 included, as they are
    assert all(same_bits(t, s) for t, s in zip(tensors, spoilt))
    snapshot.put_back(torch.tensor(False))  # put back: what was taken, with nothing of the NaN or inf
    assert all(same_bits(t, b) for t, b in zip(tensors, before))
    assert [t.data_ptr() for t in tensors] == addresses  # the module's own tensors, written in place
