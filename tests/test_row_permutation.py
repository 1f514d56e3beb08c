"""Row permutation: where the chip family routes a tile's inputs to any row, `program
--permute-rows` moves each tile's logical rows onto the physical rows where the stuck cells cost
least. Checked: a valid permutation per tile, never more residual error than the rows in place
(recomputed independently by programming both ways), no move without a fault, a case where it
strictly helps, a record that round-trips and routes the chip's map, and refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import make_target, run_main
from ftdeploy.errors import VerifyError
from ftdeploy.mapping import make_mapping
from ftdeploy.nonideality import STUCK_OFF, STUCK_ON
from ftdeploy.placement import Placement
from ftdeploy.programming import (choose_row_permutation, permutation_from_record, permutation_record, program_chip,
                                  read_levels)  # fmt: skip

#: Layers over several tiles down and across at 8 x 8 tiles, and a partial last band.
LAYERS = [("conv", (6, 3, 3, 3)), ("fc", (10, 20))]


def _residual(mapping, levels, states) -> int:
    """Summed |read − code| of every weight programmed around ``states``: the independent check."""
    total = 0
    for lv, st in zip(levels, states):
        codes = np.rint(mapping.decode(lv)).astype(np.int64)
        (out,) = program_chip(mapping, [lv], [st])
        total += int(np.abs(np.rint(mapping.decode(read_levels(out, st, mapping.max_level))) - codes).sum())
    return total


def _random_chip(mapping, placement, rate: float, seed: int):
    rng = np.random.default_rng(seed)
    levels = [np.asarray(mapping.encode(rng.integers(-mapping.max_code, mapping.max_code + 1, shape[1:]))).astype(np.uint8)
              for shape in placement.cell_shapes]  # fmt: skip
    g = placement.geometry()
    cells = rng.random((g.tiles, g.tile_rows, g.tile_cols))
    tile, row, col = np.nonzero(cells < rate)
    state = np.where(rng.random(len(tile)) < 0.5, STUCK_OFF, STUCK_ON).astype(np.uint8)
    return levels, (tile, row, col, state)


@pytest.mark.parametrize("mapping_name, bits, weight_bits", [("differential", 3, 4), ("offset", 4, 4), ("bitsliced", 1, 3)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_valid_permutation_never_worse_than_rows_in_place(mapping_name, bits, weight_bits, seed):
    target = make_target(mapping_name, bits_per_cell=bits, weight_bits=weight_bits, tile_rows=8, tile_cols=12)
    mapping = make_mapping(target)
    placement = Placement.compute(LAYERS, 8, 12, mapping.cells_per_weight)
    levels, cells = _random_chip(mapping, placement, 0.08, seed)
    perm, before, after = choose_row_permutation(mapping, placement, levels, *cells)
    assert perm.shape == (placement.tiles, 8) and (np.sort(perm, 1) == np.arange(8)).all()
    assert after <= before
    routed = placement.with_row_permutation(perm)
    assert _residual(mapping, levels, placement.layer_states(*cells)) == before
    assert _residual(mapping, levels, routed.layer_states(*cells)) == after


def test_no_fault_no_move():
    mapping = make_mapping(make_target(tile_rows=8, tile_cols=8))
    placement = Placement.compute(LAYERS, 8, 8, 2)
    levels, _ = _random_chip(mapping, placement, 0.0, 0)
    empty = np.zeros(0, np.int64)
    perm, before, after = choose_row_permutation(mapping, placement, levels, empty, empty, empty, empty.astype(np.uint8))
    assert (perm == np.arange(8)).all() and before == after == 0
    assert permutation_record(placement.with_row_permutation(perm)) == {}


def test_moving_a_row_off_its_stuck_cells_strictly_helps():
    """Two logical rows of a 2-row tile: row 0 holds positive weights, row 1 zeros. Physical row 0
    has every pos cell stuck off, which a positive weight cannot make up for and a zero weight
    never notices: swapping the rows leaves no error at all."""
    mapping = make_mapping(make_target("differential", bits_per_cell=3, weight_bits=4, tile_rows=2, tile_cols=8))
    placement = Placement.compute([("fc", (4, 2))], 2, 8, 2)
    codes = np.array([[5, 0], [3, 0], [7, 0], [1, 0]])
    levels = [np.asarray(mapping.encode(codes)).astype(np.uint8)]
    tile, row, col = np.zeros(4, np.int64), np.zeros(4, np.int64), np.arange(0, 8, 2)  # pos cells of physical row 0
    perm, before, after = choose_row_permutation(mapping, placement, levels, tile, row, col, np.full(4, STUCK_OFF, np.uint8))
    assert perm.tolist() == [[1, 0]] and before == 16 and after == 0


def test_the_record_round_trips_and_bad_ones_are_refused():
    placement = Placement.compute(LAYERS, 8, 8, 2)
    perm = np.tile(np.arange(8), (placement.tiles, 1))
    perm[1] = [3, 1, 2, 0, 4, 5, 7, 6]
    record = json.loads(json.dumps(permutation_record(placement.with_row_permutation(perm))))
    assert list(record) == ["1"]
    assert (permutation_from_record(record, placement, "f.onnx") == perm).all()
    for bad in ({"1": [0, 0, 1, 2, 3, 4, 5, 6]}, {str(placement.tiles): list(range(8))}, {"x": list(range(8))}, [1, 2]):
        with pytest.raises(VerifyError, match="row_permutation"):
            permutation_from_record(bad, placement, "f.onnx")


# --- ftdeploy program --permute-rows, and a lot --------------------------------------------------

TARGET = """\
name: routed-diff8
g_off_uS: 1.0
g_on_uS: 100.0
bits_per_cell: 7
weight_bits: 8
mapping: differential
scale: layer
batchnorm: periphery
tile_rows: 32
tile_cols: 32
row_permutation: true
"""
PROFILE = """\
name: routed
target: {target}
faults:
  - kind: stuck-at
    p_sa: 0.01
signoff:
  rates: [0.03]
  chips: 2
  seed: 4
  max_images: 60
  chance_margin_pct: 0
  chip_spec:
    min_acc_pct: 0
"""


@pytest.fixture(scope="module")
def line(tmp_path_factory):
    from _quick_model import quick_checkpoint
    from ftdeploy.data import load_data
    from ftdeploy.export import export_onnx
    from ftdeploy.exported import load_export
    from ftdeploy.measured import simulate_fault_maps
    from ftdeploy.placement import placement_of
    from ftdeploy.profiles import load_profile
    from ftdeploy.training.checkpoint import load_checkpoint

    folder = tmp_path_factory.mktemp("rows")
    (folder / "routed-diff8.yaml").write_text(TARGET)
    (folder / "routed.yaml").write_text(PROFILE.format(target="routed-diff8.yaml"))
    (folder / "fixed.yaml").write_text(PROFILE.format(target="paper-diff8").replace("name: routed", "name: fixed"))
    resolved = load_profile(folder / "routed.yaml")
    onnx_path = folder / "model.onnx"
    export_onnx(load_checkpoint(quick_checkpoint(load_data(None), resolved.target, folder)), resolved, onnx_path)
    maps = folder / "maps"
    placement = placement_of(load_export(onnx_path))
    simulate_fault_maps(placement, resolved.profile.signoff_faults(0.03), 0.03, 4, 2, maps)
    fixed_onnx = folder / "fixed.onnx"
    fixed = load_profile(folder / "fixed.yaml")
    export_onnx(load_checkpoint(folder / "model.pt"), fixed, fixed_onnx)
    return {"folder": folder, "resolved": resolved, "onnx": onnx_path, "maps": maps, "placement": placement,
            "fixed": fixed_onnx, "fixed_profile": folder / "fixed.yaml"}  # fmt: skip


def test_program_permute_rows_records_the_routing_and_verifies_as_routed(line, tmp_path):
    from ftdeploy.exported import load_export
    from ftdeploy.faultmap import read_fault_map
    from ftdeploy.lot import verify_lot
    from ftdeploy.placement import placement_of
    from ftdeploy.programming import program_export

    map_path = sorted(line["maps"].iterdir())[0]
    out = tmp_path / "chip.onnx"
    record = program_export(line["onnx"], map_path, out, permute_rows=True)
    assert record["rows_moved"] > 0 and record["residual_permuted"] < record["residual_unpermuted"]
    chip = load_export(out)
    assert chip.meta["programmed_for"]["row_permutation"] == record["row_permutation"]
    routed = placement_of(chip)
    plain = load_export(line["onnx"])
    fmap = read_fault_map(map_path)
    perm, _, _ = choose_row_permutation(plain.mapping, line["placement"], plain.levels, fmap.tile, fmap.row, fmap.col, fmap.state)
    assert routed == line["placement"].with_row_permutation(perm)
    # the file's cells are what each routed row is programmed with
    states = routed.layer_states(fmap.tile, fmap.row, fmap.col, fmap.state)
    assert all((a == b).all() for a, b in zip(chip.levels, program_chip(plain.mapping, plain.levels, states)))
    # verifying the file on its chip measures the routed chip, as the lot's --permute-rows does
    folder = tmp_path / "one"
    folder.mkdir()
    (folder / map_path.name).write_bytes(map_path.read_bytes())
    alone = verify_lot(out, line["resolved"], folder)["lot"]["chips"][0]["accuracy"]
    lot = verify_lot(line["onnx"], line["resolved"], folder, program=True, permute_rows=True)
    assert lot["lot"]["chips"][0]["accuracy"] == alone and lot["lot"]["rows_permuted"] is True
    assert any("rows were permuted" in n for n in lot["notes"])


def test_cli_program_permute_rows_and_its_refusals(line, monkeypatch, capsys, tmp_path):
    map_path = sorted(line["maps"].iterdir())[0]
    profile = line["folder"] / "routed.yaml"
    code, out, err = run_main(monkeypatch, capsys, "program", line["onnx"], "--profile", profile, "--fault-map", map_path,
                              "-o", tmp_path / "chip.onnx", "--permute-rows")  # fmt: skip
    assert code == 0, err
    assert "rows permuted:" in out and "summed residual error" in out
    code, _, err = run_main(monkeypatch, capsys, "program", line["fixed"], "--profile", line["fixed_profile"], "--fault-map",
                            map_path, "-o", tmp_path / "no.onnx", "--permute-rows")  # fmt: skip
    assert code == 2 and err.count("\n") == 1 and "does not set row_permutation: true" in err
    assert not (tmp_path / "no.onnx").exists()
    code, _, err = run_main(monkeypatch, capsys, "verify", line["onnx"], "--profile", profile, "--fault-maps", line["maps"],
                            "--permute-rows")  # fmt: skip
    assert code == 2 and "give --program too" in err
    code, _, err = run_main(monkeypatch, capsys, "verify", line["onnx"], "--profile", profile, "--permute-rows")
    assert code == 2 and "give --fault-maps" in err


def test_field_faults_sit_on_the_same_physical_cells_however_rows_are_routed(line):
    from dataclasses import replace

    from ftdeploy.measured import FieldFaults, MeasuredChips
    from ftdeploy.nonideality import StuckAt

    field = FieldFaults(StuckAt.from_total(0.05), 0)
    placement = line["placement"]
    (chip, *_) = MeasuredChips.from_folder(line["maps"], placement, line["resolved"].profile.fault_model).with_field(field)
    perm = np.stack([np.random.default_rng(t).permutation(32) for t in range(placement.tiles)])
    routed = replace(chip, placement=placement.with_row_permutation(perm))
    g = placement.geometry()
    every_cell = [a.reshape(-1) for a in np.indices((g.tiles, g.tile_rows, g.tile_cols))]

    def footprint(place):  # the physical cells that hold a weight
        return (place.to_logical(*every_cell)[0] >= 0).reshape(g.tiles, g.tile_rows, g.tile_cols)

    def on_grid(cells):
        grid = np.zeros((g.tiles, g.tile_rows, g.tile_cols), np.uint8)
        grid[cells[0], cells[1], cells[2]] = cells[3]
        return grid

    fixed_cells, routed_cells = chip.field_cells(), routed.field_cells()
    for cells, place in ((fixed_cells, placement), (routed_cells, routed.placement)):
        assert (place.to_logical(*cells[:3])[0] >= 0).all(), "only cells that hold a weight as the chip places the model"
        assert not (on_grid(cells) & on_grid((chip.fmap.tile, chip.fmap.row, chip.fmap.col, chip.fmap.state))).any(), \
            "never on a cell the map lists"  # fmt: skip
    fixed_grid, routed_grid = on_grid(fixed_cells), on_grid(routed_cells)
    both = footprint(placement) & footprint(routed.placement)
    assert (fixed_grid[both] == routed_grid[both]).all() and fixed_grid[both].any(), "the same physical cells fail"
    # rows routed onto a tile's spare rows meet field faults too, at the field rate (the tiles here are partly used)
    spare = footprint(routed.placement) & ~footprint(placement)
    assert spare.sum() > 500 and 0.02 < np.count_nonzero(routed_grid[spare]) / spare.sum() < 0.09
    # rows routed in place: exactly the cells of the unpermuted chip
    in_place = replace(chip, placement=placement.with_row_permutation(np.tile(np.arange(32), (placement.tiles, 1))))
    assert all((a == b).all() for a, b in zip(in_place.field_cells(), fixed_cells))
    # and the routed chip reads them (with its map) at each logical row's physical row
    tile, row, col, state = routed_cells
    fmap = chip.fmap
    every = [np.concatenate([a, b]) for a, b in zip((fmap.tile, fmap.row, fmap.col, fmap.state), (tile, row, col, state))]
    assert all((a == b).all() for a, b in zip(routed.read_states(), routed.placement.layer_states(*every)))

def test_a_lot_with_rows_permuted_counts_the_field_faults_its_routed_chips_hold(line, tmp_path):
    from ftdeploy.exported import load_export
    from ftdeploy.lot import verify_lot
    from ftdeploy.measured import FieldFaults, MeasuredChips
    from ftdeploy.programming import ProgrammedChip
    from ftdeploy.resolve import with_field_rate

    folder = tmp_path / "one"
    folder.mkdir()
    map_path = sorted(line["maps"].iterdir())[0]
    (folder / map_path.name).write_bytes(map_path.read_bytes())
    resolved = with_field_rate(line["resolved"], 0.05)
    lot = verify_lot(line["onnx"], resolved, folder, program=True, permute_rows=True)
    record = lot["lot"]["chips"][0]
    export = load_export(line["onnx"])
    field = FieldFaults(resolved.profile.field_faults, resolved.profile.signoff.seed)
    (chip,) = MeasuredChips.from_folder(folder, line["placement"], resolved.profile.fault_model).with_field(field)
    routed = ProgrammedChip(chip, export.mapping, permute_rows=True).routed(export.levels)
    assert routed.placement != chip.placement, "rows moved"
    _, _, _, state = routed.field_cells()
    assert (record["field_stuck_off_in_model"], record["field_stuck_on_in_model"]) == (int((state == STUCK_OFF).sum()), int((state == STUCK_ON).sum()))
