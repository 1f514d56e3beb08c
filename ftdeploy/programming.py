"""Fault-aware programming: program one chip around its own stuck cells.

A production line tests each chip before programming it, so it knows which cells are stuck and at
what (its fault map). A stuck cell reads its stuck level (stuck-off: 0, stuck-on: the top level L)
whatever is programmed, but the weight's *other* cells are healthy and can be set to make up for
it. Every mapping reads back linearly (``q = Σ_c coefficient[c]·level[c] + offset``), so for each
weight with a stuck cell the healthy cells' levels are chosen to bring the decoded code as close
as possible to the weight's target code. On a differential pair, a stuck-on ``neg`` cell is
compensated by raising ``pos`` by L (exact wherever ``pos`` has the range); a stuck-off cell on the
idle side already reads what it should and costs nothing.

The choice is exact: the level combinations of the weight's healthy cells (``(L+1)^k`` for ``k``
healthy cells) are tabulated once per pattern of healthy cells, grouped by the code each gives,
and only the settings of the one or two reachable codes nearest the target are compared (one on
a differential pair, at most 64 on 2-bit bit-sliced cells), in vectorised batches over the few
weights that have a stuck cell. Among the settings that reach the smallest error, the one
closest to the planned levels wins (fewest changed cells, then least total conductance), so the planned levels
are kept wherever they are already best: no weight of a programmed chip reads further from its
code than it would unprogrammed, and weights without a stuck cell are left exactly as planned.
That is a guarantee per weight, not per chip: the network's accuracy usually follows, but a
faulty weight can by chance help a weak model, so a chip's measured accuracy can move either way
by a few images.

Where the chip family can route a tile's inputs to any of its physical rows (the target's
``row_permutation``), :func:`choose_row_permutation` also moves each tile's logical rows onto the
physical rows where the stuck cells cost least: per tile, the assignment of logical to physical
rows that minimises the summed residual ``|read − code|`` (in codes) after per-weight programming,
an assignment problem solved exactly (:func:`scipy.optimize.linear_sum_assignment`). The residual
of a weight depends only on its code and its cells' stuck pattern, so one table per pattern
(every code, programmed as above) prices every pairing of a logical row with a physical row.

Not covered: faults that appear after programming (programming uses the map as tested; a lot's
sign-off adds them on top, :class:`ftdeploy.measured.FieldFaults`), moving outputs (columns), and
cells that are not stuck but off target (programming variation is simulated on top as before).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .mapping import Mapping
from .nonideality import STUCK_OFF, STUCK_ON

#: Most level combinations enumerated for one weight. Every shipped target needs at most 128;
#: a target past this (many healthy cells of many levels) needs a smarter search, not patience.
MAX_COMBINATIONS = 1 << 16
#: Weights × combinations × cells handled at once: bounds the memory of one batch (~8 bytes each).
BATCH_ELEMENTS = 1 << 22


def stuck_levels(states: np.ndarray, max_level: int) -> np.ndarray:
    """The level each cell reads because of its fault: 0 stuck-off, L stuck-on, -1 healthy."""
    out = np.full(states.shape, -1, np.int64)
    out[states == STUCK_OFF] = 0
    out[states == STUCK_ON] = max_level
    return out


def read_levels(levels: np.ndarray, states: np.ndarray, max_level: int) -> np.ndarray:
    """What a chip with ``states`` reads of programmed ``levels``: stuck cells their stuck level."""
    stuck = stuck_levels(states, max_level)
    return np.where(stuck >= 0, stuck, levels)


def program_levels(mapping: Mapping, codes: np.ndarray, levels: np.ndarray, states: np.ndarray) -> np.ndarray:
    """Levels to program on one chip's layer so each weight reads as close to its code as its
    healthy cells allow.

    ``codes``: target integer codes (weight shape); ``levels``: the planned levels, shape
    ``(cells, *weight shape)`` (what ``mapping.encode(codes)`` gives); ``states``: the chip's
    stuck-at state of every cell (same shape; HEALTHY, STUCK_OFF, STUCK_ON). Returns new levels
    of ``levels``' shape and dtype: equal to the planned ones on every weight without a stuck cell,
    and on stuck cells themselves (they read their stuck level whatever is programmed).
    Raises ValueError where a weight would need more than :data:`MAX_COMBINATIONS` combinations."""
    levels = np.asarray(levels)
    states = np.asarray(states)
    codes = np.asarray(codes)
    if levels.shape != states.shape or levels.shape != (mapping.cells_per_weight, *codes.shape):
        raise ValueError(f"levels {levels.shape}, states {states.shape} and codes {codes.shape} do not match "
                         f"{mapping.cells_per_weight} cells per weight")  # fmt: skip
    cells = mapping.cells_per_weight
    flat_levels = levels.reshape(cells, -1)
    flat_states = states.reshape(cells, -1)
    faulty = np.flatnonzero((flat_states != 0).any(0))
    out = flat_levels.copy()
    if len(faulty) == 0:
        return out.reshape(levels.shape)
    planned = flat_levels[:, faulty].astype(np.int64).T  # (n, cells)
    stuck = stuck_levels(flat_states[:, faulty], mapping.max_level).T  # (n, cells), -1 where healthy
    target = codes.reshape(-1)[faulty].astype(np.int64)
    # Weights sharing one pattern of healthy cells share one table of combinations.
    healthy = stuck < 0
    patterns, group = np.unique(healthy, axis=0, return_inverse=True)
    group = group.reshape(-1)
    for p, pattern in enumerate(patterns):
        members = np.flatnonzero(group == p)
        chosen = _best_levels(mapping, pattern, planned[members], stuck[members], target[members])
        out[:, faulty[members]] = chosen.T.astype(out.dtype)
    return out.reshape(levels.shape)


def program_chip(mapping: Mapping, planned: Sequence[np.ndarray], states: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Every layer of a model programmed around one chip's stuck cells (levels and states per
    layer, as :meth:`ftdeploy.measured.MeasuredChip.states` gives them). The target codes are
    the planned levels decoded: an export holds each weight's levels for its code."""
    return [program_levels(mapping, np.rint(mapping.decode(lv)).astype(np.int64), lv, st)
            for lv, st in zip(planned, states)]  # fmt: skip


def combinations(max_level: int, healthy_cells: int) -> np.ndarray:
    """Every level setting of ``healthy_cells`` cells, shape (combinations, healthy_cells)."""
    count = check_combinations(max_level, healthy_cells)
    return np.indices((max_level + 1,) * healthy_cells).reshape(healthy_cells, count).T.astype(np.int64)


def check_combinations(max_level: int, healthy_cells: int) -> int:
    """The number of level settings of ``healthy_cells`` cells; ValueError past :data:`MAX_COMBINATIONS`."""
    count = (max_level + 1) ** healthy_cells
    if count > MAX_COMBINATIONS:
        raise ValueError(f"programming around stuck cells would enumerate {count} level combinations per weight "
                         f"({healthy_cells} healthy cells of {max_level + 1} levels); at most {MAX_COMBINATIONS} are supported")  # fmt: skip
    return count


@functools.lru_cache(maxsize=512)
def _table(max_level: int, coefficients: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every setting of cells with these coefficients, grouped by the code it contributes:
    (settings sorted by code, the distinct codes, where each code's settings start, how many)."""
    table = combinations(max_level, len(coefficients))
    code = table @ np.asarray(coefficients, np.int64)
    order = np.argsort(code, kind="stable")
    values, starts, counts = np.unique(code[order], return_index=True, return_counts=True)
    return table[order], values, starts, counts


def _best_levels(mapping: Mapping, healthy: np.ndarray, planned: np.ndarray, stuck: np.ndarray,
                 target: np.ndarray) -> np.ndarray:  # fmt: skip
    """Best levels (n, cells) for weights that share one pattern of ``healthy`` cells.

    Error first: the healthy cells should contribute ``want`` = code − what the stuck cells read;
    the closest codes they can contribute are the two distinct codes around ``want`` (one when it
    is reachable). Then, among the settings giving a closest code (a handful per code), the one
    with the fewest cells changed from the plan, then the least total level."""
    coef = np.asarray(mapping.coefficients, np.int64)
    chosen = planned.copy()
    cols = np.flatnonzero(healthy)
    if len(cols) == 0:  # every cell stuck: nothing to choose
        return chosen
    check_combinations(mapping.max_level, len(cols))  # before the cache: a table past the limit is never built
    table, values, starts, counts = _table(mapping.max_level, tuple(int(c) for c in coef[cols]))
    want = target - (np.where(healthy, 0, stuck) @ coef + int(mapping.offset))  # (n,)
    above = np.clip(np.searchsorted(values, want), 0, len(values) - 1)
    near = np.stack([np.clip(above - 1, 0, None), above], 1)  # (n, 2) the distinct codes around want
    error = np.abs(values[near] - want[:, None])
    usable = error == error.min(1, keepdims=True)
    usable[:, 1] &= near[:, 1] != near[:, 0]  # one code, not twice
    widest = int(counts.max())
    k = len(cols)
    total_span = k * mapping.max_level + 1
    batch = max(1, BATCH_ELEMENTS // (2 * widest * k))
    slot = np.arange(widest)
    for first in range(0, len(planned), batch):
        part = slice(first, first + batch)
        # (b, 2, widest) rows of the table: the settings of each usable code, padded
        index = starts[near[part]][:, :, None] + slot
        valid = usable[part][:, :, None] & (slot < counts[near[part]][:, :, None])
        settings = table[np.minimum(index, len(table) - 1)].reshape(len(index), 2 * widest, k)
        changed = (settings != planned[part][:, None, cols]).sum(-1)
        key = changed * total_span + settings.sum(-1)
        key = np.where(valid.reshape(len(index), -1), key, np.iinfo(np.int64).max)
        chosen[part, cols] = settings[np.arange(len(index)), key.argmin(1)]
    return chosen


# --- row permutation ------------------------------------------------------------------------------

#: Residual error of every code under one stuck pattern, per mapping: (mapping key, pattern) -> errors.
_RESIDUALS: dict[tuple, np.ndarray] = {}


def _mapping_key(mapping: Mapping) -> tuple:
    return (type(mapping).__name__, tuple(mapping.coefficients), int(mapping.offset), mapping.max_level, mapping.max_code)


def residual_table(mapping: Mapping, patterns: np.ndarray) -> np.ndarray:
    """``|read − code|`` of every code ``-Q..Q`` (columns) programmed under each stuck pattern
    (rows of ``patterns``, shape (n, cells): HEALTHY / STUCK_OFF / STUCK_ON): the error a weight
    keeps however its healthy cells are set. Cached per mapping and pattern (a lot repeats them)."""
    key = _mapping_key(mapping)
    codes = np.arange(-mapping.max_code, mapping.max_code + 1, dtype=np.int64)
    missing = [tuple(int(v) for v in p) for p in patterns if (key, tuple(int(v) for v in p)) not in _RESIDUALS]
    missing = list(dict.fromkeys(missing))
    if missing:
        states = np.repeat(np.array(missing, np.uint8).T, len(codes), axis=1)  # (cells, patterns × codes)
        tiled = np.tile(codes, len(missing))
        planned = np.asarray(mapping.encode(tiled)).astype(np.uint8)
        read = mapping.decode(read_levels(program_levels(mapping, tiled, planned, states), states, mapping.max_level))
        errors = np.abs(np.rint(read).astype(np.int64) - tiled).reshape(len(missing), len(codes))
        for pattern, row in zip(missing, errors):
            _RESIDUALS[(key, pattern)] = row
    return np.stack([_RESIDUALS[(key, tuple(int(v) for v in p))] for p in patterns]) if len(patterns) else \
        np.zeros((0, len(codes)), np.int64)  # fmt: skip


def check_row_permutation(export, where) -> None:
    """A row permutation needs a chip family that routes inputs to any row (``row_permutation``
    in its target) and whole weights in every tile (a weight's cells in one tile, so rows of
    different tiles can move apart)."""
    from .errors import ConfigError

    target, cells = export.target, export.mapping.cells_per_weight
    if not getattr(target, "row_permutation", False):
        raise ConfigError(f"--permute-rows: target {target.name!r} does not set row_permutation: true (its chips route each "
                          "input to one fixed row); program without --permute-rows")  # fmt: skip
    if target.tile_cols % cells:
        raise ConfigError(f"{where}: target {target.name!r}: --permute-rows needs tile_cols ({target.tile_cols}) a multiple of "
                          f"the {cells} cells of a weight")  # fmt: skip


def choose_row_permutation(mapping: Mapping, placement, levels: Sequence[np.ndarray], tile, row, col, state) -> tuple[np.ndarray, int, int]:
    """Per tile the model occupies, the physical row of each logical row that minimises the
    tile's summed residual error once every weight is programmed around the stuck cells listed
    (``tile, row, col, state``: physical cells, as a fault map lists them). Returns (permutation
    of shape (tiles, tile_rows), the summed residual unpermuted, and permuted; in codes). A tile
    without a stuck cell, and any tile where moving gains nothing, keeps its rows in place: among
    assignments of least error the one moving fewest rows wins."""
    placement = placement.unpermuted
    tr, tc, cells = placement.tile_rows, placement.tile_cols, mapping.cells_per_weight
    physical = np.zeros((placement.tiles, tr, tc), np.uint8)
    ours = np.asarray(tile) < placement.tiles
    physical[np.asarray(tile)[ours], np.asarray(row)[ours], np.asarray(col)[ours]] = np.asarray(state)[ours]
    perm = np.tile(np.arange(tr, dtype=np.int64), (placement.tiles, 1))
    before = after = 0
    for lp, lv in zip(placement.layers, levels):
        codes = np.rint(mapping.decode(lv)).astype(np.int64).reshape(lp.outputs, lp.rows)
        for band in range(lp.grid[0]):
            for block in range(lp.grid[1]):
                t = lp.first_tile + band * lp.grid[1] + block
                rows = slice(band * tr, min((band + 1) * tr, lp.rows))
                outs = slice(block * tc // cells, min((block + 1) * tc // cells, lp.outputs))
                tile_codes = codes[outs, rows].T  # (logical rows, weights)
                cost = _tile_cost(mapping, tile_codes, physical[t, :, : tile_codes.shape[1] * cells])
                if cost is None:
                    continue
                perm[t], identity, best = _assign(cost)
                before, after = before + identity, after + best
    return perm, before, after


def _tile_cost(mapping: Mapping, codes: np.ndarray, states: np.ndarray) -> np.ndarray | None:
    """cost[i, j]: the summed residual of logical row i's weights (``codes``, (rows, weights))
    programmed onto physical row j (``states``, (tile rows, weights × cells)); None when the
    tile has no stuck cell under the model's weights (nothing to gain)."""
    cells = mapping.cells_per_weight
    slots = states.reshape(states.shape[0], -1, cells)  # (physical rows, weights, cells)
    faulty_row, faulty_weight = np.nonzero(slots.any(-1))  # row-major: physical rows ascending
    if len(faulty_row) == 0:
        return None
    # A pattern as one base-3 number (a weight's cells' states as digits): unique over integers
    # is several times quicker than over rows, and a bit-sliced tile has hundreds of faulty slots.
    digits = 3 ** np.arange(cells, dtype=np.int64)
    ids, which = np.unique(slots[faulty_row, faulty_weight].astype(np.int64) @ digits, return_inverse=True)
    table = residual_table(mapping, (ids[:, None] // digits) % 3)  # (patterns, codes)
    # contribution[i, f]: logical row i's weight at faulty slot f's column, on slot f's cells
    contribution = table[which.reshape(-1)[None, :], codes[:, faulty_weight] + mapping.max_code]
    starts = np.flatnonzero(np.r_[True, faulty_row[1:] != faulty_row[:-1]])
    cost = np.zeros((codes.shape[0], states.shape[0]), np.int64)
    cost[:, faulty_row[starts]] = np.add.reduceat(contribution, starts, axis=1)
    return cost


def _assign(cost: np.ndarray) -> tuple[np.ndarray, int, int]:
    """The physical row of every logical row (a full permutation of the tile's rows; logical
    rows past the layer's take the physical rows left, in order), and the cost unpermuted and
    chosen. Least cost first, then fewest rows moved: an integer key keeps both exact."""
    from scipy.optimize import linear_sum_assignment

    logical, physical = cost.shape
    moved = np.ones(cost.shape, np.int64)
    moved[np.arange(logical), np.arange(logical)] = 0
    key = cost * (logical + 1) + moved
    _, chosen = linear_sum_assignment(key)
    rest = np.setdiff1d(np.arange(physical), chosen)
    identity = int(cost[np.arange(logical), np.arange(logical)].sum())
    return np.concatenate([chosen, rest]), identity, int(cost[np.arange(logical), chosen].sum())


def permutation_record(placement) -> dict:
    """The ``row_permutation`` of a programmed file's ``programmed_for``: per tile whose rows
    moved, its number (a string, JSON's keys) and the physical row of each logical row."""
    if placement.row_permutation is None:
        return {}
    identity = tuple(range(placement.tile_rows))
    return {str(t): list(p) for t, p in enumerate(placement.row_permutation) if p != identity}


def permutation_from_record(record, placement, where) -> np.ndarray:
    """The (tiles, tile_rows) permutation a ``row_permutation`` record gives; VerifyError (one
    line) for a tile past the model's or rows that are not a permutation."""
    from .errors import VerifyError

    perm = np.tile(np.arange(placement.tile_rows, dtype=np.int64), (placement.tiles, 1))
    if not isinstance(record, dict):
        raise VerifyError(f"{where}: programmed_for.row_permutation: expected an object of tile -> rows")
    for key, rows in record.items():
        if not (isinstance(key, str) and key.isdigit() and int(key) < placement.tiles) or not isinstance(rows, list) or \
                sorted(r if isinstance(r, int) and not isinstance(r, bool) else -1 for r in rows) != list(range(placement.tile_rows)):  # fmt: skip
            raise VerifyError(f"{where}: programmed_for.row_permutation[{key[:20]!r}]: expected a tile 0..{placement.tiles - 1} "
                              f"and a permutation of rows 0..{placement.tile_rows - 1}")  # fmt: skip
        perm[int(key)] = rows
    return perm


# --- one export, programmed for one chip ----------------------------------------------------------

#: Metadata key (``ftdeploy.`` prefixed) of a file programmed for one chip: which chip, which map.
PROGRAMMED_KEY = "programmed_for"


def programmed_for(export) -> dict | None:
    """The ``ftdeploy.programmed_for`` record of an export, or None for a plain export."""
    return export.meta.get(PROGRAMMED_KEY)


def program_export(onnx_path, fault_map_path, out, sign_with=None, permute_rows: bool = False) -> dict:
    """Write ``out``: the export at ``onnx_path`` with its cells programmed around the stuck cells
    of the chip that ``fault_map_path`` describes (:func:`program_chip`). Everything else is the
    export's; the metadata gains ``ftdeploy.programmed_for`` (the chip, its map's SHA-256, what
    changed) and the content hash is recomputed, so the file loads and verifies like any export.
    Returns that record. Refuses a file already programmed for a chip: its levels are no longer
    the planned ones. The export's own signature does not cover the new cells, so it is dropped;
    ``sign_with`` (a :class:`ftdeploy.signing.SigningKey`) signs the chip's file anew.

    With ``permute_rows`` (a target with ``row_permutation``), each tile's rows are first routed
    to the physical rows where the stuck cells cost least (:func:`choose_row_permutation`); the
    file's weights stay in logical order, its cells hold what each physical row is programmed
    with, and the record's ``row_permutation`` tells the programmer where each row goes."""
    import onnx

    from .errors import ExportError, VerifyError
    from .exported import load_export
    from .faultmap import check_fits, read_fault_map
    from .placement import placement_of

    export = load_export(onnx_path)
    done = programmed_for(export)
    if done is not None:
        raise VerifyError(f"{onnx_path}: already programmed for chip {done['chip']!r}; program the export itself for each chip")
    if permute_rows:  # before the map is read: a target that cannot route rows is refused as such
        check_row_permutation(export, onnx_path)
    fmap = read_fault_map(fault_map_path)
    placement = placement_of(export)
    check_fits(fmap, placement)
    try:
        if permute_rows:
            perm, before, after = choose_row_permutation(export.mapping, placement, export.levels, fmap.tile, fmap.row, fmap.col, fmap.state)
            placement = placement.with_row_permutation(perm)
        states = placement.layer_states(fmap.tile, fmap.row, fmap.col, fmap.state)
        programmed = program_chip(export.mapping, export.levels, states)
    except ValueError as exc:
        raise ExportError(f"{onnx_path}: {exc}") from None
    record = _record(export, fmap, states, programmed)
    if permute_rows:
        moved = permutation_record(placement)
        record.update(row_permutation=moved, rows_moved=sum(sum(p != r for r, p in enumerate(rows)) for rows in moved.values()),
                      residual_unpermuted=before, residual_permuted=after)  # fmt: skip
    proto = onnx.ModelProto()
    proto.CopyFrom(export.proto)
    _replace_cells(proto, export.layers, programmed)
    _add_metadata(proto, PROGRAMMED_KEY, record)
    if sign_with is not None:
        from .signing import sign_proto

        sign_proto(proto, sign_with)
    from .files import write_atomic

    write_atomic(out, proto.SerializeToString(), ExportError)
    return record


def _record(export, fmap, states, programmed) -> dict:
    """What ``ftdeploy.programmed_for`` says: the chip and its map, and what programming did."""
    mapping, top = export.mapping, export.mapping.max_level
    weights = changed = cells = exact_before = exact_after = 0
    for planned, st, new in zip(export.levels, states, programmed):
        faulty = (st != 0).any(0)
        codes = mapping.decode(planned)[faulty]
        weights += int(faulty.sum())
        cells += int(np.count_nonzero(new != planned))
        changed += int(((new != planned).any(0)).sum())
        exact_before += int((mapping.decode(read_levels(planned, st, top))[faulty] == codes).sum())
        exact_after += int((mapping.decode(read_levels(new, st, top))[faulty] == codes).sum())
    return {"chip": fmap.chip, "fault_map": Path(fmap.source).name if fmap.source else "",
            "fault_map_sha256": fmap.sha256, "export_content_sha256": export.meta["content_sha256"],
            "weights_with_stuck_cells": weights, "weights_reprogrammed": changed, "cells_reprogrammed": cells,
            "exact_before": exact_before, "exact_after": exact_after}  # fmt: skip


def _replace_cells(proto, layers: list[dict], programmed: Sequence[np.ndarray]) -> None:
    """Put each layer's programmed levels into its ``<layer>.cells.<c>`` initializers."""
    from onnx import numpy_helper

    inits = {init.name: init for init in proto.graph.initializer}
    for layer, levels in zip(layers, programmed):
        for c, name in enumerate(layer["cells"]):
            inits[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(levels[c], np.uint8), name))


def _add_metadata(proto, key: str, value) -> None:
    """Add one JSON ``ftdeploy.<key>`` property, keep the ftdeploy properties sorted as export
    writes them, and recompute the content hash."""
    import json

    import onnx

    from .onnx_format import HASH_KEY, PREFIX, SIGNATURE_KEY, SIGNER_KEY, content_hash, read_metadata

    # A signature over the old content would only fail to verify: drop it (the caller may re-sign).
    props = {k: v for k, v in read_metadata(proto).items() if k not in (HASH_KEY, SIGNATURE_KEY, SIGNER_KEY)}
    props[PREFIX + key] = json.dumps(value, ensure_ascii=False)
    other = {k: v for k, v in props.items() if not k.startswith(PREFIX)}
    ours = dict(sorted((k, v) for k, v in props.items() if k.startswith(PREFIX)))
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, other | ours)
    onnx.helper.set_model_props(proto, {**read_metadata(proto), HASH_KEY: content_hash(proto)})


# --- a lot of measured chips, each programmed around its own map ---------------------------------


class ProgrammedChip:
    """A measured chip (:class:`ftdeploy.measured.MeasuredChip`) programmed around its own stuck
    cells: it reads back the levels :func:`program_chip` chooses for it instead of the planned
    ones, with its faults (and any kinds simulated on top) applied as before."""

    def __init__(self, chip, mapping: Mapping, permute_rows: bool = False):
        self.chip = chip
        self.mapping = mapping
        self.permute_rows = permute_rows

    @property
    def id(self):
        return self.chip.id

    def routed(self, programmed: Sequence[np.ndarray]):
        """The measured chip with its rows where ``programmed`` (the file's levels) goes on it: routed
        as `ftdeploy program --permute-rows` routes them, from the map alone, where rows are
        permuted; else the chip itself."""
        chip = self.chip
        if not self.permute_rows:
            return chip
        from dataclasses import replace

        fmap = chip.fmap
        perm, _, _ = choose_row_permutation(self.mapping, chip.placement, programmed, fmap.tile, fmap.row, fmap.col, fmap.state)
        return replace(chip, placement=chip.placement.with_row_permutation(perm))

    def reading(self, programmed: Sequence[np.ndarray], cells):
        chip = self.routed(programmed)
        return chip.reading(program_chip(self.mapping, programmed, chip.states()), cells)


class ProgrammedChips:
    """Every chip of a :class:`ftdeploy.measured.MeasuredChips`, each programmed around its own
    map: a chip source for :func:`ftdeploy.population.chip_accuracies`."""

    def __init__(self, chips, mapping: Mapping, permute_rows: bool = False):
        self.chips = chips
        self.mapping = mapping
        self.permute_rows = permute_rows

    def __iter__(self):
        return (ProgrammedChip(chip, self.mapping, self.permute_rows) for chip in self.chips)

    def __len__(self) -> int:
        return len(self.chips)

    @property
    def is_identity(self) -> bool:
        return self.chips.is_identity  # no stuck cell anywhere: programming changes nothing
