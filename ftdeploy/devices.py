"""Which torch device a run uses, from its ``--device`` name."""

from __future__ import annotations

import torch

from .errors import ConfigError


def pick_device(name: str) -> torch.device:
    """The torch device ``name`` (auto: CUDA if present, else the CPU), refused with one line
    when it is not a device name or names a CUDA device this machine does not have."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device: expected auto, cpu or cuda[:N], found {name!r}") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"--device: {name} asked for, but this machine has no usable CUDA device; use cpu or auto")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"--device: {name} asked for, but this machine has {count} CUDA device(s) (cuda:0 to cuda:{count - 1})")
    return device
