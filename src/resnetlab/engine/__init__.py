"""Training: set-up, the loop and its hooks, one guarded step, the run's state, files and processes.

Layout: ``run.py`` (``fit``, ``resume``), ``setup.py`` (from a configuration to a run),
``loop.py`` (the epochs and steps), ``hooks.py`` (what attaches to the loop: the time budget, the
progress bar, periodic saving, compile timing, your own), ``budget.py`` (the time budget's
arithmetic), ``step.py`` (one guarded optimisation step), ``schedule.py`` (optimiser and
learning-rate schedule), ``state.py`` (``train_state.pt`` and resume checks), ``initialize.py``
(the model and ``--init``), ``recalibrate.py``, ``metrics.py``, ``run_folder.py`` (the folder,
its lock, the results), ``distributed.py`` (torchrun) and ``stop.py`` (signals). What a run is
configured with is ``resnetlab.config``'s. The engine imports neither the command line nor the
inference modules.
"""

from ..config import PRESETS, RunConfig, TrainConfig, from_preset, load_config_file, preset_names, validate
from .hooks import Hook
from .run import fit, resume
from .run_folder import TrainResult

__all__ = [
    "Hook", "PRESETS", "RunConfig", "TrainConfig", "TrainResult", "fit", "from_preset", "load_config_file",
    "preset_names", "resume", "validate",
]
