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

What it does not cover yet: faults that appear after programming (field faults: programming
uses the map as tested), moving rows or outputs to healthier cells (a row permutation), and
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


# --- one export, programmed for one chip ----------------------------------------------------------

#: Metadata key (``ftdeploy.`` prefixed) of a file programmed for one chip: which chip, which map.
PROGRAMMED_KEY = "programmed_for"


def programmed_for(export) -> dict | None:
    """The ``ftdeploy.programmed_for`` record of an export, or None for a plain export."""
    return export.meta.get(PROGRAMMED_KEY)


def program_export(onnx_path, fault_map_path, out, sign_with=None) -> dict:
    """Write ``out``: the export at ``onnx_path`` with its cells programmed around the stuck cells
    of the chip that ``fault_map_path`` describes (:func:`program_chip`). Everything else is the
    export's; the metadata gains ``ftdeploy.programmed_for`` (the chip, its map's SHA-256, what
    changed) and the content hash is recomputed, so the file loads and verifies like any export.
    Returns that record. Refuses a file already programmed for a chip: its levels are no longer
    the planned ones. The export's own signature does not cover the new cells, so it is dropped;
    ``sign_with`` (a :class:`ftdeploy.signing.SigningKey`) signs the chip's file anew."""
    import onnx

    from .errors import ExportError, VerifyError
    from .exported import load_export
    from .faultmap import check_fits, read_fault_map
    from .placement import placement_of

    export = load_export(onnx_path)
    done = programmed_for(export)
    if done is not None:
        raise VerifyError(f"{onnx_path}: already programmed for chip {done['chip']!r}; program the export itself for each chip")
    fmap = read_fault_map(fault_map_path)
    placement = placement_of(export)
    check_fits(fmap, placement)
    states = placement.layer_states(fmap.tile, fmap.row, fmap.col, fmap.state)
    try:
        programmed = program_chip(export.mapping, export.levels, states)
    except ValueError as exc:
        raise ExportError(f"{onnx_path}: {exc}") from None
    record = _record(export, fmap, states, programmed)
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

    def __init__(self, chip, mapping: Mapping):
        self.chip = chip
        self.mapping = mapping

    @property
    def id(self):
        return self.chip.id

    def reading(self, programmed: Sequence[np.ndarray], cells):
        return self.chip.reading(program_chip(self.mapping, programmed, self.chip.states()), cells)


class ProgrammedChips:
    """Every chip of a :class:`ftdeploy.measured.MeasuredChips`, each programmed around its own
    map: a chip source for :func:`ftdeploy.population.chip_accuracies`."""

    def __init__(self, chips, mapping: Mapping):
        self.chips = chips
        self.mapping = mapping

    def __iter__(self):
        return (ProgrammedChip(chip, self.mapping) for chip in self.chips)

    def __len__(self) -> int:
        return len(self.chips)

    @property
    def is_identity(self) -> bool:
        return self.chips.is_identity  # no stuck cell anywhere: programming changes nothing
