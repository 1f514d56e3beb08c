"""What every non-ideality is: a pydantic schema (the fields a profile's ``faults`` entry sets)
that also knows how to draw a chip's per-cell state and apply it to cell levels.

Levels are in units of the target's level step: level 0 is g_off, level L = 2**bits_per_cell − 1
is g_on, and a cell at level ℓ conducts ``g_off + ℓ·Δ`` with ``Δ = (g_on − g_off) / L``. A
non-ideality that changes conductances continuously (variation, drift, noise) returns float
levels on the same scale, so the mapping decodes them with the same linear read-out.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from ..arrays import array_namespace, as_float32


class Stage:
    """When a non-ideality acts in a chip's life; a chip applies its kinds in this order."""

    PROGRAMMING = 10  # while the cells are written (programming variation)
    RETENTION = 20  # between programming and use (drift)
    DEFECT = 30  # a defective cell reads its stuck value whatever happened before
    READ = 40  # at every inference (read noise)


@dataclass(frozen=True)
class CellRange:
    """The conductance scale of a target's cells: what a level means in µS."""

    max_level: int
    g_off_uS: float
    g_on_uS: float

    @classmethod
    def of(cls, target) -> "CellRange":
        return cls(target.levels_per_cell - 1, target.g_off_uS, target.g_on_uS)

    @property
    def step_uS(self) -> float:
        """Conductance of one level step, µS."""
        return (self.g_on_uS - self.g_off_uS) / self.max_level

    def to_uS(self, levels):
        return as_float32(levels) * float(self.step_uS) + float(self.g_off_uS)

    def to_levels(self, conductance_uS):
        return (conductance_uS - float(self.g_off_uS)) / float(self.step_uS)


class NonIdeality(BaseModel, ABC):
    """One kind of non-ideality. Subclasses set ``kind`` (a ``Literal``, the profile's
    discriminator), ``stage``, and implement :meth:`draw` and :meth:`apply`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str
    #: When it acts (:class:`Stage`); a chip applies its kinds in ascending stage.
    stage: ClassVar[int]
    #: True when it keeps levels integer (the exported uint8 cells can carry the chip).
    integer_levels: ClassVar[bool] = False
    #: True when it is drawn afresh for every inference instead of once per chip.
    per_inference: ClassVar[bool] = False

    @property
    @abstractmethod
    def is_identity(self) -> bool:
        """True when it changes no cell (a zero rate or spread): callers skip it."""

    @abstractmethod
    def draw(self, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        """The per-cell state of one chip (or one inference, when ``per_inference``)."""

    @abstractmethod
    def apply(self, levels, state, cells: CellRange):
        """Levels as the chip reads them, for ``levels`` and a drawn ``state`` (numpy or torch)."""

    def draw_torch(self, shape: tuple[int, ...], device, generator=None):
        """A state drawn with torch (training draws a fresh chip every step, on its device).
        The default draws standard normals, which every continuous kind scales itself."""
        import torch

        return torch.randn(shape, device=device, generator=generator, dtype=torch.float32)

    def frozen_cells(self, state):
        """Cells this state leaves deaf to programming (a gradient there is noise), or None."""
        return None

    def level_expectation(self, cells: CellRange) -> tuple[float, float]:
        """(keep, add): a cell's level averaged over chips is ``keep · programmed + add``."""
        return 1.0, 0.0

    def describe(self) -> str:
        """One line for reports: the kind and what it was set to."""
        fields = self.model_dump(exclude={"kind"}, exclude_none=True)
        return f"{self.kind} (" + ", ".join(f"{k} {_fmt(v)}" for k, v in fields.items()) + ")"


def _fmt(value) -> str:
    if isinstance(value, (list, tuple)):
        return ":".join(_fmt(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


class ConductanceSpread(NonIdeality):
    """A kind that moves each cell's conductance by a Gaussian draw: ``sigma_uS`` (µS), or
    ``sigma_rel`` (relative to the conductance). Subclasses declare the two fields (with their
    own descriptions) and say when they draw; what a draw does is written once, here."""

    sigma_uS: float | None
    sigma_rel: float | None

    @property
    def lognormal(self) -> bool:
        return False

    @property
    def is_identity(self) -> bool:
        return not (self.sigma_uS or self.sigma_rel)

    def draw(self, shape, rng: np.random.Generator) -> np.ndarray:
        return standard_normal(shape, rng)

    def apply(self, levels, state, cells: CellRange):
        return gaussian_spread(levels, state, cells, self.sigma_uS, self.sigma_rel, self.lognormal)

    def _check_sigma(self) -> None:
        check_one_sigma(self.sigma_uS, self.sigma_rel, self.kind)


def gaussian_spread(levels, z, cells: CellRange, sigma_uS: float | None, sigma_rel: float | None, lognormal: bool = False):
    """``levels`` with each cell's conductance moved by ``z`` standard deviations: ``σ`` in µS,
    or relative to the cell's own conductance (``G·(1 + σ·z)``, or ``G·exp(σ·z)`` when
    ``lognormal``, which never turns a conductance negative). Shared by programming variation and
    read noise, which differ in when they draw ``z``, not in what a draw does."""
    xp = array_namespace(levels)
    if sigma_uS is not None:
        return as_float32(levels) + z * float(sigma_uS / cells.step_uS)
    g = cells.to_uS(levels)
    g = g * xp.exp(z * float(sigma_rel)) if lognormal else g * (1 + z * float(sigma_rel))
    return cells.to_levels(g)


def check_one_sigma(sigma_uS: float | None, sigma_rel: float | None, kind: str) -> None:
    """A spread is stated once: in µS or relative, not both, not neither."""
    if (sigma_uS is None) == (sigma_rel is None):
        raise ValueError(f"{kind}: give exactly one of sigma_uS (absolute, µS) and sigma_rel (relative to the conductance)")


def standard_normal(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """float32 standard normals: the draw every continuous kind starts from."""
    return rng.standard_normal(shape, dtype=np.float32)
