"""The GPU suite's script works before any GPU time is spent: its smoke run on the CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_suite_smoke_on_the_cpu(tiny_data, tmp_path):
    log = tmp_path / "suite.log"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--smoke", "--tune", "--device", "cpu",
         "--data", str(tiny_data), "--log", str(log)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    table = done.stdout[done.stdout.index("== GPU suite"):]
    assert "FAILED" not in done.stdout, done.stdout
    for row in ("bf16 matmul peak", "d2l vs book (smoke)", "fast preset, seed(s) 0", "best preset, seed(s) 0",
                "fast step: model FLOP/s", "pytest -m gpu", "tune fast"):
        assert row in table, (row, table)
    assert log.read_text().strip().endswith(done.stdout.strip().splitlines()[-1])  # every line copied to the log
