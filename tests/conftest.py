"""Shared fixtures: CPU only, few threads, tiny generated data, and one finished tiny run.

Tests that need the real Fashion-MNIST skip where it is not installed. Helpers (data writers,
the seed's trace, a fake clock) live in ``helpers.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import REAL_DATA, plain_config, write_fashion_mnist

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A folder holding a tiny generated Fashion-MNIST (600 train, 200 test images)."""
    return write_fashion_mnist(tmp_path_factory.mktemp("fmnist"))


@pytest.fixture
def real_data() -> Path:
    """Debian's Fashion-MNIST folder; the test is skipped where it is not installed."""
    if not (REAL_DATA / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    return REAL_DATA


@pytest.fixture(scope="session")
def trained(tiny_data, tmp_path_factory):
    """A finished tiny run (fp32, so figures can be compared exactly), trained once for the whole test run; its folder."""
    from resnetlab.engine import fit

    out = tmp_path_factory.mktemp("trained") / "run"
    config = plain_config(
        model="resnet18", data=str(tiny_data), val_split=100, limit_train=500,
        batch_size=50, epochs=2, lr=0.05, momentum=0.9, precision="fp32", out=str(out),
    )
    fit(config, log=lambda line: None)
    return out


@pytest.fixture(scope="session")
def ckpt(trained):
    return trained / "best.safetensors"
