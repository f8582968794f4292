"""The training engine: configuration, the recipe that decides what a run leaves open, set-up, the loop, its state and files.

Layout: ``config.py`` (the fields: given and resolved), ``recipe.py`` (presets, data rules,
base defaults, ``resolve``), ``setup.py`` (from a configuration to a run), ``runs.py`` (``fit``,
``resume``), ``train.py`` (the loop), ``budget.py`` (the time budget's planner), ``steps.py`` (one guarded
optimisation step), ``optim.py`` (optimiser and schedule), ``state.py`` (``train_state.pt`` and
resume checks), ``initialize.py`` (the model and ``--init``), ``recalibrate.py``, ``metrics.py``,
``run_folder.py``, ``distributed.py`` (torchrun), ``stop.py`` (signals), ``checkpoint.py``. The
engine imports nothing of the command line.
"""

from ..scoring import evaluate
from .config import RunConfig, TrainConfig, load_config_file, validate
from .recipe import PRESETS, from_preset, preset_names
from .run_folder import TrainResult
from .runs import Watch, fit, resume

__all__ = [
    "PRESETS", "RunConfig", "TrainConfig", "TrainResult", "evaluate", "fit", "from_preset", "load_config_file",
    "preset_names", "resume", "validate", "Watch",
]
