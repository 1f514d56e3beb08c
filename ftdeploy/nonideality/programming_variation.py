"""Programming variation: a written cell lands near its target conductance, not on it. Each
chip's cells are drawn once, when the chip is programmed."""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from .base import CellRange, ConductanceSpread, Stage


class ProgrammingVariation(ConductanceSpread):
    """Each programmed cell's conductance spread around its level: Gaussian with ``sigma_uS``
    (µS, the same for every level), or relative to the cell's conductance with ``sigma_rel``
    (Gaussian ``G·(1 + σ·z)`` or lognormal ``G·exp(σ·z)``)."""

    kind: Literal["programming-variation"] = Field("programming-variation", description="Names this kind in a profile's faults list.")
    sigma_uS: float | None = Field(None, ge=0, description="Standard deviation of a programmed conductance, µS.")
    sigma_rel: float | None = Field(None, ge=0, description="Standard deviation relative to the programmed conductance (0.05: 5 %).")
    distribution: Literal["normal", "lognormal"] = Field(
        "normal", description="normal: G + σ·z; lognormal (relative only): G·exp(σ_rel·z), never negative."
    )

    stage: ClassVar[int] = Stage.PROGRAMMING

    @model_validator(mode="after")
    def _check(self) -> "ProgrammingVariation":
        self._check_sigma()
        if self.distribution == "lognormal" and self.sigma_rel is None:
            raise ValueError(f"{self.kind}: lognormal needs sigma_rel")
        return self

    @property
    def lognormal(self) -> bool:
        return self.distribution == "lognormal"

    def level_expectation(self, cells: CellRange) -> tuple[float, float]:
        if self.distribution == "lognormal":  # E[exp(σz)] = exp(σ²/2), on G = g_off + ℓ·Δ
            gain = float(np.exp(self.sigma_rel**2 / 2))
            return gain, (gain - 1) * cells.g_off_uS / cells.step_uS
        return 1.0, 0.0
