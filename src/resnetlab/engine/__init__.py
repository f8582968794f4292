"""The training engine: configuration, presets, deciding what a run leaves open, the loop, its state and files."""

from ..scoring import evaluate
from .config import TrainConfig, load_config_file, validate
from .presets import PRESETS, from_preset, preset_names
from .train import TrainResult, Watch, fit, resume

__all__ = [
    "PRESETS", "TrainConfig", "TrainResult", "evaluate", "fit", "from_preset", "load_config_file", "preset_names",
    "resume", "validate", "Watch",
]
