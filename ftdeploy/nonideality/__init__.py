"""Non-idealities: what happens to a chip's cells. One class per kind, each its own pydantic
schema, in the registry below; a profile's ``faults`` list names kinds by their ``kind`` field
(a discriminated union built from the registry), and a :class:`FaultModel` composes them on one
chip. The trainer, both evaluation backends and the exporter's checks reach the kinds only
through here.

Adding a kind is one module (its class: fields, ``draw``, ``apply``) and one line in
``NONIDEALITIES``.

Which cells hold a weight, and how levels read back as a weight, is the mapping's business
(:mod:`ftdeploy.mapping`); nothing here looks inside a mapping.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Union

import numpy as np
from pydantic import Field

from .base import CellRange, NonIdeality, Stage
from .drift import Drift, seconds
from .programming_variation import ProgrammingVariation
from .read_noise import ReadNoise
from .stuck_at import CHEN2015_SPLIT, HEALTHY, STUCK_OFF, STUCK_ON, Rate, StuckAt

#: Every kind a profile can name, by its ``kind``.
NONIDEALITIES: dict[str, type[NonIdeality]] = {
    kind.model_fields["kind"].default: kind for kind in (StuckAt, ProgrammingVariation, ReadNoise, Drift)
}

#: One entry of a profile's ``faults`` list: the kind named by its ``kind`` field.
FaultSpec = Annotated[Union[tuple(NONIDEALITIES.values())], Field(discriminator="kind")]  # noqa: UP007


def chip_rng(seed: int, rate: float, chip: int) -> np.random.Generator:
    """The random stream of one simulated chip. Keyed by the rate's value (in units of 1e-9),
    not its position, so adding a sign-off rate leaves every other rate's chips unchanged."""
    return np.random.default_rng([int(seed), int(round(rate * 1e9)), int(chip)])


#: A drawn chip: per layer (export order), the state of each chip-level kind (stage order).
ChipDraw = list[list[np.ndarray]]


class FaultModel:
    """The non-idealities of one chip population, applied in stage order (programming,
    retention, defects, reads). Kinds that change nothing (a zero rate) are left out of the work."""

    def __init__(self, kinds: Sequence[NonIdeality] = ()):
        seen = [k.kind for k in kinds]
        repeated = sorted({k for k in seen if seen.count(k) > 1})
        if repeated:
            raise ValueError(f"each kind may appear once, found {', '.join(repeated)} more than once")
        self.kinds: tuple[NonIdeality, ...] = tuple(sorted(kinds, key=lambda k: k.stage))

    @classmethod
    def stuck_at(cls, p_sa: float, split: tuple[float, float] = CHEN2015_SPLIT) -> "FaultModel":
        return cls([StuckAt.from_total(p_sa, split)])

    # --- what it is ---------------------------------------------------------------------------

    @property
    def active(self) -> tuple[NonIdeality, ...]:
        return tuple(k for k in self.kinds if not k.is_identity)

    @property
    def chip_kinds(self) -> tuple[NonIdeality, ...]:
        """Active kinds drawn once per chip."""
        return tuple(k for k in self.active if not k.per_inference)

    @property
    def read_kinds(self) -> tuple[NonIdeality, ...]:
        """Active kinds drawn afresh for every inference."""
        return tuple(k for k in self.active if k.per_inference)

    @property
    def is_identity(self) -> bool:
        """True when every chip is the programmed one, exactly."""
        return not self.active

    @property
    def integer_levels(self) -> bool:
        """True when every chip reads integer levels (the exported uint8 cells can hold it)."""
        return all(k.integer_levels for k in self.active)

    def find(self, kind: type[NonIdeality]) -> NonIdeality | None:
        return next((k for k in self.kinds if isinstance(k, kind)), None)

    @property
    def stuck(self) -> StuckAt | None:
        return self.find(StuckAt)

    def at_rate(self, p_sa: float) -> "FaultModel":
        """This population with its stuck-at total set to ``p_sa`` (same split; the default
        split when it has no stuck-at kind): the sign-off and training rates are stuck-at rates,
        every other kind applies at each of them as the profile states it."""
        stuck = self.stuck or StuckAt.from_total(0.0)
        return FaultModel([k for k in self.kinds if k is not self.stuck] + [stuck.at_total(p_sa)])

    def at_pair(self, stuck_off: float, stuck_on: float) -> "FaultModel":
        """This population with measured stuck-off and stuck-on rates, simulated as given."""
        return FaultModel([k for k in self.kinds if k is not self.stuck] + [StuckAt.from_pair(stuck_off, stuck_on)])

    def describe(self) -> str:
        return "; ".join(k.describe() for k in self.active) or "fault-free"

    def describe_at(self, symbol: str) -> str:
        """The population with its stuck-at total left as ``symbol`` (a sign-off states it per rate)."""
        stuck = self.stuck or StuckAt.from_total(0.0)
        off, on = stuck.ratio
        parts = [f"stuck-at {symbol} split {off:g} : {on:g} (stuck-off : stuck-on)"]
        return "; ".join(parts + [k.describe() for k in self.active if k is not self.stuck])

    def level_expectation(self, cells: CellRange) -> tuple[float, float]:
        """(keep, add) of the kinds composed: a level averaged over chips is ``keep·ℓ + add``."""
        keep, add = 1.0, 0.0
        for k in self.active:
            k_keep, k_add = k.level_expectation(cells)
            keep, add = k_keep * keep, k_keep * add + k_add
        return keep, add

    # --- one chip -----------------------------------------------------------------------------

    def draw(self, cell_shapes: Sequence[tuple[int, ...]], rng: np.random.Generator) -> ChipDraw:
        """One chip's states: layer by layer, each chip-level kind in stage order (the order of
        the chip's random stream; with stuck-at alone, one uniform draw per layer)."""
        kinds = self.chip_kinds
        return [[k.draw(tuple(shape), rng) for k in kinds] for shape in cell_shapes]

    def program(self, levels: Sequence, draw: ChipDraw, cells: CellRange) -> list:
        """The levels a drawn chip holds for programmed ``levels`` (per layer, numpy or torch)."""
        out = []
        for lv, states in zip(levels, draw):
            for kind, state in zip(self.chip_kinds, states):
                lv = kind.apply(lv, state, cells)
            out.append(lv)
        return out

    def read(self, levels: Sequence, rng: np.random.Generator, cells: CellRange) -> list:
        """One inference's reading of a chip's ``levels``: the per-inference kinds, drawn afresh."""
        out = []
        for lv in levels:
            for kind in self.read_kinds:
                lv = kind.apply(lv, kind.draw(tuple(lv.shape), rng), cells)
            out.append(lv)
        return out

    def sample_torch(self, levels, cells: CellRange, generator=None, states=None):
        """A chip for one training step, in torch on ``levels``' device: (levels the chip reads,
        mask of cells deaf to programming or None). ``states`` (one per kind, stage order) gives
        the chip; without it a fresh one is drawn from ``generator``. Kinds at a zero rate draw
        too, so a run's random stream does not depend on when its rate ramps in."""
        frozen = None
        for i, kind in enumerate(self.kinds):
            state = kind.draw_torch(tuple(levels.shape), levels.device, generator) if states is None else states[i]
            levels = kind.apply(levels, state, cells)
            mask = kind.frozen_cells(state)
            if mask is not None:
                frozen = mask if frozen is None else frozen | mask
        return levels, frozen


__all__ = [
    "CHEN2015_SPLIT",
    "HEALTHY",
    "NONIDEALITIES",
    "STUCK_OFF",
    "STUCK_ON",
    "CellRange",
    "ChipDraw",
    "Drift",
    "FaultModel",
    "FaultSpec",
    "NonIdeality",
    "ProgrammingVariation",
    "Rate",
    "ReadNoise",
    "Stage",
    "StuckAt",
    "chip_rng",
    "seconds",
]
