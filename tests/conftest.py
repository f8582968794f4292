"""Shared test set-up: tests run on the CPU, with few threads, so the suite fits 2 cores."""

import sys
from pathlib import Path

import torch

# Let test modules import each other's constants (e.g. the seed's trace in test_blocks).
sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(min(2, torch.get_num_threads()))
