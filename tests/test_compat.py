"""PyTorch's private corners (util/compat.py): each still there and doing what we rely on; an upgrade that moves one fails here."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from resnetlab.util import compat

SRC = Path(__file__).resolve().parents[1] / "src" / "resnetlab"


def test_foreach_kernels_compute_what_their_loops_compute():
    a, b = [torch.ones(3), torch.full((2, 2), 2.0)], [torch.zeros(3), torch.ones(2, 2)]
    compat.foreach_copy_(b, a)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert [float(n) for n in compat.foreach_norm(a)] == pytest.approx([3 ** 0.5, 4.0])
    delta = compat.foreach_sub(a, [torch.zeros(3), torch.ones(2, 2)])
    compat.foreach_mul_(delta, torch.tensor(0.5))
    compat.foreach_add_(b, delta)
    assert torch.equal(b[0], torch.full((3,), 1.5)) and torch.equal(b[1], torch.full((2, 2), 2.5))


def test_the_cpu_has_fused_sgd_and_a_found_inf_flag_skips_its_step():
    assert "cpu" in compat.fused_optimizer_devices() and "cuda" in compat.fused_optimizer_devices()
    weight = nn.Parameter(torch.ones(4))
    optimizer = torch.optim.SGD([weight], lr=0.1, fused=True)  # no momentum: a skipped first step leaves its buffer unset
    weight.grad = torch.ones(4)
    compat.skip_step_if(optimizer, torch.tensor(1.0))
    optimizer.step()
    assert torch.equal(weight.detach(), torch.ones(4))  # skipped on the device
    compat.skip_step_if(optimizer, torch.tensor(0.0))
    optimizer.step()
    assert torch.allclose(weight.detach(), torch.full((4,), 0.9))  # applied


def test_the_loss_scalers_state_is_its_scale_and_growth_counter_on_the_device():
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    scaler.scale(torch.ones(()))  # creates them
    scale, growth = compat.loss_scale_tensors(scaler)
    assert float(scale) == 8.0 and int(growth) == 0
    scale.fill_(4.0)  # the tensors themselves: writing them changes the scaler
    assert scaler.get_scale() == 4.0


def test_every_batch_norm_derives_from_the_base_class():
    assert all(issubclass(kind, compat.BatchNormBase) for kind in (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm))
    assert not issubclass(nn.LayerNorm, compat.BatchNormBase)


def test_a_compiled_module_gives_its_original_and_its_keys_carry_the_prefix():
    net = nn.Linear(2, 2)
    compiled = torch.compile(net, backend="eager")
    assert compat.compiled_original(compiled) is net and compat.compiled_original(net) is None
    assert all(k.startswith(compat.WRAPPER_KEY_PREFIXES[1]) for k in compiled.state_dict())


def test_the_error_texts_we_match_are_the_ones_pytorch_gives(tmp_path):
    path = tmp_path / "hostile.pt"
    torch.save({"weights": torch.ones(1), "object": Path("x")}, path)  # a global the weights-only unpickler refuses
    with pytest.raises(pickle.UnpicklingError) as refused:
        torch.load(path, weights_only=True)
    assert compat.refused_by_weights_only(refused.value)
    assert not compat.refused_by_weights_only(pickle.UnpicklingError("invalid load key, 'x'."))
    with pytest.raises(RuntimeError) as oom:
        torch.empty(1 << 62, dtype=torch.uint8)  # the CPU allocator's own message
    assert compat.is_out_of_memory(oom.value)
    assert not compat.is_out_of_memory(RuntimeError("shapes cannot be multiplied"))
    assert compat.is_comm_failure(RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer"))
    assert not compat.is_comm_failure(RuntimeError("shapes cannot be multiplied"))


def test_no_other_module_touches_a_private_pytorch_name_or_matches_an_error_text():
    private = re.compile(r"(?:torch|nn)\.(?:\w+\.)*_(?!_)\w+|\._orig_mod\b|\.found_inf\b|\._scale\b|\._growth_tracker\b"
                         r"|str\(exc\)\.lower\(\)")
    found = [f"{path.relative_to(SRC)}:{n}: {line.strip()}"
             for path in SRC.rglob("*.py") if path.name != "compat.py"
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if private.search(line) and not line.lstrip().startswith("#")]
    assert found == []
