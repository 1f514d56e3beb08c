"""Field faults: cells that fail after programming, added on top of each measured chip's map at
the profile's ``signoff.field_rate``. Reproducible per chip, nothing at all at rate 0, never a
change to a cell the map lists, more of them at a higher rate, unseen by programming, and a lot
report that keeps the figures before them beside the judged ones."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from conftest import Page, run_main
from ftdeploy.errors import ConfigError
from ftdeploy.lot import verify_lot
from ftdeploy.lot_report import lot_lines, render_lot_junit, render_lot_markdown
from ftdeploy.measured import FieldFaults, MeasuredChips
from ftdeploy.nonideality import CellRange, StuckAt
from ftdeploy.profiles import load_profile
from ftdeploy.report_html import render_lot_html

RATE, SEED, CHIPS, IMAGES, FIELD = 0.01, 7, 3, 100, 0.02

PROFILE = f"""\
name: field
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
  field_rate: {{field}}
  chip_spec:
    min_acc_pct: 0
"""


def _profile(folder, field: float, name: str = "field"):
    path = folder / f"{name}.yaml"
    path.write_text(PROFILE.format(field=field).replace("name: field", f"name: {name}"))
    return path


@pytest.fixture(scope="module")
def line(tmp_path_factory):
    """A quick export and the maps of CHIPS simulated chips (as `faultmap simulate` writes them)."""
    from _quick_model import quick_checkpoint
    from ftdeploy.data import load_data
    from ftdeploy.export import export_onnx
    from ftdeploy.exported import load_export
    from ftdeploy.measured import simulate_fault_maps
    from ftdeploy.placement import placement_of
    from ftdeploy.training.checkpoint import load_checkpoint

    folder = tmp_path_factory.mktemp("field")
    plain = load_profile(_profile(folder, 0.0, "plain"))
    onnx_path = folder / "model.onnx"
    export_onnx(load_checkpoint(quick_checkpoint(load_data(None), plain.target, folder)), plain, onnx_path)
    placement = placement_of(load_export(onnx_path))
    maps = folder / "maps"
    simulate_fault_maps(placement, plain.profile.signoff_faults(RATE), RATE, SEED, CHIPS, maps)
    return {"folder": folder, "onnx": onnx_path, "maps": maps, "placement": placement, "plain": plain,
            "field": load_profile(_profile(folder, FIELD))}  # fmt: skip


def _chips(line, field: float | None = None, seed: int = SEED) -> MeasuredChips:
    chips = MeasuredChips.from_folder(line["maps"], line["placement"], line["plain"].profile.fault_model)
    return chips if field is None else chips.with_field(FieldFaults(StuckAt.from_total(field), seed))


def _accs(report: dict, key: str = "accuracy") -> list[float]:
    return [c[key] for c in report["lot"]["chips"]]


def test_field_faults_are_reproducible_per_chip_and_seed(line):
    first, again, other = _chips(line, FIELD), _chips(line, FIELD), _chips(line, FIELD, seed=SEED + 1)
    for a, b, c in zip(first, again, other):
        cells_a, cells_b, cells_c = a.field_cells(), b.field_cells(), c.field_cells()
        assert len(cells_a[0]) > 0 and all((x == y).all() for x, y in zip(cells_a, cells_b))
        assert not (len(cells_a[0]) == len(cells_c[0]) and all((x == y).all() for x, y in zip(cells_a, cells_c)))
    one, two = verify_lot(line["onnx"], line["field"], line["maps"]), verify_lot(line["onnx"], line["field"], line["maps"])
    assert one["lot"]["chips"] == two["lot"]["chips"]


def test_field_rate_zero_is_exactly_the_measured_chips(line):
    cells = CellRange.of(line["plain"].target)
    from ftdeploy.exported import load_export

    levels = load_export(line["onnx"]).levels
    for plain, zero in zip(_chips(line), _chips(line, 0.0)):
        assert all((a == b).all() for a, b in zip(plain.reading(levels, cells).levels(), zero.reading(levels, cells).levels()))
    plain = verify_lot(line["onnx"], line["plain"], line["maps"], program=True)
    assert "field_rate" not in plain["lot"] and "accuracy_without_field" not in plain["lot"]["chips"][0]
    assert plain["signoff"]["field_rate"] == 0
    with_field = verify_lot(line["onnx"], line["field"], line["maps"], program=True)
    # the figures before field faults are the no-field lot's, to the last image
    assert _accs(with_field, "accuracy_without_field") == _accs(plain)
    assert _accs(with_field, "accuracy_unprogrammed") == _accs(plain, "accuracy_unprogrammed")


def test_field_faults_never_change_a_cell_the_map_lists(line):
    for plain, heavy in zip(_chips(line), _chips(line, 0.6)):
        measured, read = plain.states(), heavy.read_states()
        assert all((m == heavy_m).all() for m, heavy_m in zip(measured, heavy.states()))  # programming sees the map alone
        for m, r in zip(measured, read):
            assert (r[m != 0] == m[m != 0]).all()  # a listed cell reads as measured
            assert 0.5 < np.count_nonzero(r[m == 0]) / np.count_nonzero(m == 0) < 0.7  # the others at the field rate


def test_a_higher_field_rate_adds_stuck_cells_and_costs_accuracy(line, tmp_path):
    """Per chip, the cells stuck at a lower field rate stay stuck at a higher one (one uniform
    draw per cell, thresholds that only grow); and the lot's mean accuracy falls well below the
    measured chips' once half the cells fail."""
    stuck = [[(np.concatenate([s.reshape(-1) for s in chip.read_states()]) != 0) for chip in _chips(line, rate)]
             for rate in (0.0, 0.01, 0.1, 0.5)]  # fmt: skip
    for lower, higher in zip(stuck, stuck[1:]):
        for a, b in zip(lower, higher):
            assert (b >= a).all() and b.sum() > a.sum()
    heavy = verify_lot(line["onnx"], load_profile(_profile(tmp_path, 0.5, "heavy")), line["maps"])
    measured, shipped = np.mean(_accs(heavy, "accuracy_without_field")), np.mean(_accs(heavy))
    assert shipped < measured - 5, (measured, shipped)


def test_programming_sees_only_the_map(line):
    """With field faults, the programmed chip is programmed exactly as without them: its
    figure without field faults is the plain programmed lot's."""
    plain = verify_lot(line["onnx"], line["plain"], line["maps"], program=True)
    both = verify_lot(line["onnx"], line["field"], line["maps"], program=True)
    assert _accs(both, "accuracy_without_field") == _accs(plain)


def test_the_report_separates_the_three_figures(line, tmp_path):
    report = verify_lot(line["onnx"], line["field"], line["maps"], program=True)
    lot = report["lot"]
    chip = lot["chips"][0]
    assert {"accuracy", "meets_spec", "accuracy_unprogrammed", "meets_spec_unprogrammed", "accuracy_without_field",
            "meets_spec_without_field", "field_stuck_off_in_model", "field_stuck_on_in_model"} <= set(chip)
    assert chip["field_stuck_off_in_model"] + chip["field_stuck_on_in_model"] > 0
    assert lot["field_rate"] == FIELD and lot["programmed"] is True
    for key in ("yield", "yield_unprogrammed", "yield_without_field"):
        assert {"yield_pct", "lower_bound_pct", "upper_bound_pct"} <= set(lot[key])
    assert any("Field faults" in n and "programming sees only the map" in n for n in report["notes"])
    md = render_lot_markdown(report)
    for heading in ("unprogrammed, measured faults (%)", "programmed, measured faults (%)", "field faults (off / on)",
                    "chips programmed + field faults (as shipped)"):  # fmt: skip
        assert heading in md, heading
    suite = ET.fromstring(render_lot_junit(report))
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert {"yield_unprogrammed_pct", "yield_without_field_pct", "field_rate"} <= set(props)
    lines = lot_lines(report)
    assert "(unprogrammed " in lines[0] and "; without field faults " in lines[0]
    page = Page(render_lot_html(report))
    header = page.table("chip")[0]
    assert header[-3:] == ["unprogrammed, measured faults (%)", "programmed, measured faults (%)", "field faults (off / on)"]
    for label, key in (("unprogrammed, measured faults", "yield_unprogrammed"), ("programmed, measured faults", "yield_without_field"),
                       ("programmed + field faults (judged: as shipped)", "yield")):  # fmt: skip
        y = lot[key]
        assert f"Yield, chips {label}: {y['meeting']}/{y['chips']} = {y['yield_pct']:.1f} %" in page.all_text(), label
    assert "with field faults at 0.02" in lines[-1] and "without field faults yield" in lines[-1]
    # without --program: two figures, measured faults and measured + field faults
    unprogrammed = verify_lot(line["onnx"], line["field"], line["maps"])
    assert "measured + field faults" in render_lot_markdown(unprogrammed)
    assert "accuracy_unprogrammed" not in unprogrammed["lot"]["chips"][0]


def test_cli_signs_off_simulated_maps_with_field_faults(line, monkeypatch, capsys, tmp_path):
    profile = _profile(tmp_path, FIELD)
    code, out, err = run_main(monkeypatch, capsys, "faultmap", "simulate", line["onnx"], "--profile", profile, "--rate", RATE,
                              "--chips", 2, "--out", tmp_path / "maps")  # fmt: skip
    assert code == 0, err
    code, out, err = run_main(monkeypatch, capsys, "verify", line["onnx"], "--profile", profile, "--fault-maps", tmp_path / "maps",
                              "--program", "--out", tmp_path / "r")  # fmt: skip
    assert code == 0, err
    chip_lines = [ln for ln in out.splitlines() if ln.startswith("PASSED chip ")]
    assert len(chip_lines) == 2 and all("; without field faults " in ln for ln in chip_lines)
    assert "with field faults at 0.02" in out
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["lot"]["field_rate"] == FIELD


@pytest.mark.parametrize("change, expected", [
    ("  field_rate: 0.02\n", "faults has none"),
    ("  field_rate: 1.5\n", "field_rate"),
])  # fmt: skip
def test_a_bad_field_rate_is_refused(change, expected, tmp_path):
    text = PROFILE.format(field=0.0).replace("  field_rate: 0.0\n", change)
    if expected == "faults has none":
        text = text.replace("faults:\n  - kind: stuck-at\n    p_sa: 0.01\n", "faults: []\n").replace(f"rates: [{RATE}]", "rates: [[0.001, 0.002]]")
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected):
        load_profile(path)


def test_field_rate_typed_on_the_command_line_is_the_profiles_field_rate(line, monkeypatch, capsys, tmp_path):
    """--field-rate over a profile without field faults signs a lot off exactly as the profile
    stating that rate does; without --fault-maps it is refused in one line."""
    without, with_field = _profile(tmp_path, 0.0, "without"), _profile(tmp_path, FIELD, "with")
    code, _, err = run_main(monkeypatch, capsys, "faultmap", "simulate", line["onnx"], "--profile", without,
                            "--rate", RATE, "--chips", 2, "--out", tmp_path / "maps")  # fmt: skip
    assert code == 0, err
    reports = {}
    for name, profile, typed in (("typed", without, ["--field-rate", FIELD]), ("profile", with_field, [])):
        code, _, err = run_main(monkeypatch, capsys, "verify", line["onnx"], "--profile", profile, "--fault-maps", tmp_path / "maps",
                                "--program", *typed, "--out", tmp_path / name)  # fmt: skip
        assert code in (0, 1), err
        reports[name] = json.loads((tmp_path / name / "report.json").read_text())
    assert [c["accuracy"] for c in reports["typed"]["lot"]["chips"]] == [c["accuracy"] for c in reports["profile"]["lot"]["chips"]]
    assert reports["typed"]["lot"]["field_rate"] == FIELD
    code, _, err = run_main(monkeypatch, capsys, "verify", line["onnx"], "--profile", without, "--field-rate", FIELD)
    assert code == 2 and err.startswith("error: --field-rate: adds field faults to measured chips") and len(err.splitlines()) == 1
