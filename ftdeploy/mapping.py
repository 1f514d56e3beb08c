"""Mappings: how a quantised weight is laid onto crossbar cells, and read back.

A weight ``w`` is quantised to a signed integer code ``q = round(w / s)`` in ``[-Q, Q]``
(``Q = 2**(weight_bits-1) - 1``, ``s`` the scale of its layer or channel). A mapping turns
``q`` into integer *cell levels* ``0 .. L`` (``L = 2**bits_per_cell - 1``; level 0 is g_off,
level L is g_on) and back. Every mapping here reads back *linearly*:

    q = sum_c coefficient[c] * level[c] + offset

which is what the crossbar periphery does (column currents subtracted and shifted-added), what
ONNX expresses with DequantizeLinear/Sub/Add, and what keeps training differentiable.

The code works on numpy arrays and torch tensors alike (the verifier uses numpy, the trainer
torch), so the mapping is written once; torch is imported only where a tensor is handled, so
reading a profile (which checks its target's mapping here) never loads it. Adding a mapping is
one class and one registry line.
What happens *to* cells (stuck-at faults, ...) is not here: see :mod:`ftdeploy.faults`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from enum import Enum
from typing import TYPE_CHECKING, ClassVar, Protocol

import numpy as np

from .arrays import array_namespace, as_float32

if TYPE_CHECKING:
    import torch


class ScaleGranularity(str, Enum):
    """Which weights share one conductance-to-weight scale factor (one DAC/ADC gain)."""

    layer = "layer"  # one scale per layer, as the paper's fault model assumes
    channel = "channel"  # one scale per output channel (column group), a finer periphery


class TargetSpec(Protocol):
    """What a mapping reads of a chip family. :class:`ftdeploy.profiles.Target` is one; this
    module names only the fields it uses, so that the profile schema (which checks its mapping
    name against :data:`MAPPINGS`) can import this module without this module importing it."""

    mapping: str
    bits_per_cell: int
    weight_bits: int
    scale: ScaleGranularity
    tile_rows: int
    tile_cols: int

    @property
    def levels_per_cell(self) -> int: ...

    @property
    def max_code(self) -> int: ...


class Mapping(ABC):
    """Weights <-> cells. Subclasses set ``name`` and implement ``cell_names``,
    ``coefficients`` and ``encode``; ``decode`` follows from the coefficients."""

    name: ClassVar[str]

    def __init__(self, target: TargetSpec):
        self.target = target
        self.max_code = target.max_code
        self.max_level = target.levels_per_cell - 1

    @classmethod
    def check_target(cls, target: TargetSpec) -> None:
        """Raise ValueError when the target's cells cannot hold its weights this way."""

    @property
    @abstractmethod
    def cell_names(self) -> tuple[str, ...]:
        """One name per cell of a weight, e.g. ('pos', 'neg')."""

    @property
    @abstractmethod
    def coefficients(self) -> tuple[int, ...]:
        """Code contributed by one level of each cell."""

    offset: int = 0

    @property
    def cells_per_weight(self) -> int:
        return len(self.cell_names)

    @abstractmethod
    def encode(self, code):
        """Integer codes (any shape) -> levels, shape (cells_per_weight, *code.shape)."""

    def decode(self, levels):
        """Levels (cells, ...) -> float32 codes. Exact: every term is a small integer."""
        f = as_float32(levels)
        code = f[0] * float(self.coefficients[0])
        for c in range(1, self.cells_per_weight):
            code = code + f[c] * float(self.coefficients[c])
        return code + float(self.offset) if self.offset else code

    def describe(self) -> str:
        parts = ", ".join(f"{n}×{k:+d}" for n, k in zip(self.cell_names, self.coefficients))
        return f"{self.name}: q = {parts}" + (f" {self.offset:+d}" if self.offset else "")


def _positive_part(code):
    xp = array_namespace(code)
    return xp.maximum(code, 0) if xp is np else code.clamp(min=0)


class DifferentialPair(Mapping):
    """Two cells per weight on two columns: W = s·(g+ − g−). Each cell is its own device and
    fails on its own: a stuck-on cell reads level L, adding (or subtracting) the full scale
    L·s minus its programmed level; that is the layer's max|W| when L == Q (bits_per_cell ==
    weight_bits − 1, as on paper-diff8), more when the cells have spare levels."""

    name = "differential"

    @classmethod
    def check_target(cls, target):
        if target.levels_per_cell - 1 < target.max_code:
            raise ValueError(
                f"{cls.name} needs bits_per_cell >= weight_bits - 1 "
                f"({target.weight_bits - 1}), found {target.bits_per_cell}; use bitsliced"
            )

    cell_names = ("pos", "neg")
    coefficients = (1, -1)

    def encode(self, code):
        xp = array_namespace(code)
        return xp.stack([_positive_part(code), _positive_part(-code)])


class InvertedDifferentialPair(DifferentialPair):
    """The two-column pair programmed down from g_on: a zero weight is both cells at level L,
    and W = s·(g+ − g−) with g+ = L − max(−q, 0), g− = L − max(q, 0). The fault model is the
    same; which fault hurts is not. A stuck-on cell now reads the level the idle cell already
    holds, so it can only lose the weight's own value (at most |q|), and the full-scale error
    (L·s, the layer's max|W|) comes from a stuck-off cell instead. Where stuck-on cells are the
    common fault (Chen et al. 2015: 9.04 against 1.75), that makes a full-scale error about five
    times rarer.

    What it costs is outside the fault model: most weights are small, so most cells sit near g_on
    instead of g_off. The crossbar draws up to g_on/g_off times the read current (more power,
    more IR drop along the lines), and the periphery must resolve a small difference of two large
    column currents."""

    name = "differential-inverted"

    def encode(self, code):
        xp = array_namespace(code)
        return xp.stack([self.max_level - _positive_part(-code), self.max_level - _positive_part(code)])


class OffsetColumn(Mapping):
    """One cell per weight holding q + Q; a shared, fault-free reference column supplies the
    −Q offset. A stuck-off cell reads −Q·s, a stuck-on cell (L − Q)·s: (Q + 1)·s when
    bits_per_cell == weight_bits (L = 2Q + 1), one step beyond any programmed code."""

    name = "offset"

    @classmethod
    def check_target(cls, target):
        if target.levels_per_cell - 1 < 2 * target.max_code:
            raise ValueError(
                f"offset needs bits_per_cell >= weight_bits ({target.weight_bits}), found {target.bits_per_cell}"
            )

    cell_names = ("cell",)
    coefficients = (1,)

    @property
    def offset(self) -> int:  # type: ignore[override]
        return -self.max_code

    def encode(self, code):
        xp = array_namespace(code)
        return xp.stack([code + self.max_code])


class BitSliced(Mapping):
    """Sign-magnitude over two column groups, each magnitude split into base-2**bits_per_cell
    digits, least significant first: W = s·Σ_j B^j (d+_j − d−_j). A stuck cell in a high slice
    costs far more than one in a low slice."""

    name = "bitsliced"

    def __init__(self, target):
        super().__init__(target)
        self.base = target.levels_per_cell
        self.slices = max(1, math.ceil(math.log(self.max_code + 1, self.base) - 1e-12))

    @property
    def cell_names(self):
        return tuple(f"pos{j}" for j in range(self.slices)) + tuple(f"neg{j}" for j in range(self.slices))

    @property
    def coefficients(self):
        powers = tuple(self.base**j for j in range(self.slices))
        return powers + tuple(-p for p in powers)

    def encode(self, code):
        xp = array_namespace(code)
        magnitude = abs(code)
        digits = [(magnitude // self.base**j) % self.base for j in range(self.slices)]
        pos = [d * (code > 0) for d in digits]
        neg = [d * (code < 0) for d in digits]
        return xp.stack(pos + neg)


MAPPINGS: dict[str, type[Mapping]] = {
    m.name: m for m in (DifferentialPair, InvertedDifferentialPair, OffsetColumn, BitSliced)
}


def make_mapping(target: TargetSpec) -> Mapping:
    return MAPPINGS[target.mapping](target)


def scale_of(weight: torch.Tensor, target: TargetSpec) -> torch.Tensor:
    """Weight per code step: max|W|/Q over the layer, or per output channel. Shaped to
    broadcast against ``weight``. Differentiable, so training can shrink the full-scale value
    a stuck-on cell produces. A zero layer (or channel) gets scale 1/Q (all codes 0) instead of
    dividing by 0."""
    if target.scale is ScaleGranularity.channel:
        peak = weight.abs().flatten(1).amax(1)
        peak = peak.reshape(-1, *([1] * (weight.dim() - 1)))
    else:
        peak = weight.abs().amax()
    return scale_from_peak(peak, target)


def scale_from_peak(peak: torch.Tensor, target: TargetSpec) -> torch.Tensor:
    """Scale of a group of weights from its largest magnitude; a zero group gets 1/Q."""
    import torch

    return torch.where(peak > 0, peak, torch.ones_like(peak)) / target.max_code


def quantize_codes(weight: torch.Tensor, scale: torch.Tensor, target: TargetSpec) -> torch.Tensor:
    """Integer codes (as int32) of a weight at a scale; round half to even, clipped to ±Q."""
    import torch

    q = torch.round(weight / scale).clamp(-target.max_code, target.max_code)
    return q.to(torch.int32)


def crossbar_tiles(weight_shape: tuple[int, ...], target: TargetSpec, mapping: Mapping) -> dict:
    """How a layer lands on tiles: inputs on rows, each output's cells on adjacent columns."""
    rows = int(np.prod(weight_shape[1:]))
    cols = int(weight_shape[0]) * mapping.cells_per_weight
    tiles = math.ceil(rows / target.tile_rows) * math.ceil(cols / target.tile_cols)
    return {"rows": rows, "cols": cols, "tiles": tiles, "cells": rows * cols}
