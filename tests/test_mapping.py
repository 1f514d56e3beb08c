"""Mappings: weight codes <-> cell levels, target checks, scales and tile counts."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from conftest import SHIPPED_TARGET_NAMES, make_target
from ftdeploy.mapping import MAPPINGS, crossbar_tiles, make_mapping, quantize_codes, scale_of
from ftdeploy.profiles import Target, load_target

GRID = [(m, bpc, wb) for m in sorted(MAPPINGS) for bpc in range(1, 9) for wb in range(2, 17)]


def _unchecked_target(mapping: str, bpc: int, wb: int) -> Target:
    """A target that skipped validation, to see what a rejected one would do."""
    return Target.model_construct(name="raw", description="", g_off_uS=1.0, g_on_uS=2.0, bits_per_cell=bpc,
                                  weight_bits=wb, mapping=mapping, scale="layer", tile_rows=8, tile_cols=8)  # fmt: skip


def _all_codes(target: Target) -> np.ndarray:
    return np.arange(-target.max_code, target.max_code + 1, dtype=np.int64)


def _torch_sample(codes: np.ndarray, mapping) -> np.ndarray:
    """Indices of the codes to push through torch as well: all of them up to 12-bit weights;
    above that (torch integer ops on this CPU are slow) every code near 0, +-Q and each
    +-base**j digit boundary, plus a seeded random 4,096."""
    if codes.size <= 4095:
        return np.arange(codes.size)
    q = int(codes.max())
    base = getattr(mapping, "base", 2)
    special = {0, q, q - 1, 1}
    j = 1
    while base**j <= q:
        special |= {base**j - 1, base**j, base**j + 1}
        j += 1
    special = np.array(sorted(v for v in special if v <= q))
    picks = np.concatenate([special, -special, np.random.default_rng(0).integers(-q, q + 1, 4096)])
    return picks + q  # codes[i] == i - q


def _assert_round_trip(target: Target) -> None:
    """Every code in [-Q, Q] encodes to levels in [0, L] and decodes back exactly, and numpy
    and torch agree bit for bit."""
    mapping = make_mapping(target)
    codes = _all_codes(target)
    levels_np = mapping.encode(codes)
    idx = _torch_sample(codes, mapping)
    levels_t = mapping.encode(torch.from_numpy(codes[idx]).to(torch.int32))
    assert levels_np.shape == (mapping.cells_per_weight, codes.size)
    assert np.issubdtype(levels_np.dtype, np.integer)
    assert not levels_t.dtype.is_floating_point
    assert levels_np.min() >= 0 and levels_np.max() <= mapping.max_level, target
    np.testing.assert_array_equal(levels_t.numpy(), levels_np[:, idx])
    decoded_np = mapping.decode(levels_np)
    decoded_t = mapping.decode(levels_t)
    assert decoded_np.dtype == np.float32 and decoded_t.dtype == torch.float32
    np.testing.assert_array_equal(decoded_np, codes.astype(np.float32))
    np.testing.assert_array_equal(decoded_t.numpy(), codes[idx].astype(np.float32))
    assert len(mapping.cell_names) == len(mapping.coefficients) == mapping.cells_per_weight


@pytest.mark.parametrize("name", SHIPPED_TARGET_NAMES)
def test_shipped_targets_round_trip_every_code(name):
    target, _ = load_target(name)
    assert target.mapping in MAPPINGS
    _assert_round_trip(target)


@pytest.mark.parametrize("mapping", sorted(MAPPINGS))
def test_every_mapping_round_trips_on_every_valid_grid_point(mapping):
    """All bits_per_cell 1..8 x weight_bits 2..16 the target model accepts."""
    accepted = 0
    for m, bpc, wb in GRID:
        if m != mapping:
            continue
        try:
            target = make_target(mapping, bpc, wb)
        except ValidationError:
            continue
        _assert_round_trip(target)
        accepted += 1
    assert accepted > 0


@pytest.mark.parametrize("mapping,bpc,wb", GRID)
def test_check_target_rejects_exactly_the_targets_whose_cells_overflow(mapping, bpc, wb):
    """check_target is neither too lax nor too strict: a target is rejected iff encoding
    some code in [-Q, Q] would need a level outside 0..L (or could not read back)."""
    raw = make_mapping(_unchecked_target(mapping, bpc, wb))
    codes = _all_codes(raw.target)
    levels = raw.encode(codes)
    in_range = levels.min() >= 0 and levels.max() <= raw.max_level  # an inverted pair underflows instead
    fits = in_range and np.array_equal(raw.decode(levels), codes.astype(np.float32))
    try:
        make_target(mapping, bpc, wb)
        accepted = True
    except ValidationError as err:
        accepted = False
        assert mapping in str(err)
    assert accepted == fits, (mapping, bpc, wb)


def test_differential_needs_weight_bits_minus_one_bits_per_cell():
    make_target("differential", bits_per_cell=7, weight_bits=8)
    with pytest.raises(ValidationError, match=r"differential needs bits_per_cell >= weight_bits - 1 \(7\), found 6"):
        make_target("differential", bits_per_cell=6, weight_bits=8)
    with pytest.raises(ValidationError, match="offset needs bits_per_cell >= weight_bits"):
        make_target("offset", bits_per_cell=7, weight_bits=8)
    with pytest.raises(ValidationError, match="mapping must be one of"):
        make_target("ternary", bits_per_cell=7, weight_bits=8)


@st.composite
def valid_targets(draw) -> Target:
    mapping = draw(st.sampled_from(sorted(MAPPINGS)))
    max_weight_bits = {"differential": 9, "differential-inverted": 9, "offset": 8, "bitsliced": 16}
    wb = draw(st.integers(2, max_weight_bits[mapping]))
    low = {"differential": max(1, wb - 1), "differential-inverted": max(1, wb - 1), "offset": wb, "bitsliced": 1}[mapping]
    bpc = draw(st.integers(low, 8))
    return make_target(mapping, bpc, wb, scale=draw(st.sampled_from(["layer", "channel"])),
                       tile_rows=draw(st.integers(1, 300)), tile_cols=draw(st.integers(1, 300)))  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(target=valid_targets())
def test_generated_targets_round_trip(target):
    _assert_round_trip(target)


@settings(max_examples=40, deadline=None)
@given(target=valid_targets(), seed=st.integers(0, 2**31 - 1), shape=st.sampled_from([(5,), (3, 4), (2, 3, 2, 2)]))
def test_numpy_and_torch_encode_identically_on_random_code_arrays(target, seed, shape):
    mapping = make_mapping(target)
    codes = np.random.default_rng(seed).integers(-target.max_code, target.max_code + 1, size=shape)
    levels_np = mapping.encode(codes)
    levels_t = mapping.encode(torch.from_numpy(codes).to(torch.int32))
    assert levels_np.shape == (mapping.cells_per_weight, *shape)
    np.testing.assert_array_equal(levels_t.numpy(), levels_np)
    np.testing.assert_array_equal(mapping.decode(levels_np), codes.astype(np.float32))


def test_known_encodings():
    """Hand-worked levels for the three shipped targets."""
    diff = make_mapping(load_target("paper-diff8")[0])
    np.testing.assert_array_equal(diff.encode(np.array([5, -3, 0, 127])), [[5, 0, 0, 127], [0, 3, 0, 0]])
    off = make_mapping(load_target("offset-8")[0])
    assert off.offset == -127
    np.testing.assert_array_equal(off.encode(np.array([-127, 0, 127])), [[0, 127, 254]])
    bs = make_mapping(load_target("mlc2-bitsliced")[0])
    assert bs.slices == 4 and bs.coefficients == (1, 4, 16, 64, -1, -4, -16, -64)
    # 100 = 1*64 + 2*16 + 1*4 + 0 -> digits (0, 1, 2, 1) on the positive side
    np.testing.assert_array_equal(bs.encode(np.array([100, -100]))[:, 0], [0, 1, 2, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(bs.encode(np.array([100, -100]))[:, 1], [0, 0, 0, 0, 0, 1, 2, 1])
    assert "pos×+1, neg×-1" in diff.describe() and off.describe().endswith("-127")


# --- scales and quantisation ---------------------------------------------------------------


def test_scale_of_per_layer_and_per_channel():
    w = torch.tensor([[0.5, -2.0, 1.0], [0.25, 0.1, -0.3], [0.0, 0.0, 0.0]])
    layer = make_target(scale="layer")
    channel = make_target(scale="channel")
    s_layer = scale_of(w, layer)
    assert s_layer.shape == () and s_layer.item() == pytest.approx(2.0 / 127)
    s_chan = scale_of(w, channel)
    assert s_chan.shape == (3, 1)
    # an all-zero channel gets a finite, positive scale (its codes are all 0)
    np.testing.assert_allclose(s_chan.flatten().numpy(), np.array([2.0, 0.3, 1.0], np.float32) / 127, rtol=1e-6)
    conv = torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    conv[2] *= 0.1  # a quiet channel: per-layer codes stay small there, per-channel ones do not
    s_conv = scale_of(conv, channel)
    assert s_conv.shape == (4, 1, 1, 1)
    torch.testing.assert_close(s_conv.flatten(), conv.abs().flatten(1).amax(1) / 127)
    # per-channel codes: every channel reaches +-Q on its own peak
    codes = quantize_codes(conv, s_conv, channel)
    assert codes.dtype == torch.int32
    assert (codes.abs().flatten(1).amax(1) == 127).all()
    layer_codes = quantize_codes(conv, scale_of(conv, layer), layer)
    assert layer_codes.abs().max() == 127
    assert layer_codes[2].abs().max() < 20


def test_scale_of_zero_layer_is_finite_and_codes_are_zero():
    for scale in ("layer", "channel"):
        t = make_target(scale=scale)
        w = torch.zeros(3, 4)
        s = scale_of(w, t)
        assert torch.isfinite(s).all() and torch.equal(s.flatten(), torch.full((s.numel(),), 1.0 / 127))
        assert (quantize_codes(w, s, t) == 0).all()


def test_quantize_codes_rounds_half_to_even_and_clips():
    t = make_target()
    s = torch.tensor(1.0)
    w = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 200.0, -200.0, 126.6])
    assert quantize_codes(w, s, t).tolist() == [0, 2, 2, 0, -2, 127, -127, 127]


def test_scale_of_is_differentiable_to_the_peak_only():
    w = torch.tensor([[0.5, -2.0], [1.0, 0.25]], requires_grad=True)
    scale_of(w, make_target()).backward()
    expected = torch.zeros(2, 2)
    expected[0, 1] = -1.0 / 127  # d(|w|/Q)/dw at the negative peak
    torch.testing.assert_close(w.grad, expected)


# --- crossbar tiles -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,shape,expected",
    [
        ("paper-diff8", (16, 3, 3, 3), {"rows": 27, "cols": 32, "tiles": 1, "cells": 864}),
        ("paper-diff8", (64, 64, 3, 3), {"rows": 576, "cols": 128, "tiles": 5, "cells": 73728}),
        ("paper-diff8", (65, 128), {"rows": 128, "cols": 130, "tiles": 2, "cells": 16640}),
        ("offset-8", (10, 64), {"rows": 64, "cols": 10, "tiles": 1, "cells": 640}),
        ("offset-8", (128, 129), {"rows": 129, "cols": 128, "tiles": 2, "cells": 16512}),
        ("mlc2-bitsliced", (64, 64, 3, 3), {"rows": 576, "cols": 512, "tiles": 3 * 2, "cells": 294912}),
        ("mlc2-bitsliced", (10, 64), {"rows": 64, "cols": 80, "tiles": 1, "cells": 5120}),
    ],
)
def test_crossbar_tiles_counts(name, shape, expected):
    target, _ = load_target(name)
    assert crossbar_tiles(shape, target, make_mapping(target)) == expected


@settings(max_examples=60, deadline=None)
@given(target=valid_targets(), out=st.integers(1, 600), fan_in=st.integers(1, 2000))
def test_crossbar_tiles_cover_the_layer_minimally(target, out, fan_in):
    mapping = make_mapping(target)
    t = crossbar_tiles((out, fan_in), target, mapping)
    assert t["rows"] == fan_in and t["cols"] == out * mapping.cells_per_weight
    assert t["cells"] == out * fan_in * mapping.cells_per_weight
    row_tiles, col_tiles = math.ceil(fan_in / target.tile_rows), math.ceil(t["cols"] / target.tile_cols)
    assert t["tiles"] == row_tiles * col_tiles
    # minimal: one row (column) of tiles fewer would not hold the layer
    assert (row_tiles - 1) * target.tile_rows < fan_in <= row_tiles * target.tile_rows
    assert (col_tiles - 1) * target.tile_cols < t["cols"] <= col_tiles * target.tile_cols


def _imported_modules(module: str) -> set[str]:
    """Every ftdeploy module ``module``'s source imports, at the top, inside a function or under
    TYPE_CHECKING alike."""
    import ftdeploy

    tree = ast.parse((Path(ftdeploy.__file__).parent / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            name = (node.module or "").removeprefix("ftdeploy.")
            found |= {name} if node.module else {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name.removeprefix("ftdeploy.") for alias in node.names}
    return found


def test_the_mapping_module_does_not_import_the_profile_schema():
    """profiles checks a target's mapping against the registry here; the registry reads targets
    through the TargetSpec protocol, so the two modules do not import each other, even lazily."""
    assert "profiles" not in _imported_modules("mapping")
    assert "mapping" in _imported_modules("profiles")
