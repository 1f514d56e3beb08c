"""Stuck-at faults: a defective cell reads g_off (stuck-off, level 0) or g_on (stuck-on, the top
level) whatever was programmed, independently per cell."""

from __future__ import annotations

import math
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

    def draw_stuck_torch(self, count: int, device, generator=None):
        """The stuck cells among ``count`` cells, drawn without touching the healthy ones:
        (ascending int64 positions, bool per position: stuck-on, else stuck-off). The same
        distribution as :meth:`draw_torch` (each cell independently stuck-off or stuck-on at
        :attr:`pair`'s rates), in work proportional to the stuck cells, which at training's
        rates of a few per cent is what keeps a fault-injected step close to a plain one."""
        import torch

        off, on = self.pair
        if self.total >= 1:
            positions = torch.arange(count, device=device)
        elif self.total > 0 and count > 0:
            positions = bernoulli_positions(count, self.total, device, generator)
        else:
            positions = torch.zeros(0, dtype=torch.int64, device=device)
        # Given that a cell is stuck, it is stuck-off with probability off / (off + on).
        share_off = off / self.total if self.total > 0 else 1.0
        u = torch.rand(positions.shape, device=device, generator=generator, dtype=torch.float64)
        return positions, u >= share_off

    @staticmethod
    def state_of_stuck(positions, stuck_on, shape, device):
        """The state :meth:`draw_torch` would hold for the stuck cells of
        :meth:`draw_stuck_torch` (positions in the flat, row-major layout of ``shape``)."""
        import torch

        state = torch.full((math.prod(shape),), HEALTHY, dtype=torch.uint8, device=device)
        stuck = torch.where(stuck_on, STUCK_ON, STUCK_OFF).to(torch.uint8)
        return state.index_put_((positions,), stuck).view(shape)

    def apply(self, levels, state, cells: CellRange):
        xp = array_namespace(levels)
        return xp.where(state == STUCK_OFF, 0, xp.where(state == STUCK_ON, cells.max_level, levels))

    def frozen_cells(self, state):
        return state != HEALTHY


def bernoulli_positions(count: int, p: float, device, generator=None, chunk: int | None = None):
    """Ascending positions of the successes among ``count`` independent Bernoulli(``p``) trials
    (0 < p < 1). The gaps between successive successes are independent Geometric(p), so their
    running sum walks from one success to the next: exact, and drawing each trial once (no
    sampling of positions with replacement, whose collisions would lower the rate). ``chunk``:
    gaps drawn at a time; by default enough to pass the end nearly always (6 standard deviations
    over the expected count), and more are drawn in the rare case they do not."""
    import torch

    mean = count * p
    chunk = chunk or int(mean + 6 * math.sqrt(mean) + 16)
    parts, last = [], -1
    while last < count - 1:
        gaps = torch.empty(chunk, dtype=torch.float64, device=device).geometric_(p, generator=generator)
        walk = gaps.to(torch.int64).cumsum(0) + last
        parts.append(walk)
        last = int(walk[-1])
    positions = torch.cat(parts) if len(parts) > 1 else parts[0]
    return positions[: int(torch.searchsorted(positions, count))]
