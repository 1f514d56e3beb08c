"""The study's tests: two CPU threads, as the product's suite has them, and its scripts importable."""

import sys
from pathlib import Path

import torch

torch.set_num_threads(2)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
