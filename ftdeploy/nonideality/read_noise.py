"""Read noise: every read of a cell fluctuates around its conductance. Drawn afresh for every
inference (every batch of images the chip computes), never fixed to a chip."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from .base import ConductanceSpread, Stage


class ReadNoise(ConductanceSpread):
    """Gaussian noise on each read conductance: ``sigma_uS`` (µS) or ``sigma_rel`` (relative to
    the conductance read)."""

    kind: Literal["read-noise"] = Field("read-noise", description="Names this kind in a profile's faults list.")
    sigma_uS: float | None = Field(None, ge=0, description="Standard deviation of a read conductance, µS.")
    sigma_rel: float | None = Field(None, ge=0, description="Standard deviation relative to the conductance read (0.01: 1 %).")

    stage: ClassVar[int] = Stage.READ
    per_inference: ClassVar[bool] = True

    @model_validator(mode="after")
    def _check(self) -> "ReadNoise":
        self._check_sigma()
        return self
