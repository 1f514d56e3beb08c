"""Measured chips: physical chips as a chip source, each from the fault map its tester wrote, and
fault maps of simulated chips, written as a tester would write them.

A measured chip reads back the programmed levels with its map's stuck cells applied exactly as
the stuck-at kind applies a simulated chip's (stuck-off: level 0, stuck-on: the top level). The
profile's other kinds (programming variation, drift, read noise) are simulated on top as the
profile states them, from the chip's own stream :func:`measured_rng`, keyed by the SHA-256 of its
map file: the same file gives the same chip wherever it lies and whatever its name. A profile
whose faults are stuck-at only gives exactly the map.

:func:`simulate_fault_maps` writes the maps of a profile's simulated chips at one stuck-at rate:
chip k's map lists the stuck cells of ``ChipId(rate, seed, k)``, the very chip the Monte-Carlo
sign-off draws at that rate and seed, so verifying the maps measures the same chips.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .errors import ConfigError, DataError
from .faultmap import SUFFIXES, FaultMap, check_fits, check_geometry, fault_map, read_fault_map, write_fault_map
from .nonideality import STUCK_OFF, STUCK_ON, CellRange, FaultModel, StuckAt, chip_rng
from .placement import Geometry, Placement
from .population import ChipReading, ChipSource, MeasuredChipId

#: First word of every measured chip's seed: its stream is never a simulated chip's.
MEASURED_STREAM = 0x6D6170  # "map"
#: Last word of the stream a simulated map draws the cells outside the model from.
OUTSIDE_STREAM = 1
#: First word of every measured chip's field-fault stream: never its other kinds' stream.
FIELD_STREAM = 0x6669656C64  # "field"


def measured_rng(sha256: str) -> np.random.Generator:
    """The random stream of a measured chip's simulated kinds: seeded by all 256 bits of its map
    file's SHA-256."""
    return np.random.default_rng([MEASURED_STREAM, *(int(sha256[i : i + 8], 16) for i in range(0, 64, 8))])


def field_rng(sha256: str, seed: int) -> np.random.Generator:
    """The random stream of a measured chip's field faults: seeded by its map file's SHA-256 and
    the sign-off seed, and apart from :func:`measured_rng`, so adding field faults leaves every
    other kind's draw of the chip unchanged."""
    return np.random.default_rng([FIELD_STREAM, int(seed), *(int(sha256[i : i + 8], 16) for i in range(0, 64, 8))])


@dataclass(frozen=True)
class FieldFaults:
    """Faults that appear after programming (the profile's ``signoff.field_rate``): stuck-at
    cells drawn at ``stuck``'s rates with ``seed``, on top of a chip's measured map."""

    stuck: StuckAt
    seed: int


def cells_in_model(fmap: FaultMap, placement: Placement) -> tuple[int, int]:
    """(stuck-off, stuck-on) cells of the map that hold a weight of the model."""
    layer, _ = placement.to_logical(fmap.tile, fmap.row, fmap.col)
    held = fmap.state[layer >= 0]
    return int(np.count_nonzero(held == STUCK_OFF)), int(np.count_nonzero(held == STUCK_ON))


@dataclass(frozen=True, eq=False)
class MeasuredChip:
    """One physical chip: its map, where the model's cells sit on it, and the kinds it suffers
    (the profile's, its stuck-at set to the map's measured rates over the model's cells)."""

    id: MeasuredChipId
    fmap: FaultMap
    placement: Placement
    faults: FaultModel
    in_model: tuple[int, int]  # (stuck-off, stuck-on) cells holding a weight
    field: FieldFaults | None = None

    def states(self) -> list[np.ndarray]:
        """Per layer, the stuck-at state of every cell as the map gives it (uint8, the cell
        shape): what a production line knows, and programs around."""
        return self.placement.layer_states(self.fmap.tile, self.fmap.row, self.fmap.col, self.fmap.state)

    def field_cells(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(tile, row, column, state) of the chip's field faults among the model's cells; none
        where the map already lists a cell (a stuck cell stays as measured).

        Field faults fall on physical cells, wherever the chip routes its rows: they are drawn
        layer by layer over the model's cells in their unpermuted place, then (the same stream
        going on) over every other cell of the model's tiles, tile by tile in row-major order; the
        cells returned are those of the draw that hold a weight as this chip places the model. So
        rows routed onto a tile's spare rows (``--permute-rows``) meet field faults as any other
        row does, and a chip with its rows in place has exactly the cells of the first draw."""
        empty = np.zeros(0, np.int64)
        if self.field is None:
            return empty, empty, empty, empty.astype(np.uint8)
        place = self.placement.unpermuted
        fmap = self.fmap
        measured = place.layer_states(fmap.tile, fmap.row, fmap.col, fmap.state)
        rng = field_rng(self.id.sha256, self.field.seed)
        parts = []
        for layer, known in enumerate(measured):
            state = self.field.stuck.draw(known.shape, rng).reshape(-1)
            state[known.reshape(-1) != 0] = 0
            flat = np.flatnonzero(state)
            parts.append((*place.to_physical(layer, flat), state[flat]))
        if self.placement.row_permutation is not None and place.tiles:
            # the rest of the model's tiles: cells no weight occupies in place, where routed rows may go
            g = place.geometry()
            spare = self.field.stuck.draw((g.tiles, g.tile_rows, g.tile_cols), rng)
            tile, row, col = (a.reshape(-1) for a in np.indices(spare.shape))
            spare[place.to_logical(tile, row, col)[0].reshape(spare.shape) >= 0] = 0  # drawn above
            ours = np.asarray(fmap.tile) < g.tiles
            spare[np.asarray(fmap.tile)[ours], np.asarray(fmap.row)[ours], np.asarray(fmap.col)[ours]] = 0  # measured
            found = np.nonzero(spare)
            parts.append((*(a.astype(np.int64) for a in found), spare[found]))
        cells = tuple(np.concatenate([p[i] for p in parts]) if parts else empty for i in range(4))
        if self.placement.row_permutation is None:
            return cells
        held = self.placement.to_logical(*cells[:3])[0] >= 0
        return tuple(a[held] for a in cells)

    def read_states(self) -> list[np.ndarray]:
        """Per layer, the stuck-at state the chip reads with: its map's, and its field faults."""
        tile, row, col, state = self.field_cells()
        fmap = self.fmap
        return self.placement.layer_states(np.concatenate([fmap.tile, tile]), np.concatenate([fmap.row, row]),
                                           np.concatenate([fmap.col, col]), np.concatenate([fmap.state, state]))  # fmt: skip

    def reading(self, programmed: Sequence[np.ndarray], cells: CellRange) -> ChipReading:
        shapes = [tuple(lv.shape) for lv in programmed]
        if shapes != self.placement.cell_shapes:
            raise ValueError(f"programmed levels {shapes} are not the placed layers' {self.placement.cell_shapes}")
        rng = measured_rng(self.id.sha256)
        # The map (and field faults) stand in for the stuck-at draw; every other chip-level kind
        # draws in the order a simulated chip would (layer by layer, stage order), from this chip's stream.
        states = self.read_states()
        draw = [[st if isinstance(kind, StuckAt) else kind.draw(shape, rng) for kind in self.faults.chip_kinds]
                for shape, st in zip(shapes, states)]  # fmt: skip
        return ChipReading(self.faults, programmed, draw, rng, cells)


@dataclass(frozen=True)
class MeasuredChips(ChipSource):
    """Physical chips from fault maps, in the order given (a folder's: by file name)."""

    chips: tuple[MeasuredChip, ...]

    @classmethod
    def from_maps(cls, maps: Sequence[FaultMap], placement: Placement, population: FaultModel) -> "MeasuredChips":
        """Chips of ``maps`` for a model placed as ``placement``; ``population`` is the profile's
        fault model, whose kinds other than stuck-at each chip suffers as stated."""
        cells = sum(math.prod(s) for s in placement.cell_shapes)
        chips = []
        for fmap in maps:
            check_fits(fmap, placement)
            off, on = cells_in_model(fmap, placement)
            faults = population.at_pair(off / cells, on / cells)
            chips.append(MeasuredChip(MeasuredChipId(fmap.chip, fmap.source, fmap.sha256 or ""), fmap, placement, faults, (off, on)))
        return cls(tuple(chips))

    @classmethod
    def from_folder(cls, folder: str | Path, placement: Placement, population: FaultModel) -> "MeasuredChips":
        """Every map (``*.csv``, ``*.npz``) in ``folder``, sorted by file name; each is read and
        checked before any chip runs, and two maps of one chip are refused."""
        maps = [read_fault_map(path) for path in list_fault_maps(folder)]
        seen: dict[str, str] = {}
        for fmap in maps:
            if fmap.chip in seen:
                raise DataError(f"{fmap.source}: chip {fmap.chip!r} is also the chip of {seen[fmap.chip]}; expected one map per chip")
            seen[fmap.chip] = fmap.source
        return cls.from_maps(maps, placement, population)

    def with_field(self, field: FieldFaults) -> "MeasuredChips":
        """The same chips with field faults on top of their maps. Each chip's stuck-at rates are
        set to what the map and field faults give together on average (the kind stays active
        where the map lists nothing); the cells themselves are the map's and :meth:`MeasuredChip.field_cells`."""
        off_f, on_f = field.stuck.pair
        chips = []
        for chip in self.chips:
            cells = sum(math.prod(s) for s in chip.placement.cell_shapes)
            off, on = (n / cells for n in chip.in_model)
            healthy = 1.0 - off - on
            faults = chip.faults.at_pair(off + healthy * off_f, on + healthy * on_f)
            chips.append(replace(chip, faults=faults, field=field))
        return MeasuredChips(tuple(chips))

    def __iter__(self) -> Iterator[MeasuredChip]:
        return iter(self.chips)

    def __len__(self) -> int:
        return len(self.chips)

    @property
    def is_identity(self) -> bool:
        return all(chip.faults.is_identity for chip in self.chips)


def list_fault_maps(folder: str | Path) -> list[Path]:
    """The map files of a folder: ``*.csv`` and ``*.npz`` (any case), by name; hidden files
    (a spreadsheet's lock file, a half-written temporary) are not maps."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--fault-maps: {folder} is not a folder; expected a folder of fault maps (*.csv, *.npz)")
    maps = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES and not p.name.startswith("."))
    if not maps:
        raise DataError(f"--fault-maps: {folder} holds no fault maps; expected *.csv or *.npz files, one per chip")
    return maps


# --- maps of simulated chips ----------------------------------------------------------------------


def simulate_fault_maps(placement: Placement, faults: FaultModel, rate: float, seed: int, chips: int, out: str | Path,
                        form: str = "csv", tiles: int | None = None,
                        on_chip: Callable[[Path], None] | None = None) -> list[Path]:  # fmt: skip
    """Write ``chips`` maps to ``out`` (``chip-0000.csv``, ...): chip k lists the stuck cells of
    the simulated chip ``ChipId(rate, seed, k)`` of ``faults`` (a profile's population at that
    rate: ``profile.signoff_faults(rate)``), drawn from its own stream exactly as sign-off draws
    it, in the model's cells. The chip's other cells (the unused part of the model's tiles, and
    tiles past the model up to ``tiles``) are stuck at the same rates, drawn from a second stream
    of the same chip, so they never change a cell the model uses."""
    geometry = placement.geometry(tiles)
    if geometry.tiles < placement.tiles:
        raise ConfigError(f"--tiles: {geometry.tiles}; expected at least the {placement.tiles} tiles the model occupies")
    try:  # a map must be readable back: the same bounds as a tester's
        check_geometry(geometry.tiles, geometry.tile_rows, geometry.tile_cols, "--tiles")
    except DataError as exc:
        raise ConfigError(str(exc)) from None
    if form not in ("csv", "npz"):
        raise ConfigError(f"--format: {form!r}; expected csv or npz")
    out = Path(out)
    width = max(4, len(str(chips - 1)))
    written = []
    for k in range(chips):
        fmap = simulated_map(placement, geometry, faults, rate, seed, k)
        path = write_fault_map(fmap, out / f"chip-{k:0{width}d}.{form}")
        written.append(path)
        if on_chip:
            on_chip(path)
    return written


def simulated_map(placement: Placement, geometry: Geometry, faults: FaultModel, rate: float, seed: int, index: int) -> FaultMap:
    """The map of simulated chip ``ChipId(rate, seed, index)``."""
    stuck = faults.stuck
    kinds = faults.chip_kinds
    parts = []
    if stuck is not None and stuck in kinds:
        at = kinds.index(stuck)
        draw = faults.draw(placement.cell_shapes, chip_rng(seed, rate, index))  # as Chip.reading draws it
        for layer, states in enumerate(draw):
            held = states[at].reshape(-1)
            flat = np.flatnonzero(held)
            parts.append((*placement.to_physical(layer, flat), held[flat]))
        outside = np.random.default_rng([int(seed), int(round(rate * 1e9)), int(index), OUTSIDE_STREAM])
        parts.extend(_outside_cells(placement, geometry, stuck, outside))
    tile, row, col, state = (np.concatenate([p[i] for p in parts]) if parts else np.zeros(0, np.int64) for i in range(4))
    return fault_map(f"sim-rate{rate:g}-seed{seed}-chip{index}", geometry, tile, row, col, state)


def _outside_cells(placement: Placement, geometry: Geometry, stuck: StuckAt, rng: np.random.Generator):
    """Stuck cells among the chip's cells that hold nothing of the model, tile by tile (bounded
    memory, whatever the chip's size)."""
    rows, cols = np.meshgrid(np.arange(geometry.tile_rows), np.arange(geometry.tile_cols), indexing="ij")
    rows, cols = rows.reshape(-1), cols.reshape(-1)
    for tile in range(geometry.tiles):
        states = stuck.draw((geometry.cells_per_tile,), rng)
        if tile < placement.tiles:
            layer, _ = placement.to_logical(np.full(rows.shape, tile), rows, cols)
            states[layer >= 0] = 0  # the model's cells: the chip's own draw
        hit = np.flatnonzero(states)
        if len(hit):
            yield np.full(len(hit), tile, np.int64), rows[hit], cols[hit], states[hit]
