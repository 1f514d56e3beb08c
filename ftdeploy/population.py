"""The chip-population evaluator: chips from a *source*, measured on a *backend*.

A chip source yields chips; each chip knows how it reads back the levels a network was
programmed with. A backend (PyTorch: :class:`ftdeploy.chip.TorchBackend`; ONNX Runtime:
:class:`ftdeploy.runtime.OnnxBackend`) holds one network and one image set, loads a chip's
levels and counts correct predictions. :func:`chip_accuracies` is the one loop over chips that
sign-off, the sweep, training's per-epoch check and the Python API share, and
:meth:`Backend.accuracy` the one loop over images.

Chip k of a source is the same chip on every backend: its states come from its own random
stream (:func:`ftdeploy.nonideality.chip_rng`), drawn and applied in numpy over the layers in
export order, so both backends load identical levels.

A backend may run several chips in one pass (``chip_batch``; the PyTorch backend stacks their
weights along a chip dimension): :func:`chip_accuracies` then draws a group's chips at once, each
from its own stream on its own thread, and hands the group to :meth:`Backend.accuracies`. Chip k
is drawn exactly as alone, so grouping changes which chips share a pass, never a chip.

A measured fault map is one more chip source (:class:`ftdeploy.measured.MeasuredChips`): its
chips are physical ones, named by :class:`MeasuredChipId`, and any chip of any source is what
:class:`ChipLike` says, an id and a reading.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Protocol

import numpy as np

from .nonideality import CellRange, ChipDraw, FaultModel, chip_rng


@dataclass(frozen=True)
class ChipId:
    """Which chip: a simulated chip is (stuck-at rate, seed, index) of its population."""

    rate: float
    seed: int
    index: int

    def __str__(self) -> str:
        return f"rate {self.rate:g}, seed {self.seed}, chip {self.index}"


@dataclass(frozen=True)
class MeasuredChipId:
    """Which chip: a measured chip is the chip its fault map names, and the map file it came from
    (name and SHA-256 of its bytes)."""

    name: str
    file: str
    sha256: str

    def __str__(self) -> str:
        return f"chip {self.name} (map {self.file}, sha256 {self.sha256[:16]}…)"


class ChipReading:
    """How one chip reads back a network's programmed levels: fixed once programmed, except for
    per-inference kinds (read noise), which each call of :meth:`levels` draws afresh from the
    chip's own stream. Backends call it once per batch of images, in order, so a noisy chip gives
    the same figures on every backend at the same batch size."""

    def __init__(self, faults: FaultModel, programmed: Sequence[np.ndarray], draw: ChipDraw, rng: np.random.Generator,
                 cells: CellRange):  # fmt: skip
        self.faults = faults
        self.cells = cells
        self._rng = rng
        self._held = faults.program(programmed, draw, cells)

    @property
    def per_inference(self) -> bool:
        return bool(self.faults.read_kinds)

    def levels(self) -> list[np.ndarray]:
        if not self.per_inference:
            return self._held
        return self.faults.read(self._held, self._rng, self.cells)


@dataclass(frozen=True)
class Chip:
    """One chip of a source: its id and how its states are drawn."""

    id: ChipId
    faults: FaultModel

    def reading(self, programmed: Sequence[np.ndarray], cells: CellRange) -> ChipReading:
        rng = chip_rng(self.id.seed, self.id.rate, self.id.index)
        draw = self.faults.draw([tuple(lv.shape) for lv in programmed], rng)
        return ChipReading(self.faults, programmed, draw, rng, cells)


class ChipLike(Protocol):
    """What the evaluator needs of a chip of any source: its id, and how it reads back the levels
    a network was programmed with (:class:`Chip` simulates one; a measured chip applies its map)."""

    @property
    def id(self) -> ChipId | MeasuredChipId: ...

    def reading(self, programmed: Sequence[np.ndarray], cells: CellRange) -> ChipReading: ...


class ChipSource(ABC):
    """Where chips come from: simulated from a fault model, or measured fault maps."""

    @abstractmethod
    def __iter__(self) -> Iterator[ChipLike]: ...

    @abstractmethod
    def __len__(self) -> int: ...

    @property
    @abstractmethod
    def is_identity(self) -> bool:
        """True when every chip is the programmed one, exactly (nothing to simulate)."""


@dataclass(frozen=True)
class SimulatedChips(ChipSource):
    """``count`` chips of a fault model at one stuck-at rate, from index ``start`` on: chip k
    draws from ``chip_rng(seed, rate, k)``, so chips 0..n−1 are the first n of any longer run and
    a population can be drawn in batches. ``faults`` is the profile's population at that rate
    (:meth:`FaultModel.at_rate`)."""

    faults: FaultModel
    rate: float
    seed: int
    count: int
    start: int = 0

    def __iter__(self) -> Iterator[Chip]:
        for index in range(self.start, self.start + self.count):
            yield Chip(ChipId(self.rate, self.seed, index), self.faults)

    def __len__(self) -> int:
        return self.count

    @property
    def is_identity(self) -> bool:
        return self.faults.is_identity


class Backend(ABC):
    """One network on one image set; any chip's levels can be loaded in place of the programmed
    ones. Subclasses hold the data in their own form and implement :meth:`_load` and
    :meth:`_correct`."""

    #: Levels the network was programmed with, per layer in export order, (cells, *weight shape).
    programmed: list[np.ndarray]
    cells: CellRange
    batch_size: int
    #: Chips :meth:`accuracies` runs in one pass; 1: one at a time (what every backend can do).
    chip_batch: int = 1

    @property
    @abstractmethod
    def n_images(self) -> int: ...

    @abstractmethod
    def _load(self, levels: list[np.ndarray] | None) -> None:
        """Compute with these levels from now on; None: the programmed ones."""

    @abstractmethod
    def _correct(self, start: int, stop: int) -> int:
        """Correct top-1 predictions on images ``start:stop`` with the levels loaded."""

    def accuracy(self, reading: ChipReading | None = None) -> float:
        """Top-1 accuracy in percent over the image set, on a chip (None: the levels loaded, the
        programmed ones unless a caller loaded others). A per-inference chip is read afresh for
        every batch; a chip's levels are unloaded after it."""
        correct = 0
        if reading is not None:
            self._load(reading.levels())
        try:
            for batch, start in enumerate(range(0, self.n_images, self.batch_size)):
                if batch and reading is not None and reading.per_inference:
                    self._load(reading.levels())
                correct += self._correct(start, min(start + self.batch_size, self.n_images))
        finally:
            if reading is not None:
                self._load(None)
        return 100.0 * correct / self.n_images

    def accuracies(self, readings: Sequence[ChipReading]) -> list[float]:
        """Accuracy (%) of each chip of a group of at most ``chip_batch``; a backend that runs
        several chips in one pass overrides it, and must give what :meth:`accuracy` gives."""
        return [self.accuracy(reading) for reading in readings]


def chip_accuracies(backend: Backend, chips: ChipSource, on_chip: Callable[[], None] | None = None) -> list[float]:
    """Accuracy (%) of every chip of ``chips`` on ``backend``, in source order, measured
    ``backend.chip_batch`` chips at a time. ``on_chip`` runs after each chip (a progress bar, or
    a check that raises to stop early; with groups, once per chip after its group)."""
    if chips.is_identity:  # every chip is the programmed one
        clean = backend.accuracy()
        accs = []
        for _ in chips:
            accs.append(clean)
            if on_chip:
                on_chip()
        return accs
    accs = []
    it = iter(chips)
    while group := list(islice(it, max(1, backend.chip_batch))):
        for acc in backend.accuracies(draw_readings(group, backend.programmed, backend.cells)):
            accs.append(acc)
            if on_chip:
                on_chip()
    return accs


def draw_readings(chips: Sequence[ChipLike], programmed: Sequence[np.ndarray], cells: CellRange) -> list[ChipReading]:
    """Each chip's reading of ``programmed``, drawn concurrently: every chip draws from its own
    stream, so the order threads run in changes nothing, and numpy releases the GIL while it
    fills a layer's draws and applies them, so K chips draw in about K / cores the time of one."""
    if len(chips) == 1:
        return [chips[0].reading(programmed, cells)]
    with ThreadPoolExecutor(max_workers=min(len(chips), available_cores())) as pool:
        return list(pool.map(lambda chip: chip.reading(programmed, cells), chips))


def available_cores() -> int:
    """CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)
