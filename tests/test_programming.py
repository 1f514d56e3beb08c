"""Fault-aware programming, checked exhaustively on small cell states: for every code and every
stuck pattern of a weight's cells, the programmed weight reads the best code any setting of its
healthy cells reaches, never worse than the planned levels, and weights without a stuck cell are
left as planned."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from conftest import SHIPPED_TARGET_NAMES, make_target
from ftdeploy import programming
from ftdeploy.mapping import make_mapping
from ftdeploy.nonideality import STUCK_OFF, STUCK_ON
from ftdeploy.profiles import load_target
from ftdeploy.programming import program_chip, program_levels, read_levels

#: Small targets of every mapping, including a differential pair with spare levels (L > Q).
SMALL = {
    "differential-2b": dict(mapping="differential", bits_per_cell=2, weight_bits=3),
    "differential-spare": dict(mapping="differential", bits_per_cell=3, weight_bits=3),
    "inverted-2b": dict(mapping="differential-inverted", bits_per_cell=2, weight_bits=3),
    "offset-3b": dict(mapping="offset", bits_per_cell=3, weight_bits=3),
    "bitsliced-1b": dict(mapping="bitsliced", bits_per_cell=1, weight_bits=3),
    "bitsliced-2b": dict(mapping="bitsliced", bits_per_cell=2, weight_bits=4),
}


def _all_codes(mapping) -> np.ndarray:
    return np.arange(-mapping.max_code, mapping.max_code + 1, dtype=np.int64)


def _reachable(mapping, pattern: tuple[int, ...]) -> np.ndarray:
    """Every code a weight with this stuck pattern can read, over every setting of all its cells
    (an independent brute force: the stuck cells' settings are overridden by their faults)."""
    settings = np.array(list(itertools.product(range(mapping.max_level + 1), repeat=mapping.cells_per_weight))).T
    states = np.repeat(np.array(pattern, np.uint8)[:, None], settings.shape[1], 1)
    return np.unique(mapping.decode(read_levels(settings, states, mapping.max_level)))


def _tie_break_key(mapping, settings, planned, states, codes) -> np.ndarray:
    """(error, healthy cells changed, healthy cells' total level) as one integer per setting and
    weight, cells first: settings (cells, m, 1) against planned and states (cells, 1, n), or all
    three (cells, n)."""
    healthy = states == 0
    read = read_levels(np.broadcast_to(settings, np.broadcast_shapes(settings.shape, states.shape)), states, mapping.max_level)
    error = np.abs(mapping.decode(read).astype(np.int64) - codes)
    changed = ((settings != planned) & healthy).sum(0)
    total = (settings * healthy).sum(0)
    span = mapping.cells_per_weight * mapping.max_level + 1
    return (error * (mapping.cells_per_weight + 1) + changed) * span + total


def _check_tie_breaks(mapping, codes, planned, states, out) -> None:
    """Among the settings of least error, the programmed one changes fewest healthy cells, then
    holds the least total level: checked against every setting of every cell."""
    settings = np.array(list(itertools.product(range(mapping.max_level + 1), repeat=mapping.cells_per_weight)))
    best = _tie_break_key(mapping, settings.T[:, :, None], planned[:, None, :], states[:, None, :], codes).min(0)
    assert (_tie_break_key(mapping, out.astype(np.int64), planned, states, codes) == best).all()


def _check_every_code(mapping, patterns, tie_breaks: bool = True) -> None:
    """Program every code under every pattern, as one layer, and check the result."""
    codes = _all_codes(mapping)
    cells = mapping.cells_per_weight
    for pattern in patterns:
        states = np.repeat(np.array(pattern, np.uint8)[:, None], len(codes), 1)
        planned = np.asarray(mapping.encode(codes)).astype(np.uint8)
        out = program_levels(mapping, codes, planned, states)
        assert out.shape == planned.shape and out.dtype == planned.dtype
        assert out.min() >= 0 and out.max() <= mapping.max_level
        got = np.abs(mapping.decode(read_levels(out, states, mapping.max_level)) - codes)
        before = np.abs(mapping.decode(read_levels(planned, states, mapping.max_level)) - codes)
        reachable = _reachable(mapping, pattern)
        best = np.abs(reachable[None, :] - codes[:, None]).min(1)
        assert (got == best).all(), f"pattern {pattern}: not the best reachable code"
        assert (got <= before).all()
        stuck = np.array(pattern) != 0
        if not stuck.any():
            assert (out == planned).all()
        # stuck cells keep the planned level: whatever is programmed there, they read their fault
        assert (out[stuck] == planned[stuck]).all()
        # where the planned levels are already best, nothing changes
        assert (out[:, before == best] == planned[:, before == best]).all()
        assert cells == len(pattern)
        if tie_breaks:
            _check_tie_breaks(mapping, codes, planned.astype(np.int64), states, out)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_every_code_under_every_stuck_pattern_reads_the_best_reachable_code(name):
    mapping = make_mapping(make_target(**SMALL[name]))
    patterns = itertools.product((0, STUCK_OFF, STUCK_ON), repeat=mapping.cells_per_weight)
    _check_every_code(mapping, patterns)


@pytest.mark.parametrize("name", SHIPPED_TARGET_NAMES)
def test_shipped_targets_every_code_with_one_or_two_stuck_cells(name):
    mapping = make_mapping(load_target(name)[0])
    cells = mapping.cells_per_weight
    patterns = [tuple(0 for _ in range(cells))]
    for k in (1, 2) if cells <= 2 else (1,):  # bit-sliced: 4^8 settings per pattern in the brute force
        for where in itertools.combinations(range(cells), k):
            for faults in itertools.product((STUCK_OFF, STUCK_ON), repeat=k):
                pattern = [0] * cells
                for c, f in zip(where, faults):
                    pattern[c] = f
                patterns.append(tuple(pattern))
    _check_every_code(mapping, patterns, tie_breaks=cells <= 2)  # bit-sliced: 4^8 settings x 255 codes per pattern


def test_differential_pair_compensates_a_stuck_on_cell_with_its_partner():
    mapping = make_mapping(make_target("differential", bits_per_cell=7, weight_bits=8))
    L = mapping.max_level
    codes = np.array([-40, 40, 0])
    planned = np.asarray(mapping.encode(codes)).astype(np.uint8)
    states = np.array([[0, 0, STUCK_OFF], [STUCK_ON, STUCK_ON, 0]], np.uint8)
    out = program_levels(mapping, codes, planned, states)
    # -40 with neg stuck at L: pos = L - 40 reads exactly; +40: pos at its top gets closest (0)
    assert out[0].tolist() == [L - 40, L, 0]
    assert mapping.decode(read_levels(out, states, L)).tolist() == [-40, 0, 0]
    # a stuck-off cell on the idle side of a zero weight costs nothing: the weight is untouched
    assert out[:, 2].tolist() == planned[:, 2].tolist()


def test_weights_without_stuck_cells_are_untouched_in_a_random_layer():
    mapping = make_mapping(make_target("bitsliced", bits_per_cell=2, weight_bits=8))
    rng = np.random.default_rng(0)
    codes = rng.integers(-mapping.max_code, mapping.max_code + 1, (16, 3, 3, 3))
    planned = np.asarray(mapping.encode(codes)).astype(np.uint8)
    states = rng.choice([0, STUCK_OFF, STUCK_ON], planned.shape, p=[0.97, 0.01, 0.02]).astype(np.uint8)
    (out,) = program_chip(mapping, [planned], [states])
    clean = ~(states != 0).any(0)
    assert (out[:, clean] == planned[:, clean]).all()
    before = np.abs(mapping.decode(read_levels(planned, states, mapping.max_level)) - codes)
    after = np.abs(mapping.decode(read_levels(out, states, mapping.max_level)) - codes)
    assert (after <= before).all() and after.sum() < before.sum()


def test_too_many_combinations_is_a_clear_error(monkeypatch):
    mapping = make_mapping(make_target("bitsliced", bits_per_cell=2, weight_bits=4))
    monkeypatch.setattr(programming, "MAX_COMBINATIONS", 10)
    codes = np.array([3])
    states = np.array([[STUCK_ON], [0], [0], [0]], np.uint8)
    with pytest.raises(ValueError, match="level combinations"):
        program_levels(mapping, codes, np.asarray(mapping.encode(codes)).astype(np.uint8), states)


def test_shapes_must_match():
    mapping = make_mapping(make_target())
    with pytest.raises(ValueError, match="do not match"):
        program_levels(mapping, np.zeros(3, np.int64), np.zeros((2, 4), np.uint8), np.zeros((2, 4), np.uint8))


# --- `ftdeploy program`: one export, programmed for one chip --------------------------------------

PROGRAM_RATE, PROGRAM_SEED, PROGRAM_IMAGES = 0.03, 11, 100
PROFILE = f"""\
name: program
target: paper-diff8
faults:
  - kind: stuck-at
    p_sa: 0.01
signoff:
  rates: [{PROGRAM_RATE}]
  chips: 2
  seed: {PROGRAM_SEED}
  max_images: {PROGRAM_IMAGES}
  chance_margin_pct: 0
  chip_spec:
    min_acc_pct: 0
"""


@pytest.fixture(scope="module")
def line(tmp_path_factory):
    """A quick export, the map of one simulated chip (alone in its folder), and the profile."""
    from _quick_model import quick_checkpoint
    from ftdeploy.data import load_data
    from ftdeploy.export import export_onnx
    from ftdeploy.exported import load_export
    from ftdeploy.measured import simulate_fault_maps
    from ftdeploy.placement import placement_of
    from ftdeploy.profiles import load_profile
    from ftdeploy.training.checkpoint import load_checkpoint

    folder = tmp_path_factory.mktemp("program")
    profile = folder / "program.yaml"
    profile.write_text(PROFILE)
    resolved = load_profile(profile)
    onnx_path = folder / "model.onnx"
    export_onnx(load_checkpoint(quick_checkpoint(load_data(None), resolved.target, folder)), resolved, onnx_path)
    maps = folder / "maps"
    placement = placement_of(load_export(onnx_path))
    (map_path,) = simulate_fault_maps(placement, resolved.profile.signoff_faults(PROGRAM_RATE), PROGRAM_RATE, PROGRAM_SEED, 1, maps)
    return {"folder": folder, "profile": profile, "resolved": resolved, "onnx": onnx_path, "maps": maps, "map": map_path}


@pytest.fixture(scope="module")
def programmed(line) -> Path:
    from ftdeploy.programming import program_export

    out = line["folder"] / "chip-0000.onnx"
    program_export(line["onnx"], line["map"], out)
    return out


def test_program_writes_an_export_for_that_one_chip(line, programmed):
    from ftdeploy.exported import load_export
    from ftdeploy.faultmap import read_fault_map
    from ftdeploy.files import sha256_file
    from ftdeploy.placement import placement_of

    plain, chip = load_export(line["onnx"]), load_export(programmed)  # loads: the content hash was recomputed
    record = chip.meta["programmed_for"]
    fmap = read_fault_map(line["map"])
    assert record["chip"] == fmap.chip and record["fault_map_sha256"] == sha256_file(line["map"])
    assert record["export_content_sha256"] == plain.meta["content_sha256"]
    assert 0 < record["weights_reprogrammed"] <= record["weights_with_stuck_cells"]
    assert record["exact_after"] > record["exact_before"]
    states = placement_of(plain).layer_states(fmap.tile, fmap.row, fmap.col, fmap.state)
    assert all((a == b).all() for a, b in zip(chip.levels, program_chip(plain.mapping, plain.levels, states)))
    for before, after, st in zip(plain.levels, chip.levels, states):
        clean = ~(st != 0).any(0)
        assert (before[:, clean] == after[:, clean]).all()
    # everything but the cells and the record is the export's
    assert {k: v for k, v in chip.meta.items() if k not in ("programmed_for", "content_sha256")} == \
        {k: v for k, v in plain.meta.items() if k != "content_sha256"}


def test_a_programmed_chip_measures_at_least_as_well_as_the_unprogrammed_one(line, programmed):
    from ftdeploy.lot import verify_lot
    from ftdeploy.verify import verify_onnx

    before = verify_lot(line["onnx"], line["resolved"], line["maps"])["lot"]["chips"][0]["accuracy"]
    after = verify_lot(programmed, line["resolved"], line["maps"])["lot"]["chips"][0]["accuracy"]
    assert after >= before
    assert verify_onnx(programmed, line["resolved"], chips=2)["verdict"] is not None  # verifies like any export


def test_program_command(line, monkeypatch, capsys, tmp_path):
    from conftest import run_main
    from ftdeploy.exported import load_export

    out = tmp_path / "chip.onnx"
    code, stdout, err = run_main(monkeypatch, capsys, "program", line["onnx"], "--profile", line["profile"],
                                 "--fault-map", line["map"], "-o", out)  # fmt: skip
    assert code == 0, err
    assert f"wrote {out}: programmed for chip" in stdout and "exact code" in stdout
    assert load_export(out).meta["programmed_for"]["fault_map"] == line["map"].name
    code, _, err = run_main(monkeypatch, capsys, "program", out, "--profile", line["profile"], "--fault-map", line["map"],
                            "-o", tmp_path / "again.onnx")  # fmt: skip
    assert code == 2 and "already programmed for chip" in err


# --- verify --fault-maps --program -----------------------------------------------------------------


def test_verify_program_measures_each_chip_before_and_after(line, programmed):
    from ftdeploy.lot import verify_lot
    from ftdeploy.lot_report import lot_lines, render_lot_junit, render_lot_markdown

    plain = verify_lot(line["onnx"], line["resolved"], line["maps"])
    both = verify_lot(line["onnx"], line["resolved"], line["maps"], program=True)
    alone = verify_lot(programmed, line["resolved"], line["maps"])
    (chip,) = both["lot"]["chips"]
    assert chip["accuracy"] == alone["lot"]["chips"][0]["accuracy"]  # as `ftdeploy program` then verify
    assert chip["accuracy_unprogrammed"] == plain["lot"]["chips"][0]["accuracy"]
    assert chip["accuracy"] >= chip["accuracy_unprogrammed"]
    assert both["lot"]["programmed"] is True
    assert both["lot"]["yield_unprogrammed"] == plain["lot"]["yield"]
    assert "accuracy_unprogrammed" not in plain["lot"]["chips"][0] and "yield_unprogrammed" not in plain["lot"]
    lines = lot_lines(both)
    assert "(unprogrammed " in lines[0] and "unprogrammed yield" in lines[-1]
    assert "unprogrammed (%)" in render_lot_markdown(both) and "yield_unprogrammed_pct" in render_lot_junit(both)
    assert any("programmed around its own fault map" in n for n in both["notes"])


def test_verify_program_command_and_its_refusals(line, programmed, monkeypatch, capsys, tmp_path):
    from conftest import run_main

    code, stdout, err = run_main(monkeypatch, capsys, "verify", line["onnx"], "--profile", line["profile"],
                                 "--fault-maps", line["maps"], "--program", "-o", tmp_path / "lot")  # fmt: skip
    assert code == 0, err
    assert "unprogrammed yield" in stdout and (tmp_path / "lot" / "report.md").is_file()
    code, _, err = run_main(monkeypatch, capsys, "verify", line["onnx"], "--profile", line["profile"], "--program")
    assert code == 2 and "give --fault-maps" in err
    code, _, err = run_main(monkeypatch, capsys, "verify", programmed, "--profile", line["profile"],
                            "--fault-maps", line["maps"], "--program")  # fmt: skip
    assert code == 2 and "already programmed" in err
