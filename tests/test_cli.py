"""The command line: the seed's lines from `resnetlab summary`, and one-line errors with exit 2."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import one_line_error
from resnetlab.cli import main
from helpers import SEED_TRACE
from helpers import every_model


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "resnetlab", *args], capture_output=True, text=True, timeout=300
    )


def assert_user_error(result, *needles):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0]


def test_summary_prints_the_seed_lines_first():
    result = run_cli("summary", "d2l_resnet18", "--input-size", "1,1,256,256")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:8] == SEED_TRACE.splitlines()
    assert "Total params: 11,178,378" in result.stdout


def test_console_script_is_installed():
    script = Path(sys.executable).parent / ("resnetlab.exe" if os.name == "nt" else "resnetlab")
    if not script.exists():
        pytest.skip("resnetlab is not installed as a console script in this environment")
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("resnetlab ")


def test_unknown_model(capsys):
    one_line_error(capsys, ["summary", "resnet19"], "resnet19", "valid names", "d2l_resnet18", "resnet50")


@pytest.mark.parametrize("size", ["1,1,256", "a,b,c,d", "1,1,0,5", "1,1,-2,5", "", "1,1,2,3,4"])
def test_malformed_input_size(size, capsys):
    assert main(["summary", "d2l_resnet18", "--input-size", size]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--input-size" in err[0] and "N,C,H,W" in err[0]


def test_wrong_channel_count(capsys):
    assert main(["summary", "d2l_resnet18", "--input-size", "1,3,96,96"]) == 2
    err = capsys.readouterr().err
    assert "has 3 channel(s) but d2l_resnet18 takes 1; use N,1,H,W" in err


def test_forward_failure_names_the_flag(capsys, monkeypatch):
    # Padding lets every registered model accept even 1x1 inputs, so simulate torch refusing the size.
    import resnetlab.cli.summary as command

    def refuse(*args, **kwargs):
        raise RuntimeError("Calculated padded input size per channel: (2 x 2). Kernel size: (3 x 3).\nmore")

    monkeypatch.setattr(command, "summary", refuse)
    assert main(["summary", "resnet18", "--input-size", "1,3,2,2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--input-size 1,3,2,2 does not fit resnet18" in err[0] and "224,224" in err[0]


def test_bad_flag_is_one_line(capsys):
    # In a child process: what the shell sees, exit status and stderr, with no traceback.
    assert_user_error(run_cli("summary", "d2l_resnet18", "--depth", "x"), "--depth")
    one_line_error(capsys, ["summary", "d2l_resnet18", "--depth", "0"], "--depth 0")


@pytest.mark.parametrize("name", every_model())
def test_summary_every_model_at_its_natural_size(name, capsys):
    assert main(["summary", name, "--depth", "1"]) == 0
    out = capsys.readouterr().out
    assert "Total params:" in out and "Total MACs:" in out


def test_models_lists_names(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "d2l_resnet18\t96px" in lines  # sorted: d2l_preact_resnet18 comes first; no published weights
    assert "resnet50\t224px\t--init imagenet (76.1%), --init imagenet-v2 (80.9%)" in lines
