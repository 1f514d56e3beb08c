"""Conductance drift: after programming, a cell's conductance decays as a power law of time,
``G(t) = G0 · (t / t0)^(−ν)``, each cell with its own exponent ν. Sign-off reads the chip at a
stated time after programming (an hour, a day, a year)."""

from __future__ import annotations

import math
import re
from typing import Annotated, ClassVar, Literal

import numpy as np
from pydantic import BeforeValidator, Field, model_validator

from ..arrays import array_namespace
from .base import CellRange, NonIdeality, Stage, standard_normal

#: Seconds per unit a time may be written in ("1 day", "2.5 h", "1 year", "3600 s", or a number of seconds).
TIME_UNITS = {"s": 1.0, "sec": 1.0, "second": 1.0, "min": 60.0, "minute": 60.0, "h": 3600.0, "hour": 3600.0,
              "d": 86400.0, "day": 86400.0, "week": 604800.0, "month": 2629800.0, "y": 31557600.0,
              "year": 31557600.0}  # fmt: skip
_TIME = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def seconds(value) -> float:
    """A duration in seconds, from a number (seconds) or text such as ``"1 day"`` or ``"2 years"``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    match = _TIME.match(str(value))
    unit = match and match.group(2).lower()
    unit = unit[:-1] if unit and unit.endswith("s") and unit[:-1] in TIME_UNITS else unit
    if not match or (unit and unit not in TIME_UNITS):
        raise ValueError(f"expected a duration such as 3600, '1 h', '1 day' or '1 year' (units: {', '.join(TIME_UNITS)}), found {value!r}")
    return float(match.group(1)) * TIME_UNITS[unit or "s"]


Seconds = Annotated[float, BeforeValidator(seconds), Field(gt=0)]

#: Units a duration is written back in, largest first.
_READABLE = (("year", TIME_UNITS["year"]), ("day", TIME_UNITS["day"]), ("h", TIME_UNITS["h"]), ("min", TIME_UNITS["min"]))


def readable(duration_s: float) -> str:
    """A duration in the largest unit that keeps it at least 1: ``31557600`` -> ``'1 year'``."""
    for unit, size in _READABLE:
        if duration_s >= size:
            n = duration_s / size
            return f"{n:g} {unit}{'s' if n != 1 and unit in ('year', 'day') else ''}"
    return f"{duration_s:g} s"


class Drift(NonIdeality):
    """Power-law conductance drift with a per-cell exponent ν ~ N(nu_mean, nu_std), clipped at 0,
    read ``at`` seconds after programming."""

    kind: Literal["drift"] = Field("drift", description="Names this kind in a profile's faults list.")
    nu_mean: float = Field(ge=0, description="Mean drift exponent ν (dimensionless).")
    nu_std: float = Field(0.0, ge=0, description="Cell-to-cell standard deviation of ν.")
    t0_s: Seconds = Field(1.0, description="Time after programming at which G = G0 (the programmed conductance), s.")
    at: Seconds = Field(description="When the chip is read, after programming: seconds, or text such as '1 day' or '1 year'.")

    stage: ClassVar[int] = Stage.RETENTION

    @model_validator(mode="after")
    def _check(self) -> "Drift":
        if self.at < self.t0_s:
            raise ValueError(f"drift: at ({self.at:g} s) must not come before t0_s ({self.t0_s:g} s)")
        return self

    def describe(self) -> str:
        return (f"drift (nu_mean {self.nu_mean:g}, nu_std {self.nu_std:g}, t0 {readable(self.t0_s)}, "
                f"read {readable(self.at)} after programming)")

    @property
    def log_time(self) -> float:
        return math.log(self.at / self.t0_s)

    @property
    def is_identity(self) -> bool:
        return self.log_time == 0 or (self.nu_mean == 0 and self.nu_std == 0)

    def draw(self, shape, rng: np.random.Generator) -> np.ndarray:
        return standard_normal(shape, rng)

    def apply(self, levels, state, cells: CellRange):
        xp = array_namespace(levels)
        nu = xp.clip(float(self.nu_mean) + float(self.nu_std) * state, 0, None)
        return cells.to_levels(cells.to_uS(levels) * xp.exp(-nu * float(self.log_time)))

    def level_expectation(self, cells: CellRange) -> tuple[float, float]:
        # E[exp(−ν·L)] for ν ~ N(μ, σ²) (the clip at 0 ignored: a few σ above 0 in practice)
        gain = math.exp(-self.nu_mean * self.log_time + (self.nu_std * self.log_time) ** 2 / 2)
        return gain, (gain - 1) * cells.g_off_uS / cells.step_uS
