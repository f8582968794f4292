"""A run's configuration: each field declared once (``fields.py``), the presets, the rules that follow the data,
and the two-stage resolution into the frozen configuration a run uses (``resolve.py``).

The command line, the engine, the weights' header and evaluation all read it; it knows nothing of them.
"""

from .fields import (
    BASE_DEFAULTS, RESUME_OVERRIDES, RunConfig, TrainConfig, check_init_file, load_config_file, validate,
)
from .presets import PRESETS, check_preset, from_preset, preset_names
from .resolve import LATEST, Plan, Resolved, default_out, plan, resolve, with_base_defaults
from .rules import DataFacts, folder_side

__all__ = [
    "BASE_DEFAULTS", "DataFacts", "LATEST", "PRESETS", "Plan", "RESUME_OVERRIDES", "Resolved", "RunConfig",
    "TrainConfig", "check_init_file", "check_preset", "default_out", "folder_side", "from_preset", "load_config_file",
    "plan", "preset_names", "resolve", "validate", "with_base_defaults",
]
