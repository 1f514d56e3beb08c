"""numpy or torch, whichever an array belongs to. The mapping and the non-idealities are written
once for both: the verifier works in numpy, the trainer in torch. torch is imported only when a
tensor is actually passed, so reading a profile never pays for it."""

from __future__ import annotations

import numpy as np


def array_namespace(a):
    """The module whose functions work on ``a`` (numpy and torch spell where/stack/abs alike)."""
    if isinstance(a, (np.ndarray, np.generic, int, float)):
        return np
    import torch

    return torch if isinstance(a, torch.Tensor) else np


def is_torch(a) -> bool:
    return array_namespace(a) is not np


def as_float32(a):
    """``a`` as float32, in its own namespace."""
    if is_torch(a):
        import torch

        return a.to(torch.float32)
    return np.asarray(a, dtype=np.float32)
