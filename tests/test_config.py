"""The configuration declared once: everything else about a field is derived from its declaration."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from resnetlab.cli import build_parser
from resnetlab.config import BASE_DEFAULTS, RESUME_OVERRIDES, RunConfig, TrainConfig
from resnetlab.config.fields import field_names, flag, has_flag, meta, reference

ROOT = Path(__file__).resolve().parents[1]


def test_the_docs_reference_is_what_the_declarations_say():
    assert (ROOT / "docs" / "configuration.md").read_text() == reference(), \
        "docs/configuration.md is stale: run python -m resnetlab.config > docs/configuration.md"


def test_each_field_is_declared_once_and_everything_else_derives_from_it():
    declared = [f.name for f in dataclasses.fields(TrainConfig)]
    assert [f.name for f in dataclasses.fields(RunConfig)] == [n for n in declared if n != "out"]
    text = (ROOT / "src" / "resnetlab" / "config" / "fields.py").read_text()
    for name in declared:  # one annotation per field in the configuration's source: TrainConfig's
        assert len(re.findall(rf"^    {name}: ", text, re.M)) == 1, name
    train = next(a for a in build_parser()._subparsers._group_actions[0].choices["train"]._actions if a.dest == "lr")
    assert train.help == meta("lr")["help"] and train.option_strings == [flag("lr")]
    flags = {a.dest for a in build_parser()._subparsers._group_actions[0].choices["train"]._actions}
    assert {n for n in field_names() if has_flag(n)} <= flags and "budget_plan" not in flags
    assert set(RESUME_OVERRIDES) == {"data", "feed", "save_every", "skip_nonfinite", "tensorboard"}
    assert BASE_DEFAULTS["batch_size"] == 256 and BASE_DEFAULTS["lr"] == 0.05  # the book's train_ch6


def test_run_config_is_frozen_and_none_is_a_value_only_where_declared():
    hints = {f.name: str(f.type) for f in dataclasses.fields(RunConfig)}
    assert "None" in hints["limit_train"] and "None" not in hints["batch_size"]
    assert RunConfig.__dataclass_params__.frozen and RunConfig.__module__ == "resnetlab.config.fields"
