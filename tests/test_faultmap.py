"""Measured chips: every cell's place on the chip, fault maps in both forms (and every way a map
is refused), maps of simulated chips that verify to exactly the Monte-Carlo sign-off's chips, and
`verify --fault-maps`: one verdict and one JUnit test case per chip, exit 0/1/2."""

from __future__ import annotations

import io
import json
import math
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest

from _quick_model import quick_checkpoint
from conftest import SHIPPED_TARGET_NAMES, Page, run_main
from ftdeploy.data import load_data
from ftdeploy.errors import DataError, VerifyError
from ftdeploy.export import export_onnx
from ftdeploy.exported import load_export
from ftdeploy.faultmap import (FORMAT, MAX_LISTED, STATES, fault_map, npz_bytes, read_fault_map,
                               write_fault_map)  # fmt: skip
from ftdeploy.lot import verify_lot
from ftdeploy.mapping import crossbar_tiles, make_mapping
from ftdeploy.measured import MeasuredChips, simulate_fault_maps
from ftdeploy.nonideality import STUCK_OFF, STUCK_ON, CellRange, FaultModel, ProgrammingVariation, StuckAt
from ftdeploy.onnx_format import HASH_KEY, content_hash
from ftdeploy.placement import Geometry, Placement, placement_of
from ftdeploy.profiles import load_profile, load_target
from ftdeploy.report import to_json, write_report
from ftdeploy.report_html import render_lot_html
from ftdeploy.training.checkpoint import load_checkpoint
from ftdeploy.verify import verify_onnx

RATE, SEED, CHIPS, IMAGES = 0.02, 5, 3, 100

PROFILE = f"""\
name: maps
target: paper-diff8
faults:
  - kind: stuck-at
    p_sa: 0.01
signoff:
  rates: [{RATE}]
  chips: {CHIPS}
  seed: {SEED}
  max_images: {IMAGES}
  chance_margin_pct: 0
  chip_spec:
    min_acc_pct: 0
"""
#: The same chips judged against a spec no chip meets.
FAILING = """\
name: maps-fail
extends: maps.yaml
signoff:
  chip_spec:
    min_acc_pct: 100
"""
NO_SPEC = PROFILE.replace("  chip_spec:\n    min_acc_pct: 0\n", "")

#: Layers needing several tiles down and across, and a small one; as (name, weight shape).
LAYERS = [("conv", (16, 3, 3, 3)), ("wide", (130, 30, 3, 3)), ("fc", (10, 64))]


# --- placement ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED_TARGET_NAMES)
def test_placement_round_trips_and_agrees_with_crossbar_tiles(name):
    target = load_target(name)[0]
    mapping = make_mapping(target)
    placement = Placement.compute(LAYERS, target.tile_rows, target.tile_cols, mapping.cells_per_weight)
    used = []
    first = 0
    for i, ((_, shape), lp) in enumerate(zip(LAYERS, placement.layers)):
        tiles = crossbar_tiles(shape, target, mapping)
        assert (lp.rows, lp.cols, lp.tiles) == (tiles["rows"], tiles["cols"], tiles["tiles"])
        assert lp.first_tile == first  # consecutive tiles in export order
        first += lp.tiles
        flat = np.arange(math.prod(lp.cell_shape))
        tile, row, col = placement.to_physical(i, flat)
        assert tile.min() == lp.first_tile and tile.max() == lp.first_tile + lp.tiles - 1
        assert row.max() < target.tile_rows and col.max() < target.tile_cols
        layer, back = placement.to_logical(tile, row, col)
        assert (layer == i).all() and (back == flat).all()
        used.append((tile * target.tile_rows + row) * target.tile_cols + col)
        # a weight's inputs on rows, its cells on adjacent columns: cell c of W[o, r] is column o*C + c
        c, o, r = np.unravel_index(flat, (mapping.cells_per_weight, lp.outputs, lp.rows))
        local = tile - lp.first_tile
        assert ((local // lp.grid[1]) * target.tile_rows + row == r).all()
        assert ((local % lp.grid[1]) * target.tile_cols + col == o * mapping.cells_per_weight + c).all()
    everything = np.concatenate(used)
    assert len(np.unique(everything)) == len(everything)  # no two cells on one spot
    assert placement.tiles == first
    assert min(placement.layers[1].grid) > 1  # a layer cut into tiles both down and across


def test_cells_that_hold_nothing_of_the_model_map_to_no_layer():
    placement = Placement.compute([("fc", (10, 64))], 128, 128, 2)  # 64 rows x 20 columns of one tile
    layer, _ = placement.to_logical(np.array([0, 0, 1]), np.array([64, 0, 0]), np.array([0, 20, 0]))
    assert layer.tolist() == [-1, -1, -1]


# --- the model, its export and its chips -------------------------------------------------------


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("maps")


@pytest.fixture(scope="module")
def profiles(folder) -> dict[str, Path]:
    paths = {"pass": folder / "maps.yaml", "fail": folder / "maps-fail.yaml", "nospec": folder / "nospec.yaml"}
    for key, text in (("pass", PROFILE), ("fail", FAILING), ("nospec", NO_SPEC)):
        paths[key].write_text(text)
    return paths


@pytest.fixture(scope="module")
def resolved(profiles):
    return load_profile(profiles["pass"])


@pytest.fixture(scope="module")
def exported(resolved, folder) -> tuple[Path, dict]:
    out = folder / "model.onnx"
    ckpt = load_checkpoint(quick_checkpoint(load_data(None), resolved.target, folder))
    return out, export_onnx(ckpt, resolved, out)


@pytest.fixture(scope="module")
def onnx_path(exported) -> Path:
    return exported[0]


@pytest.fixture(scope="module")
def placement(onnx_path) -> Placement:
    return placement_of(load_export(onnx_path))


@pytest.fixture(scope="module")
def csv_maps(placement, resolved, folder) -> Path:
    out = folder / "csv-maps"
    simulate_fault_maps(placement, resolved.profile.signoff_faults(RATE), RATE, SEED, CHIPS, out, "csv", tiles=placement.tiles + 2)
    return out


@pytest.fixture(scope="module")
def lot(onnx_path, resolved, csv_maps) -> dict:
    return verify_lot(onnx_path, resolved, csv_maps)


def test_export_documents_its_placement(exported, placement, resolved):
    out, summary = exported
    meta = load_export(out).meta
    assert meta["placement"] == placement.to_record() == summary["placement"].to_record()
    assert meta["placement"]["tiles"] == summary["tiles"]
    lines = placement.describe(summary["cell_names"])
    assert "pos, neg" in lines[0] and len(lines) == 1 + len(summary["layers"])


def _rewritten(onnx_path: Path, out: Path, change) -> Path:
    """The export with its ftdeploy.placement metadata changed by ``change`` (None: removed), re-hashed."""
    model = onnx.load(onnx_path)
    props = {p.key: p.value for p in model.metadata_props if p.key != HASH_KEY}
    record = change(json.loads(props.pop("ftdeploy.placement")))
    if record is not None:
        props["ftdeploy.placement"] = json.dumps(record)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    onnx.helper.set_model_props(model, {**props, HASH_KEY: content_hash(model)})
    onnx.save(model, out)
    return out


def test_an_export_without_placement_metadata_is_placed_by_the_same_rule(onnx_path, placement, tmp_path):
    old = load_export(_rewritten(onnx_path, tmp_path / "old.onnx", lambda rec: None))
    assert "placement" not in old.meta and placement_of(old) == placement


def test_placement_metadata_that_contradicts_the_rule_is_refused(onnx_path, tmp_path):
    def shifted(record):
        record["layers"][1]["first_tile"] += 1
        return record

    with pytest.raises(VerifyError, match="metadata placement .* differs"):
        placement_of(load_export(_rewritten(onnx_path, tmp_path / "odd.onnx", shifted)))


# --- the format -------------------------------------------------------------------------------


def _some_map() -> object:
    rng = np.random.default_rng(0)
    geometry = Geometry(5, 8, 6)
    cells = rng.choice(geometry.cells, 40, replace=False)
    tile, rest = np.divmod(cells, 48)
    row, col = np.divmod(rest, 6)
    return fault_map("LOT7-W03-D112", geometry, tile, row, col, rng.choice([STUCK_OFF, STUCK_ON], 40))


@pytest.mark.parametrize("suffix", [".csv", ".npz"])
def test_a_map_round_trips_through_both_forms(suffix, tmp_path):
    original = _some_map()
    path = write_fault_map(original, tmp_path / f"chip{suffix}")
    back = read_fault_map(path)
    assert back.chip == original.chip and back.geometry == original.geometry
    for name in ("tile", "row", "col", "state"):
        assert np.array_equal(getattr(back, name), getattr(original, name)), name
    assert back.sha256 == __import__("hashlib").sha256(path.read_bytes()).hexdigest()
    assert (back.stuck_off, back.stuck_on) == (original.stuck_off, original.stuck_on)


def test_npz_bytes_are_the_same_for_the_same_map():
    assert npz_bytes(_some_map()) == npz_bytes(_some_map())


def test_a_spreadsheet_export_reads_as_written(tmp_path):
    """A byte-order mark, CRLF line ends, padded empty cells, a quoted header, free comments, any case."""
    text = ('\ufeff"# chip: LOT7, W03",,,\r\n# tester: bench 4,,,\r\n# geometry: tiles=2 rows=4 cols=4,,,\r\n'
            "Tile,Row,Column,State\r\n1,3,2,Stuck-On\r\n,,,\r\n0,0,0,stuck-off\r\n")
    path = tmp_path / "sheet.csv"
    path.write_bytes(text.encode("utf-8"))
    fmap = read_fault_map(path)
    assert fmap.chip == "LOT7, W03" and fmap.geometry == Geometry(2, 4, 4)
    assert fmap.tile.tolist() == [1, 0] and fmap.state.tolist() == [STUCK_ON, STUCK_OFF]


def test_a_map_without_cells_is_a_healthy_chip(tmp_path):
    path = tmp_path / "healthy.csv"
    path.write_text("# chip: D1\n# geometry: tiles=3 rows=4 cols=4\ntile,row,column,state\n")
    fmap = read_fault_map(path)
    assert len(fmap) == 0 and fmap.chip == "D1"


HEADER = "# chip: D7\n# geometry: tiles=2 rows=4 cols=8\ntile,row,column,state\n"


@pytest.mark.parametrize("text, line, expected", [
    (HEADER + "2,0,0,stuck-on\n", 4, "tile 2 out of range; expected 0..1"),
    (HEADER + "0,4,0,stuck-on\n", 4, "row 4 out of range; expected 0..3"),
    (HEADER + "0,0,8,stuck-off\n", 4, "column 8 out of range; expected 0..7"),
    (HEADER + "0,1,2,stuck-on\n1,0,0,stuck-off\n0,1,2,stuck-off\n", 6, "tile 0, row 1, column 2 listed twice (first on line 4)"),
    (HEADER + "0,1,2,stuck\n", 4, "state 'stuck' unknown; expected stuck-off or stuck-on"),
    (HEADER + "0,1,stuck-on\n", 4, "expected 4 fields 'tile,row,column,state', found 3"),
    (HEADER + "0,1.5,2,stuck-on\n", 4, "row '1.5' is not a whole number; expected 0..3"),
    (HEADER + "0,-1,2,stuck-on\n", 4, "row '-1' is not a whole number"),
    ("# geometry: tiles=2 rows=4 cols=8\ntile,row,column,state\n", 2, "missing header '# chip: ...'"),
    ("# chip: D7\n# geometry: tiles=2 rows=4 cols=8\n0,1,2,stuck-on\n", 3, "expected the column line 'tile,row,column,state'"),
    ("# chip: D7\n# geometry: tiles=2 rows=4 cols=8\n", 2, "expected the column line"),
    ("# chip: D7\n# geometry: tiles=2 rows=4\ntile,row,column,state\n", 2, "expected 'tiles=N rows=R cols=C'"),
    ("# chip: D7\n# geometry: tiles=1000000000 rows=65536 cols=65536\n", 2, "expected at most 1048576 tiles"),
    ("# chip: D7\n# geometry: tiles=1000000 rows=65536 cols=65536\n", 2, "cells; expected at most"),
    ("# chip: D7\n# chip: D8\n", 2, "header 'chip' given twice (first on line 1)"),
    ("# format: ftdeploy-faultmap/9\n", 1, "not supported; expected 'ftdeploy-faultmap/1'"),
])  # fmt: skip
def test_a_bad_csv_map_is_one_line_naming_file_line_and_what_was_expected(text, line, expected, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError) as info:
        read_fault_map(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}:{line}: "), message
    assert expected in message, message


def test_an_empty_file_is_refused_saying_what_a_healthy_chip_looks_like(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(DataError, match=r"empty file; expected the header .*\(a chip with no stuck cells is those lines alone\)"):
        read_fault_map(path)


def _npz(path: Path, **arrays) -> Path:
    """An npz written by numpy itself (as a tester's own tool would)."""
    np.savez(path, **arrays)
    return path


def _good_arrays() -> dict:
    return {"format": np.array(FORMAT), "chip": np.array("D9"), "geometry": np.array([2, 4, 8]),
            "tile": np.array([0, 1]), "row": np.array([1, 3]), "col": np.array([7, 0]), "state": np.array([1, 2], np.uint8)}  # fmt: skip


def test_an_npz_written_by_numpy_reads(tmp_path):
    fmap = read_fault_map(_npz(tmp_path / "d9.npz", **_good_arrays()))
    assert fmap.chip == "D9" and fmap.row.tolist() == [1, 3] and fmap.state.tolist() == [STUCK_OFF, STUCK_ON]


@pytest.mark.parametrize("change, expected", [
    ({"tile": np.array([0, 2])}, "entry 1: tile 2 out of range; expected 0..1"),
    ({"state": np.array([1, 3])}, "entry 1: state 3 unknown"),
    ({"row": np.array([1, 1]), "col": np.array([7, 7]), "tile": np.array([0, 0])}, "entry 1: tile 0, row 1, column 7 listed twice (first entry 0)"),
    ({"geometry": np.array([2, 4])}, "expected 3 integers [tiles, rows, cols]"),
    ({"geometry": np.array([2, 1 << 20, 8])}, "expected at most"),
    ({"state": np.array([1, 2, 1])}, "expected one entry per stuck cell in each"),
    ({"chip": np.array(["D9"], dtype=object)}, "expected a string"),
    ({"format": np.array("other/1")}, "not supported"),
])  # fmt: skip
def test_a_bad_npz_map_is_one_line_naming_file_and_entry(change, expected, tmp_path):
    path = _npz(tmp_path / "bad.npz", **(_good_arrays() | change))
    with pytest.raises(DataError) as info:
        read_fault_map(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: ") and expected in message, message


def test_an_npz_declaring_a_huge_array_is_refused_before_reading_it(tmp_path):
    """Each cell array's header claims 2**40 entries and the file holds none of them: refused from
    the headers, before anything of that size is allocated or read."""
    arrays = _good_arrays() | {"geometry": np.array([1 << 20, 1 << 10, 1 << 10])}
    path = _npz(tmp_path / "huge.npz", **{k: v for k, v in arrays.items() if k not in ("tile", "row", "col", "state")})
    with zipfile.ZipFile(path, "a") as zf:
        for name in ("tile", "row", "col", "state"):
            header = io.BytesIO()
            np.lib.format.write_array_header_2_0(header, {"descr": "<i8", "fortran_order": False, "shape": (1 << 40,)})
            zf.writestr(f"{name}.npy", header.getvalue())
    with pytest.raises(DataError, match=r"1,099,511,627,776 cells listed; expected at most 67,108,864"):
        read_fault_map(path)


def test_an_npz_with_a_pickled_object_is_refused_and_not_unpickled(tmp_path):
    path = _npz(tmp_path / "evil.npz", **(_good_arrays() | {"tile": np.array([0, object()], dtype=object)}))
    with pytest.raises(DataError, match="expected a 1-d integer array"):
        read_fault_map(path)


def test_a_map_for_other_tiles_or_too_few_of_them_is_refused(placement, tmp_path):
    population = FaultModel([StuckAt.from_total(0.01)])
    for geometry, expected in ((f"tiles={placement.tiles} rows=256 cols=128", "expected the target's 128 x 128"),
                               (f"tiles={placement.tiles - 1} rows=128 cols=128", f"expected at least the {placement.tiles} the model occupies")):  # fmt: skip
        path = tmp_path / "other.csv"
        path.write_text(f"# chip: X\n# geometry: {geometry}\ntile,row,column,state\n")
        with pytest.raises(DataError) as info:
            MeasuredChips.from_maps([read_fault_map(path)], placement, population)
        assert str(info.value).startswith(f"{path}:2: geometry ") and expected in str(info.value)


def test_a_csv_listing_more_cells_than_its_chip_holds_stops_at_the_first_one_too_many(tmp_path):
    path = tmp_path / "long.csv"
    path.write_text("# chip: D2\n# geometry: tiles=1 rows=1 cols=2\ntile,row,column,state\n" + "0,0,0,stuck-on\n" * 5)
    with pytest.raises(DataError, match=rf"^{path}:6: more cells listed than the geometry tiles=1 rows=1 cols=2 holds"):
        read_fault_map(path)
    assert MAX_LISTED == 1 << 26 and set(STATES) == {"stuck-off", "stuck-on"}


# --- measured chips ------------------------------------------------------------------------------


def test_a_chip_reads_its_map_exactly_and_other_kinds_from_its_own_stream(tmp_path):
    placement = Placement.compute([("conv", (8, 3, 3, 3)), ("fc", (4, 8))], 16, 16, 2)
    cells = CellRange(127, 1.0, 100.0)
    rng = np.random.default_rng(1)
    programmed = [rng.integers(0, 128, s).astype(np.uint8) for s in placement.cell_shapes]
    geometry = placement.geometry()
    fmap = write_fault_map(fault_map("D1", geometry, [0, 0, 1], [0, 5, 3], [0, 9, 1], [STUCK_OFF, STUCK_ON, STUCK_ON]), tmp_path / "a.csv")
    stuck_only = MeasuredChips.from_maps([read_fault_map(fmap)], placement, FaultModel([StuckAt.from_total(0.01)]))
    chip = next(iter(stuck_only))
    held = chip.reading(programmed, cells).levels()
    expected = [StuckAt.from_total(0.5).apply(lv, st, cells) for lv, st in zip(programmed, chip.states())]
    assert all(np.array_equal(h, e) for h, e in zip(held, expected))
    assert sum(int((st > 0).sum()) for st in chip.states()) == 3 and chip.in_model == (1, 2)
    # programming variation on top: the same file (wherever, whatever its name) gives the same chip
    varied = FaultModel([StuckAt.from_total(0.01), ProgrammingVariation(sigma_rel=0.05)])
    copy = tmp_path / "renamed.csv"
    copy.write_bytes(fmap.read_bytes())
    a, b = (next(iter(MeasuredChips.from_maps([read_fault_map(p)], placement, varied))) for p in (fmap, copy))
    la, lb = a.reading(programmed, cells).levels(), b.reading(programmed, cells).levels()
    assert all(np.array_equal(x, y) for x, y in zip(la, lb))
    assert not np.array_equal(la[0], held[0].astype(np.float32))  # varied
    stuck = chip.states()[0] > 0
    assert np.array_equal(la[0][stuck], held[0][stuck].astype(np.float32))  # stuck cells read their stuck level


def test_two_maps_of_one_chip_are_refused(placement, csv_maps, tmp_path):
    folder = tmp_path / "twice"
    folder.mkdir()
    first = sorted(csv_maps.glob("*.csv"))[0]
    for name in ("a.csv", "b.csv"):
        (folder / name).write_bytes(first.read_bytes())
    with pytest.raises(DataError, match=r"b\.csv: chip .* is also the chip of .*a\.csv"):
        MeasuredChips.from_folder(folder, placement, FaultModel())


# --- simulated maps measure the Monte-Carlo chips -------------------------------------------------


def test_verifying_simulated_maps_gives_the_monte_carlo_chips_accuracies(onnx_path, resolved, lot, placement, folder):
    signoff = verify_onnx(onnx_path, resolved)
    monte_carlo = signoff["figures"]["rates"][0]["chip_accuracies"]
    assert [c["accuracy"] for c in lot["lot"]["chips"]] == monte_carlo
    # the npz form of the same chips measures the same
    npz = folder / "npz-maps"
    simulate_fault_maps(placement, resolved.profile.signoff_faults(RATE), RATE, SEED, CHIPS, npz, "npz")
    assert [c["accuracy"] for c in verify_lot(onnx_path, resolved, npz)["lot"]["chips"]] == monte_carlo


def test_simulated_maps_list_the_model_cells_of_the_sign_off_chips_and_more(lot, placement):
    for chip in lot["lot"]["chips"]:
        assert chip["geometry"] == [placement.tiles + 2, 128, 128]
        assert chip["stuck_off"] > chip["stuck_off_in_model"] > 0 and chip["stuck_on"] > chip["stuck_on_in_model"] > 0
        assert chip["id"].startswith(f"sim-rate{RATE:g}-seed{SEED}-chip")


def test_the_lot_report_follows_the_spec_and_counts_the_yield(lot):
    assert lot["schema"] == "ftdeploy-lot-report/1"
    assert {"tool", "model", "profile", "reference", "data", "signoff", "figures", "lot", "verdict", "notes"} <= set(lot)
    assert lot["verdict"]["passed"] is True and lot["lot"]["yield"]["meeting"] == CHIPS
    assert lot["lot"]["yield"]["lower_bound_pct"] < 100.0 == lot["lot"]["yield"]["yield_pct"]


def test_the_lot_report_is_byte_identical_for_the_same_inputs(lot, onnx_path, resolved, csv_maps, tmp_path):
    again = verify_lot(onnx_path, resolved, csv_maps)
    assert to_json(again) == to_json(lot)
    first, second = write_report(lot, tmp_path / "a"), write_report(again, tmp_path / "b")
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(first, second))


def test_the_lot_page_shows_the_verdict_every_chip_and_the_inputs_of_report_md(lot, tmp_path):
    """report.html of a lot: written with the other files, a well-formed page whose chip table has
    one row per chip (id, accuracy, result), its figure, its yield and report.md's inputs."""
    paths = write_report(lot, tmp_path)
    assert [p.name for p in paths] == ["report.json", "report.md", "report.xml", "report.html"]
    text = (tmp_path / "report.html").read_text()
    page = Page(text)
    assert page.mismatched == [] and page.open == [] and [t for t, _ in page.tags].count("svg") == 1
    assert not any(t == "script" for t, _ in page.tags)
    assert f"PASSED lot: {CHIPS} of {CHIPS} chips meet the chip spec" in page.all_text()
    rows = page.table("chip")
    assert [r[0] for r in rows[1:]] == [c["id"] for c in lot["lot"]["chips"]]
    assert [r[6] for r in rows[1:]] == [f"{c['accuracy']:.2f}" for c in lot["lot"]["chips"]]
    assert all(r[7] == "PASSED" for r in rows[1:])
    inputs = dict((r[0], r[1]) for r in page.table("input")[1:])
    md = (tmp_path / "report.md").read_text()
    assert f"| fault maps | `{lot['lot']['fault_maps']}`: {CHIPS} chips |" in md and inputs["fault maps"] == f"{lot['lot']['fault_maps']}: {CHIPS} chips"
    assert f"Yield, chips: {CHIPS}/{CHIPS} = 100.0 %" in page.all_text()
    assert render_lot_html(lot) == text


def test_other_kinds_of_the_profile_are_simulated_on_top_and_said_so(onnx_path, csv_maps, folder, lot):
    varied = folder / "varied.yaml"
    varied.write_text(PROFILE.replace("name: maps", "name: varied").replace(
        "    p_sa: 0.01\n", "    p_sa: 0.01\n  - kind: programming-variation\n    sigma_rel: 0.2\n"))
    first = verify_lot(onnx_path, load_profile(varied), csv_maps, max_images=40)
    assert "programming-variation" in first["signoff"]["faults"]
    assert any("simulated on top" in n and "SHA-256" in n for n in first["notes"])
    again = verify_lot(onnx_path, load_profile(varied), csv_maps, max_images=40)
    assert [c["accuracy"] for c in again["lot"]["chips"]] == [c["accuracy"] for c in first["lot"]["chips"]]
    assert lot["signoff"]["faults"].startswith("none besides the map")


# --- the command line ----------------------------------------------------------------------------


def test_cli_simulate_then_verify_passes_with_one_junit_case_per_chip(onnx_path, profiles, tmp_path, monkeypatch, capsys):
    code, out, err = run_main(monkeypatch, capsys, "faultmap", "simulate", onnx_path, "--profile", profiles["pass"], "--rate", RATE,
                              "--chips", 2, "--out", tmp_path / "maps")  # fmt: skip
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["chip-0000.csv", "chip-0001.csv"]
    code, out, err = run_main(monkeypatch, capsys, "verify", onnx_path, "--profile", profiles["pass"], "--fault-maps", tmp_path / "maps",
                              "--out", tmp_path / "r")  # fmt: skip
    assert code == 0, err
    assert out.count("PASSED chip ") == 2 and "PASSED lot: 2 of 2 chips meet the chip spec" in out
    suite = ET.parse(tmp_path / "r" / "report.xml").getroot()
    assert suite.get("tests") == "2" and suite.get("failures") == "0"
    assert [c.get("name") for c in suite.iter("testcase")] == [f"sim-rate{RATE:g}-seed{SEED}-chip{k}" for k in range(2)]


def test_cli_exit_1_when_a_chip_fails_and_the_report_lists_it(onnx_path, profiles, csv_maps, tmp_path, monkeypatch, capsys):
    code, out, err = run_main(monkeypatch, capsys, "verify", onnx_path, "--profile", profiles["fail"], "--fault-maps", csv_maps,
                              "--out", tmp_path / "r")  # fmt: skip
    assert code == 1, err
    assert out.count("FAILED chip ") == CHIPS and "measured chips failed" in err
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["verdict"]["failing"] == [c["id"] for c in report["lot"]["chips"]]
    suite = ET.parse(tmp_path / "r" / "report.xml").getroot()
    failures = list(suite.iter("failure"))
    assert suite.get("failures") == str(CHIPS) and len(failures) == CHIPS
    assert "< 100.00" in failures[0].get("message") and "is below 100.00 %" in failures[0].text
    page = Page((tmp_path / "r" / "report.html").read_text())
    assert f"{CHIPS} of {CHIPS} chips below the chip spec (100.00 %)" in page.all_text()
    assert [attrs.get("class") for tag, attrs in page.tags if tag == "tr"].count("fail") == CHIPS


@pytest.mark.parametrize("case", ["bad map", "no chip spec", "with --chips", "no maps"])
def test_cli_exit_2_on_bad_input_is_one_line(case, onnx_path, profiles, csv_maps, tmp_path, monkeypatch, capsys):
    maps, profile, extra, expected = csv_maps, profiles["pass"], [], ""
    if case == "bad map":
        maps = tmp_path / "maps"
        maps.mkdir()
        (maps / "d1.csv").write_text("# chip: D1\n# geometry: tiles=12 rows=128 cols=128\ntile,row,column,state\n0,0,0,stuck-sideways\n")
        expected = f"{maps / 'd1.csv'}:4: state 'stuck-sideways' unknown; expected stuck-off or stuck-on"
    elif case == "no chip spec":
        profile, expected = profiles["nospec"], "sets none; add chip_spec"
    elif case == "with --chips":
        extra, expected = ["--chips", 3], "--chips: simulated chips only"
    else:
        maps, expected = tmp_path, "holds no fault maps"
    code, out, err = run_main(monkeypatch, capsys, "verify", onnx_path, "--profile", profile, "--fault-maps", maps, *extra,
                              "--out", tmp_path / "r")  # fmt: skip
    assert code == 2, (out, err)
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("extra, expected", [
    (["--tiles", 3], "--tiles: 3; expected at least the 12 tiles the model occupies"),
    (["--tiles", 1 << 21], "expected at most 1048576 tiles"),
    (["--format", "xlsx"], "xlsx"),
])  # fmt: skip
def test_cli_simulate_exit_2_on_bad_input_is_one_line(extra, expected, onnx_path, profiles, placement, tmp_path, monkeypatch, capsys):
    code, out, err = run_main(monkeypatch, capsys, "faultmap", "simulate", onnx_path, "--profile", profiles["pass"], "--rate", RATE,
                              "--out", tmp_path / "maps", *extra)  # fmt: skip
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1 and expected in err, err
    assert placement.tiles == 12 and not (tmp_path / "maps").exists()


def test_cli_export_says_where_each_layer_sits(resolved, folder, tmp_path, monkeypatch, capsys):
    code, out, err = run_main(monkeypatch, capsys, "export", folder / "model.pt", "--profile", resolved.profile_path, "-o", tmp_path / "m.onnx")
    assert code == 0, err
    assert "placement (ftdeploy-placement/1)" in out and "tile 0: " in out and "tile grid" in out


def test_faultmap_help_imports_nothing_heavy():
    from test_startup import HEAVY, _imported

    proc, imported = _imported("faultmap", "simulate", "--help")
    assert proc.returncode == 0 and "Usage" in proc.stdout and not imported & HEAVY


def test_a_lot_fails_a_model_within_the_chance_margin(onnx_path, resolved, csv_maps, lot):
    """Every chip may meet a lax spec, but a model this close to chance fails the lot: a guessing
    model loses nothing to faults. The test profile turns the check off; 50 points turns it on."""
    assert lot["verdict"]["passed"] and lot["verdict"]["chance"] is None
    strict = resolved.model_copy(update={"profile": resolved.profile.model_copy(update={
        "signoff": resolved.profile.signoff.model_copy(update={"chance_margin_pct": 50.0})})})  # fmt: skip
    judged = verify_lot(onnx_path, strict, csv_maps)
    assert not judged["verdict"]["passed"] and judged["verdict"]["failing"] == []
    assert "points above chance" in judged["verdict"]["chance"] and judged["verdict"]["summary"].startswith("the model is")
