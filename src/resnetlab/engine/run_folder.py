"""The run folder: where a run's files go, ``runs/latest``, and ``results.json``."""

from __future__ import annotations

import json
import math
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from ..errors import ResnetlabError
from ..fileio import write_text


def default_run_dir(model_name: str) -> Path:
    """``runs/<date-time>-<model>`` under the working folder."""
    return Path("runs") / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{model_name}"


def prepare_run_dir(out: str | None, model_name: str) -> Path:
    """Create the run folder (refusing one that already holds a run); point ``runs/latest`` at it."""
    run_dir = Path(out) if out else default_run_dir(model_name)
    if (run_dir / "config.json").exists():
        raise ResnetlabError(
            f"--out {run_dir} already holds a run; choose another folder, or continue it with --resume {run_dir}"
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ResnetlabError(f"--out {run_dir}: cannot create it ({exc.strerror}); choose a writable folder") from None
    if out is None:
        link = run_dir.parent / "latest"
        tmp = run_dir.parent / f".latest.{run_dir.name}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(run_dir.name)
        tmp.replace(link)
    return run_dir


def follow_link(path: Path) -> Path:
    """``runs/latest`` -> ``runs/<its target>``, so messages name the real run folder."""
    return path.parent / os.readlink(path) if path.is_symlink() else path


def write_results(result: Any) -> None:
    """Write ``results.json``: the final numbers of a run."""
    values = {k: v for k, v in result.__dict__.items() if k not in ("run_dir", "history")}
    # JSON has no NaN: a metric that is not a number (a run whose loss diverged) is written as null.
    values = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in values.items()}
    write_text(result.run_dir / "results.json", json.dumps(values, indent=2, allow_nan=False) + "\n")
