"""The fault model: what happens to cells. One definition, used by the trainer (torch), the
fast evaluator (torch) and the ONNX Runtime verifier (numpy).

A *non-ideality* draws a per-cell state for a chip and applies it to integer cell levels:
here, stuck-at faults, independent per cell: a stuck-off cell reads level 0 (g_off), a stuck-on
cell the highest level (g_on), whatever was programmed. Rate 0 leaves every level untouched, so
a fault-free chip gives the clean result exactly.

Which cells hold a weight, and how levels read back as a weight, is the mapping's business
(:mod:`ftdeploy.mapping`); this module never looks inside a mapping. Adding a non-ideality is
one class and one registry line.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from .mapping import Mapping, array_namespace, quantize_codes, scale_of

HEALTHY, STUCK_OFF, STUCK_ON = 0, 1, 2


class NonIdeality(ABC):
    """What a chip does to the levels programmed into its cells."""

    name: ClassVar[str]

    @abstractmethod
    def state_from_uniform(self, u):
        """Per-cell state (uint8) from uniform draws in [0, 1) (numpy or torch)."""

    @abstractmethod
    def apply(self, levels, state, max_level: int):
        """Levels as the chip reads them, for programmed ``levels`` and a drawn ``state``."""

    @property
    @abstractmethod
    def is_identity(self) -> bool:
        """True when no cell can change (rate 0): callers may skip the work."""

    @abstractmethod
    def level_expectation(self, max_level: int) -> tuple[float, float]:
        """(keep, add): the level a cell reads, averaged over chips, is ``keep · programmed + add``."""

    def sample_numpy(self, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        return self.state_from_uniform(rng.random(shape, dtype=np.float64))

    def sample_torch(self, shape: tuple[int, ...], device, generator: torch.Generator | None = None):
        return self.state_from_uniform(torch.rand(shape, device=device, generator=generator, dtype=torch.float32))


@dataclass(frozen=True)
class StuckAt(NonIdeality):
    """Independent stuck-off / stuck-on faults with per-cell probabilities."""

    stuck_off: float
    stuck_on: float
    name: ClassVar[str] = "stuck-at"

    def __post_init__(self):
        if self.stuck_off < 0 or self.stuck_on < 0 or self.stuck_off + self.stuck_on > 1:
            raise ValueError(f"stuck-at rates must be >= 0 and sum to <= 1, found {self.stuck_off}, {self.stuck_on}")

    @classmethod
    def from_total(cls, p_sa: float, split: tuple[float, float]) -> "StuckAt":
        off, on = split
        return cls(p_sa * off / (off + on), p_sa * on / (off + on))

    @property
    def total(self) -> float:
        return self.stuck_off + self.stuck_on

    @property
    def is_identity(self) -> bool:
        return self.total == 0

    def level_expectation(self, max_level: int) -> tuple[float, float]:
        # healthy: the programmed level; stuck-off: 0; stuck-on: max_level
        return 1.0 - self.total, self.stuck_on * max_level

    def state_from_uniform(self, u):
        xp = array_namespace(u)
        off = u < self.stuck_off
        on = (u >= self.stuck_off) & (u < self.stuck_off + self.stuck_on)
        state = off * STUCK_OFF + on * STUCK_ON
        return state.to(torch.uint8) if xp is torch else state.astype(np.uint8)

    def apply(self, levels, state, max_level: int):
        xp = array_namespace(levels)
        return xp.where(state == STUCK_OFF, 0, xp.where(state == STUCK_ON, max_level, levels))


NONIDEALITIES: dict[str, type[NonIdeality]] = {StuckAt.name: StuckAt}


def chip_rng(seed: int, rate: float, chip: int) -> np.random.Generator:
    """The random stream of one simulated chip. Keyed by the rate's value (in units of 1e-9),
    not its position, so adding a sign-off rate leaves every other rate's chips unchanged."""
    return np.random.default_rng([int(seed), int(round(rate * 1e9)), int(chip)])


def draw_chip_states(nonideality: NonIdeality, cell_shapes: list[tuple[int, ...]], rng) -> list[np.ndarray]:
    """One chip: a state array per layer, layers in the given (export) order."""
    return [nonideality.sample_numpy(shape, rng) for shape in cell_shapes]


def code_expectation(mapping: Mapping, nonideality: NonIdeality) -> tuple[float, float]:
    """(a, b): a weight's code read back, averaged over chips, is ``a · programmed code + b``.

    Every mapping decodes linearly (``q = Σ c_k·level_k + offset``) and a cell's expected level is
    affine in its programmed level, so the expectation is affine in the code:
    ``a = keep``, ``b = add·Σ c_k + offset·(1 − keep)``. For stuck-at faults on a differential
    pair (or bit-sliced cells, Σ c_k = 0) that is ``(1 − P_sa)·q``: on average a faulty chip holds
    the weights shrunk by ``1 − P_sa``, because a stuck-on cell on either column is as likely and
    cancels out while a stuck-off cell only ever loses the programmed value."""
    keep, add = nonideality.level_expectation(mapping.max_level)
    return keep, add * sum(mapping.coefficients) + mapping.offset * (1.0 - keep)


def faulty_codes(mapping: Mapping, levels, state, nonideality: NonIdeality):
    """Codes a chip reads back from programmed levels under a drawn state (numpy or torch)."""
    return mapping.decode(nonideality.apply(levels, state, mapping.max_level))


def faulty_weight(
    weight: torch.Tensor,
    mapping: Mapping,
    nonideality: NonIdeality,
    state: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    block_stuck_grad: bool = True,
    scale: torch.Tensor | None = None,
    unbiased: bool = False,
) -> torch.Tensor:
    """Differentiable weight as a faulty chip computes with it (training and fast evaluation).

    The weight is quantised to codes at the layer's scale ``s = max|W|/Q`` (round with a
    straight-through gradient), laid onto cells, faulted, read back. Gradients:
      - healthy weights: straight through the quantiser, as in quantisation-aware training;
      - the scale ``s`` is *not* detached, so a stuck-on cell (worth ``L`` levels of ``s``)
        pushes the layer's largest weight down: training learns to shrink the full-scale value
        a stuck-on cell injects, instead of only working around it;
      - a weight with a stuck cell gets no gradient when ``block_stuck_grad`` (its cell does
        not respond to programming on this chip, so a gradient there is noise).
    ``unbiased`` maps the chip's codes back through :func:`code_expectation`, ``(q' − b) / a``, so
    that the weight averaged over chips is the fault-free one, as inverted dropout divides by the
    keep probability (training only: a real chip does not do this).
    ``state`` gives the chip (cells, *weight.shape); without it one is drawn. ``scale``
    (broadcastable to ``weight``) replaces ``scale_of(weight)``: the trainer passes it when it
    faults all layers at once as one flat vector.
    """
    target = mapping.target
    s = scale_of(weight, target) if scale is None else scale
    u = weight / s
    codes = quantize_codes(weight.detach(), s.detach(), target)
    q = u + (codes.to(u.dtype) - u).detach()  # value: integer codes; gradient: identity
    levels = mapping.encode(codes)
    if state is None:
        state = nonideality.sample_torch(tuple(levels.shape), weight.device, generator)
    delta = (faulty_codes(mapping, levels, state, nonideality) - codes.to(torch.float32)).to(u.dtype)
    if block_stuck_grad:
        stuck = (state != HEALTHY).any(0)
        q = torch.where(stuck, q.detach(), q)
    if unbiased:
        a, b = code_expectation(mapping, nonideality)
        return (q + delta - b) / a * s
    return (q + delta) * s


def quantized_weight(weight: torch.Tensor, mapping: Mapping) -> torch.Tensor:
    """Fault-free deployed weight (codes × scale), with a straight-through gradient."""
    s = scale_of(weight, mapping.target)
    codes = quantize_codes(weight.detach(), s.detach(), mapping.target).to(weight.dtype)
    u = weight / s
    return (u + (codes - u).detach()) * s
