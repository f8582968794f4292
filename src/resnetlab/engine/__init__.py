"""The training engine: configuration, presets, the loop, checkpoints and metrics."""

from .checkpoint import build_from_weights, load_weights, read_metadata, save_weights
from .config import TrainConfig, load_config_file, validate
from .presets import PRESETS, from_preset, preset_names
from .steps import evaluate
from .train import TrainResult, fit, resume

__all__ = [
    "PRESETS", "TrainConfig", "TrainResult", "build_from_weights", "evaluate", "fit", "from_preset",
    "load_config_file", "load_weights", "preset_names", "read_metadata", "resume", "save_weights", "validate",
]
