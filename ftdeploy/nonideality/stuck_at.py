"""Stuck-at faults: a defective cell reads g_off (stuck-off, level 0) or g_on (stuck-on, the top
level) whatever was programmed, independently per cell."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from ..arrays import array_namespace
from .base import CellRange, NonIdeality, Stage

HEALTHY, STUCK_OFF, STUCK_ON = 0, 1, 2

#: Stuck-off : stuck-on ratio measured by C.-Y. Chen et al., IEEE Trans. Computers 2015.
CHEN2015_SPLIT = (1.75, 9.04)

Rate = Annotated[float, Field(ge=0.0, le=1.0)]


class StuckAt(NonIdeality):
    """Stuck-at rates per cell. Give ``stuck_off`` and ``stuck_on`` (as a chip family measures
    them), or a total ``p_sa`` split by ``split`` (stuck-off : stuck-on)."""

    kind: Literal["stuck-at"] = Field("stuck-at", description="Names this kind in a profile's faults list.")
    p_sa: Rate | None = Field(None, description="Total stuck-at probability per cell, split by `split`.")
    stuck_off: Rate | None = Field(None, description="Probability per cell of reading g_off whatever was programmed.")
    stuck_on: Rate | None = Field(None, description="Probability per cell of reading g_on whatever was programmed.")
    split: tuple[Annotated[float, Field(ge=0)], Annotated[float, Field(ge=0)]] = Field(
        CHEN2015_SPLIT,
        description="Stuck-off : stuck-on ratio that splits a total rate (`p_sa`, and the sign-off rates); "
                    "default Chen et al. 2015's 1.75 : 9.04.",
    )  # fmt: skip

    stage: ClassVar[int] = Stage.DEFECT
    integer_levels: ClassVar[bool] = True

    @model_validator(mode="after")
    def _check(self) -> "StuckAt":
        pair_given = self.stuck_off is not None or self.stuck_on is not None
        if self.p_sa is None and not pair_given:
            raise ValueError("give p_sa, or stuck_off and stuck_on")
        if self.p_sa is not None and pair_given:
            raise ValueError("give either p_sa or stuck_off/stuck_on, not both")
        if pair_given and (self.stuck_off is None or self.stuck_on is None):
            raise ValueError("stuck_off and stuck_on must be given together")
        if sum(self.split) <= 0:
            raise ValueError("split must have a positive sum")
        if self.total > 1.0:
            raise ValueError(f"stuck_off + stuck_on must be at most 1, found {self.total}")
        return self

    @classmethod
    def from_total(cls, p_sa: float, split: tuple[float, float] = CHEN2015_SPLIT) -> "StuckAt":
        return cls(p_sa=p_sa, split=split)

    @classmethod
    def from_pair(cls, stuck_off: float, stuck_on: float) -> "StuckAt":
        return cls(stuck_off=stuck_off, stuck_on=stuck_on)

    @property
    def ratio(self) -> tuple[float, float]:
        """Stuck-off : stuck-on as this entry states it: measured rates keep their own ratio,
        a total keeps its ``split``."""
        if self.p_sa is None and self.total > 0:
            return float(self.stuck_off), float(self.stuck_on)
        return tuple(self.split)

    def at_total(self, p_sa: float) -> "StuckAt":
        """The same ratio at another total rate (a sign-off or training rate)."""
        return StuckAt(p_sa=p_sa, split=self.ratio)

    @property
    def pair(self) -> tuple[float, float]:
        """(stuck_off, stuck_on) probabilities per cell."""
        if self.p_sa is not None:
            off, on = self.split
            return self.p_sa * off / (off + on), self.p_sa * on / (off + on)
        return float(self.stuck_off), float(self.stuck_on)

    @property
    def total(self) -> float:
        return self.p_sa if self.p_sa is not None else float(self.stuck_off + self.stuck_on)

    @property
    def is_identity(self) -> bool:
        return self.total == 0

    def describe(self) -> str:
        off, on = self.pair
        return f"stuck-at (stuck-off {off:.3g}, stuck-on {on:.3g})"

    def level_expectation(self, cells: CellRange) -> tuple[float, float]:
        # healthy: the programmed level; stuck-off: 0; stuck-on: the top level
        return 1.0 - self.total, self.pair[1] * cells.max_level

    def state_from_uniform(self, u):
        """uint8 HEALTHY / STUCK_OFF / STUCK_ON from uniform draws in [0, 1) (numpy or torch)."""
        off_rate, on_rate = self.pair
        # Written straight into uint8, the stuck-on band first and stuck-off over it: no int64
        # temporaries, which at a real-size model's 10**8 cells per chip cost more than the draw.
        if array_namespace(u) is np:
            state = np.full(u.shape, HEALTHY, np.uint8)
            state[u < off_rate + on_rate] = STUCK_ON
            state[u < off_rate] = STUCK_OFF
            return state
        import torch

        state = torch.full(u.shape, HEALTHY, dtype=torch.uint8, device=u.device)
        state.masked_fill_(u < off_rate + on_rate, STUCK_ON)
        return state.masked_fill_(u < off_rate, STUCK_OFF)

    def draw(self, shape, rng: np.random.Generator) -> np.ndarray:
        return self.state_from_uniform(rng.random(shape, dtype=np.float64))

    def draw_torch(self, shape, device, generator=None):
        import torch

        return self.state_from_uniform(torch.rand(shape, device=device, generator=generator, dtype=torch.float32))

    def apply(self, levels, state, cells: CellRange):
        xp = array_namespace(levels)
        return xp.where(state == STUCK_OFF, 0, xp.where(state == STUCK_ON, cells.max_level, levels))

    def frozen_cells(self, state):
        return state != HEALTHY
