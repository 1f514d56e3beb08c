"""Where every cell of an exported model sits on the chip: its tile, row and column.

The rule (named ``ftdeploy-placement/1`` in the export's metadata) is the one
:func:`ftdeploy.mapping.crossbar_tiles` counts tiles by:

* a layer's weight ``W[o, *fan_in]`` takes its inputs on crossbar rows: the weight's row is the
  flat (C-order) index ``r`` of its fan-in position (``in, kh, kw`` of a convolution, ``in`` of
  a linear layer), so a layer has ``rows = prod(weight_shape[1:])``;
* each output's cells sit on adjacent columns, in the mapping's cell order: cell ``c`` of output
  ``o`` is column ``k = o·C + c`` (``C`` cells per weight), so ``cols = outputs·C``;
* the layer's ``rows × cols`` array is cut into tiles of ``tile_rows × tile_cols``, a tile grid
  of ``ceil(rows / tile_rows) × ceil(cols / tile_cols)`` numbered row-major;
* layers take consecutive tile numbers in export order, the first layer from tile 0.

So the cell at layer position ``(r, k)`` sits on tile ``first_tile + (r // tile_rows)·grid_cols +
k // tile_cols``, row ``r % tile_rows``, column ``k % tile_cols``. The last row and column of a
layer's tiles may be partly used; the cells there hold nothing of the model (a real chip has them,
and their faults do not matter). A cell is addressed in a layer's cell array (``(cells, *weight
shape)``, the ``<layer>.cells.<c>`` initializers stacked) by its flat index; both directions are
vectorised numpy, so a chip of millions of cells maps in one pass.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import numpy as np

from .errors import VerifyError

SCHEME = "ftdeploy-placement/1"
#: The metadata key (``ftdeploy.`` prefixed) that documents an export's placement.
METADATA_KEY = "placement"


@dataclass(frozen=True)
class Geometry:
    """A chip's crossbars: ``tiles`` tiles of ``tile_rows × tile_cols`` cells, numbered from 0."""

    tiles: int
    tile_rows: int
    tile_cols: int

    @property
    def cells_per_tile(self) -> int:
        return self.tile_rows * self.tile_cols

    @property
    def cells(self) -> int:
        return self.tiles * self.cells_per_tile

    def describe(self) -> str:
        return f"tiles={self.tiles} rows={self.tile_rows} cols={self.tile_cols}"


@dataclass(frozen=True)
class LayerPlacement:
    """One crossbar layer on the chip: its tiles and its rows × columns array of cells."""

    name: str
    weight_shape: tuple[int, ...]
    cells_per_weight: int
    first_tile: int
    grid: tuple[int, int]  # tiles down (rows of tiles) x across (columns of tiles)

    @property
    def rows(self) -> int:
        return int(math.prod(self.weight_shape[1:]))

    @property
    def outputs(self) -> int:
        return int(self.weight_shape[0])

    @property
    def cols(self) -> int:
        return self.outputs * self.cells_per_weight

    @property
    def tiles(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def cell_shape(self) -> tuple[int, ...]:
        return (self.cells_per_weight, *self.weight_shape)

    def to_record(self) -> dict:
        return {"name": self.name, "first_tile": self.first_tile, "tile_grid": list(self.grid), "rows": self.rows, "cols": self.cols}


@dataclass(frozen=True)
class Placement:
    """Every crossbar layer of a model on one chip's tiles (see the module docstring)."""

    tile_rows: int
    tile_cols: int
    layers: tuple[LayerPlacement, ...]
    #: Where the chip family routes a tile's inputs to other rows (``ftdeploy program
    #: --permute-rows``): per tile the model occupies, the physical row of each logical row
    #: ``r % tile_rows``. None: every logical row on its own physical row.
    row_permutation: tuple[tuple[int, ...], ...] | None = None

    @classmethod
    def compute(cls, layers: list[tuple[str, tuple[int, ...]]], tile_rows: int, tile_cols: int, cells_per_weight: int) -> "Placement":
        """The placement of ``layers`` ((name, weight shape) in export order) on tiles of
        ``tile_rows × tile_cols``, ``cells_per_weight`` cells per weight."""
        placed, first = [], 0
        for name, shape in layers:
            rows, cols = int(math.prod(shape[1:])), int(shape[0]) * cells_per_weight
            grid = (math.ceil(rows / tile_rows), math.ceil(cols / tile_cols))
            placed.append(LayerPlacement(name, tuple(int(d) for d in shape), cells_per_weight, first, grid))
            first += grid[0] * grid[1]
        return cls(tile_rows, tile_cols, tuple(placed))

    @property
    def tiles(self) -> int:
        """Tiles the model occupies (from tile 0)."""
        return self.layers[-1].first_tile + self.layers[-1].tiles if self.layers else 0

    def geometry(self, tiles: int | None = None) -> Geometry:
        """The chip geometry: ``tiles`` tiles (default: the ones the model occupies)."""
        return Geometry(self.tiles if tiles is None else tiles, self.tile_rows, self.tile_cols)

    @property
    def cell_shapes(self) -> list[tuple[int, ...]]:
        return [layer.cell_shape for layer in self.layers]

    # --- row permutation ------------------------------------------------------------------------

    def with_row_permutation(self, perm: np.ndarray | None) -> "Placement":
        """This placement with each tile's logical rows on the physical rows ``perm`` gives
        (shape (tiles, tile_rows), each row a permutation of 0..tile_rows−1); None: unpermuted."""
        if perm is None:
            return self.unpermuted
        perm = np.asarray(perm, np.int64)
        if perm.shape != (self.tiles, self.tile_rows) or not (np.sort(perm, 1) == np.arange(self.tile_rows)).all():
            raise ValueError(f"row permutation of shape {perm.shape}: expected a permutation of 0..{self.tile_rows - 1} "
                             f"for each of the {self.tiles} tiles")  # fmt: skip
        return replace(self, row_permutation=tuple(tuple(int(v) for v in row) for row in perm))

    @property
    def unpermuted(self) -> "Placement":
        """Every logical row on its own physical row (the rule of the module docstring)."""
        return replace(self, row_permutation=None) if self.row_permutation is not None else self

    @functools.cached_property
    def _perm(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(physical row of each logical row, logical row of each physical row), per tile."""
        if self.row_permutation is None:
            return None
        perm = np.array(self.row_permutation, np.int64).reshape(self.tiles, self.tile_rows)
        return perm, np.argsort(perm, 1)

    def _routed(self, tile: np.ndarray, row: np.ndarray, inverse: bool) -> np.ndarray:
        """``row`` through the row permutation of ``tile`` (its inverse: physical to logical);
        tiles past the model's are never permuted."""
        if self._perm is None or self.tiles == 0:
            return row
        table = self._perm[1 if inverse else 0]
        ours = tile < self.tiles
        return np.where(ours, table[np.clip(tile, 0, self.tiles - 1), row], row)

    def to_record(self) -> dict:
        """The export's ``ftdeploy.placement`` metadata: enough to rebuild every cell's place."""
        return {"scheme": SCHEME, "tile_rows": self.tile_rows, "tile_cols": self.tile_cols, "tiles": self.tiles,
                "layers": [layer.to_record() for layer in self.layers]}  # fmt: skip

    # --- cell array -> chip ---------------------------------------------------------------------

    def to_physical(self, layer: int, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(tile, row, column) of cells of layer ``layer`` given by flat indices into its cell
        array ``(cells, *weight shape)``; int64 arrays shaped like ``flat``."""
        lp = self.layers[layer]
        c, o, r = np.unravel_index(np.asarray(flat, dtype=np.int64), (lp.cells_per_weight, lp.outputs, lp.rows))
        k = o * lp.cells_per_weight + c  # each output's cells on adjacent columns
        tile = (lp.first_tile + (r // self.tile_rows) * lp.grid[1] + k // self.tile_cols).astype(np.int64)
        row = self._routed(tile, (r % self.tile_rows).astype(np.int64), inverse=False)
        return tile, row, (k % self.tile_cols).astype(np.int64)

    # --- chip -> cell array ---------------------------------------------------------------------

    def to_logical(self, tile: np.ndarray, row: np.ndarray, col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(layer, flat index into its cell array) of physical cells; layer −1 (flat 0) where a
        cell holds nothing of the model (past its tiles, or in the unused part of a tile).
        Coordinates must be within the chip (non-negative, row < tile_rows, col < tile_cols)."""
        tile, row, col = (np.asarray(a, dtype=np.int64) for a in (tile, row, col))
        row = self._routed(tile, row, inverse=True)
        if not self.layers:
            return np.full(tile.shape, -1, np.int64), np.zeros(tile.shape, np.int64)
        first = np.array([lp.first_tile for lp in self.layers], np.int64)
        grid_cols = np.array([lp.grid[1] for lp in self.layers], np.int64)
        rows = np.array([lp.rows for lp in self.layers], np.int64)
        cols = np.array([lp.cols for lp in self.layers], np.int64)
        cpw = np.array([lp.cells_per_weight for lp in self.layers], np.int64)
        tiles = first + np.array([lp.tiles for lp in self.layers], np.int64)
        layer = np.searchsorted(first, tile, side="right") - 1
        inside = (layer >= 0) & (tile < tiles[np.clip(layer, 0, None)])
        lyr = np.clip(layer, 0, None)
        local = tile - first[lyr]
        r = (local // grid_cols[lyr]) * self.tile_rows + row
        k = (local % grid_cols[lyr]) * self.tile_cols + col
        inside &= (r < rows[lyr]) & (k < cols[lyr])
        o, c = k // cpw[lyr], k % cpw[lyr]
        flat = (c * (cols[lyr] // cpw[lyr]) + o) * rows[lyr] + r
        return np.where(inside, layer, -1), np.where(inside, flat, 0)

    def layer_states(self, tile: np.ndarray, row: np.ndarray, col: np.ndarray, state: np.ndarray) -> list[np.ndarray]:
        """Per layer (export order), a uint8 array of its cell shape holding ``state`` at each
        listed cell and 0 (healthy) elsewhere; cells that hold nothing of the model are dropped."""
        layer, flat = self.to_logical(tile, row, col)
        state = np.asarray(state, dtype=np.uint8)
        out = []
        for i, lp in enumerate(self.layers):
            held = np.zeros(int(math.prod(lp.cell_shape)), np.uint8)
            mine = layer == i
            held[flat[mine]] = state[mine]
            out.append(held.reshape(lp.cell_shape))
        return out

    def describe(self, cell_names: tuple[str, ...] | list[str]) -> list[str]:
        """Which weight's cells sit on which tile, row and column: the rule, then one line per layer."""
        names = ", ".join(cell_names)
        lines = [f"placement ({SCHEME}): {self.tiles} tiles of {self.tile_rows} x {self.tile_cols}; cell c of weight "
                 f"W[o, *fan-in] of a layer sits at layer row r = flat fan-in index, layer column k = o*{len(cell_names)} + c "
                 f"(cells {names}), on tile first + (r // {self.tile_rows})*grid_cols + k // {self.tile_cols}, "
                 f"row r % {self.tile_rows}, column k % {self.tile_cols}"]  # fmt: skip
        for lp in self.layers:
            span = f"tile {lp.first_tile}" if lp.tiles == 1 else f"tiles {lp.first_tile}-{lp.first_tile + lp.tiles - 1}"
            lines.append(f"  {span}: {lp.name} {list(lp.weight_shape)}, {lp.rows} rows x {lp.cols} columns on a "
                         f"{lp.grid[0]} x {lp.grid[1]} tile grid")  # fmt: skip
        return lines


def placement_for(layers: list[dict], target, cells_per_weight: int) -> Placement:
    """The placement of an export's layers (its ``layers`` metadata records) on ``target``'s tiles."""
    return Placement.compute([(rec["name"], tuple(rec["weight_shape"])) for rec in layers], target.tile_rows,
                             target.tile_cols, cells_per_weight)  # fmt: skip


def placement_of(export) -> Placement:
    """An export's placement (:class:`ftdeploy.exported.ExportedModel`): computed from its target
    and layers, and checked against the ``ftdeploy.placement`` metadata where the file has it
    (files exported before it was recorded have none, and are placed by the same rule)."""
    placement = placement_for(export.layers, export.target, export.mapping.cells_per_weight)
    recorded = export.meta.get(METADATA_KEY)
    if recorded is not None and recorded != placement.to_record():
        scheme = recorded.get("scheme") if isinstance(recorded, dict) else None
        raise VerifyError(f"{export.path}: metadata {METADATA_KEY} ({scheme or 'no scheme'}) differs from the placement "
                          f"{SCHEME} computes for its layers on target {export.target.name!r}")  # fmt: skip
    return _routed_as_programmed(export, placement)


def _routed_as_programmed(export, placement: Placement) -> Placement:
    """A file programmed for one chip with its rows permuted (``programmed_for.row_permutation``)
    sits on that chip's rows as routed: its cells at logical row r are on the physical row the
    record names."""
    programmed = export.meta.get("programmed_for")
    record = programmed.get("row_permutation") if isinstance(programmed, dict) else None
    if not record:
        return placement
    from .programming import permutation_from_record

    if not getattr(export.target, "row_permutation", False):
        raise VerifyError(f"{export.path}: programmed_for.row_permutation moves rows, and target {export.target.name!r} "
                          "does not set row_permutation: true")  # fmt: skip
    return placement.with_row_permutation(permutation_from_record(record, placement, export.path))
