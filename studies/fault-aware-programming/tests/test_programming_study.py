"""The study's page is exactly what scripts/programming_study.py renders from its archive, and the
script's own logic: which commands it runs, and how a lot report becomes a table row."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import programming_study as study

STUDY = Path(__file__).resolve().parents[1]


def test_the_page_is_rendered_from_the_archive(tmp_path):
    out = tmp_path / "RESULTS.md"
    subprocess.run([sys.executable, str(STUDY / "scripts" / "programming_study.py"), "render", str(STUDY / "results"), "-o", str(out)],
                   check=True, capture_output=True)  # fmt: skip
    assert out.read_text() == (STUDY / "RESULTS.md").read_text()


def test_the_archive_holds_a_report_for_every_lot_its_manifest_ran():
    manifest = json.loads((STUDY / "results" / "manifest.json").read_text())["steps"]
    assert all(step["returncode"] in (0, 1) for step in manifest.values())
    ran = {name for name in manifest if name.startswith("lot-")}
    archived = {study.lot_step(lot.model, lot.rate, lot.field, lot.variant) for lot in study.lots_in(STUDY / "results")}
    assert ran == archived and {lot.rate for lot in study.lots_in(STUDY / "results")} <= set(study.RATES)
    if "train-fault-tolerant" in manifest:
        assert (STUDY / "results" / study.FT_RUN / "model.pt").is_file(), "the fault-tolerant model is archived"


def test_a_partial_run_measures_only_the_models_asked_for():
    names = [step.name for step in study.study_steps(_args(models=["baseline"]))]
    assert "train-fault-tolerant" not in names and not [n for n in names if "fault-tolerant" in n]


def _args(**over):
    defaults = dict(out="runs/x", data=str(study.SHARED_DATA), rates=[0.01, 0.05], field_rate=0.002, chips=5, max_images=100,
                    models=list(study.MODELS), variants=list(study.VARIANTS))
    return type("Args", (), {**defaults, **over})


def test_both_models_are_measured_programmed_on_the_same_maps_of_each_rate():
    steps = {step.name: step for step in study.study_steps(_args())}
    for rate in (0.01, 0.05):
        maps = steps[f"maps-{rate:g}"]
        folder = maps.argv[maps.argv.index("--out") + 1]
        for model in study.MODELS:
            argv = steps[f"lot-{model}-P-{rate:g}-field-0.002"].argv
            assert argv[argv.index("--fault-maps") + 1] == folder and "--program" in argv
            assert argv[argv.index("--reference") + 1].endswith("models/baseline.onnx")
            assert argv[argv.index("--field-rate") + 1] == "0.002"
            assert steps[f"lot-{model}-P-{rate:g}-field-0.002"].ok_codes == (0, 1), "a lot failing its chip spec is a result"
    no_field = {step.name for step in study.study_steps(_args(field_rate=0.0))}
    assert "lot-baseline-P-0.01" in no_field


def _lot_report(path: Path, clean: float, unprogrammed: list, programmed: list, field: list | None = None, permuted: bool = False) -> None:
    """A lot report as verify --fault-maps --program writes it (with --field-rate where ``field``
    gives the as-shipped accuracies)."""
    def y(accs):
        return {"yield_pct": 100.0 * sum(a >= 80 for a in accs) / len(accs), "lower_bound_pct": 1.0, "threshold_pct": 80.0}

    if field is None:
        chips = [{"accuracy": p, "accuracy_unprogrammed": u} for u, p in zip(unprogrammed, programmed)]
        lot = {"chips": chips, "yield": y(programmed), "yield_unprogrammed": y(unprogrammed)}
    else:
        chips = [{"accuracy": f, "accuracy_without_field": p, "accuracy_unprogrammed": u} for u, p, f in zip(unprogrammed, programmed, field)]
        lot = {"chips": chips, "yield": y(field), "yield_without_field": y(programmed), "yield_unprogrammed": y(unprogrammed)}
    lot.update(programmed=True, rows_permuted=permuted)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"figures": {"acc_retrain": clean, "acc_pretrain": 83.0}, "data": {"images": 100}, "lot": lot}))


def test_a_lot_report_becomes_a_row_and_the_goals_are_judged_on_it(tmp_path):
    _lot_report(tmp_path / "lots/baseline/P-0.005/report.json", 83.0, [40.0, 60.0], [82.5, 81.5])
    _lot_report(tmp_path / "lots/baseline/P-0.01-field-0.001/report.json", 83.0, [20.0, 30.0], [78.0, 79.0], [70.0, 81.0])
    (tmp_path / "manifest.json").write_text(json.dumps({"steps": {"x": {"command": "ftdeploy verify a", "returncode": 1, "seconds": 3}}}))
    page = study.render(tmp_path)
    assert "| 0.005 | baseline | 83.00 | 50.00 (40.00) | 0 % [≥ 1 %] | 82.00 (81.50) | 100 % [≥ 1 %] | +32.00 | – | – | – |" in page
    assert "within 1 point of its clean accuracy at P = 0.005: in place, 1.00 points below it (met)" in page
    assert "within 3 points of its clean accuracy at P = 0.01: in place, 4.50 points below it (not met)" in page
    assert "at P = 0.05: not measured" in page
    assert "Not measured yet: baseline at P = 0.02 (in place), baseline at P = 0.05 (in place), fault-tolerant at P = 0.005 (in place)" in page
    assert "ftdeploy verify a    # exit 1, 3 s" in page
    assert "| 0.01 | 0.001 | baseline | in place | 78.50 | 75.50 (70.00) | 50 % [≥ 1 %] | -3.00 |" in page, "field faults on top"


def test_a_folder_without_lots_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="no lot reports"):
        study.render(tmp_path)


def test_the_rows_permuted_variant_signs_off_the_same_chips_on_the_row_routing_target():
    steps = {step.name: step for step in study.study_steps(_args())}
    for model in study.MODELS:
        export = steps[f"export-{model}-rows-permuted"].argv
        assert export[export.index("--profile") + 1] == study.rel(study.PROFILE_ROWS)
        assert export[1] == steps[f"export-{model}"].argv[1], "the same checkpoint, exported for the row-routing target"
        for rate in (0.01, 0.05):
            fixed, permuted = steps[f"lot-{model}-P-{rate:g}-field-0.002"].argv, steps[f"lot-{model}-P-{rate:g}-field-0.002-rows-permuted"].argv
            assert "--permute-rows" in permuted and "--program" in permuted and "--permute-rows" not in fixed
            assert permuted[permuted.index("--profile") + 1] == study.rel(study.PROFILE_ROWS)
            assert permuted[1] == export[export.index("--out") + 1], "the model exported for the profile's target"
            assert permuted[permuted.index("--reference") + 1] == steps["export-baseline-rows-permuted"].argv[-1]
            for same in ("--fault-maps", "--data", "--max-images", "--field-rate"):
                assert permuted[permuted.index(same) + 1] == fixed[fixed.index(same) + 1], same
            assert permuted[permuted.index("--out") + 1].startswith("runs/x/lots-rows-permuted/")
    in_place = [step.name for step in study.study_steps(_args(variants=[study.IN_PLACE]))]
    assert not [name for name in in_place if "rows-permuted" in name]


def test_the_row_routing_target_is_paper_diff8_with_rows_routed():
    from ftdeploy.profiles import load_profile, load_target

    ours, _ = load_target(STUDY / "targets" / "paper-diff8-rows.yaml")
    paper, _ = load_target("paper-diff8")
    assert ours.row_permutation and not paper.row_permutation
    assert ours.model_dump(exclude={"name", "description", "row_permutation"}) == paper.model_dump(exclude={"name", "description", "row_permutation"})
    fixed, routed = load_profile(study.PROFILE), load_profile(study.PROFILE_ROWS)
    assert routed.target == ours
    assert fixed.profile.model_dump(exclude={"name", "description", "target"}) == routed.profile.model_dump(exclude={"name", "description", "target"})


def test_both_variants_of_an_archived_lot_measure_the_same_chips():
    lots = {(lot.model, lot.rate, lot.variant): lot for lot in study.lots_in(STUDY / "results")}
    pairs = [(lot, lots[(m, r, study.IN_PLACE)]) for (m, r, v), lot in lots.items() if v == study.ROWS_PERMUTED and (m, r, study.IN_PLACE) in lots]
    for permuted, fixed in pairs:
        # same file levels, same maps, same images: the unprogrammed chips are the same chips
        assert permuted.unprogrammed == fixed.unprogrammed and permuted.clean == fixed.clean and permuted.field == fixed.field
        assert permuted.images == fixed.images and permuted.threshold == fixed.threshold


def test_rows_permuted_lots_join_the_rows_and_the_goals_are_judged_on_them(tmp_path):
    _lot_report(tmp_path / "lots/baseline/P-0.005-field-0.001/report.json", 83.0, [40.0, 60.0], [82.5, 81.5], [80.0, 79.0])
    _lot_report(tmp_path / "lots-rows-permuted/baseline/P-0.005-field-0.001/report.json", 83.0, [40.0, 60.0], [83.0, 82.8], [81.0, 80.0], permuted=True)
    _lot_report(tmp_path / "lots-rows-permuted/baseline/P-0.01-field-0.001/report.json", 83.0, [20.0, 30.0], [83.2, 83.0], [81.0, 80.0], permuted=True)
    _lot_report(tmp_path / "lots-rows-permuted/fault-tolerant/P-0.05-field-0.001/report.json", 82.0, [60.0, 70.0], [81.0, 79.0], [80.0, 78.0], permuted=True)
    (tmp_path / "manifest.json").write_text(json.dumps({"steps": {"x": {"command": "ftdeploy verify a --permute-rows", "returncode": 0, "seconds": 3}}}))
    page = study.render(tmp_path)
    assert "| 0.005 | baseline | 83.00 | 50.00 (40.00) | 0 % [≥ 1 %] | 82.00 (81.50) | 100 % [≥ 1 %] | +32.00 | 82.90 (82.80) | 100 % [≥ 1 %] | +0.90 |" in page
    assert "| 0.05 | fault-tolerant | 82.00 | 65.00 (60.00) | 0 % [≥ 1 %] | – | – | – | 80.00 (79.00) | 50 % [≥ 1 %] | – |" in page
    assert ("within 1 point of its clean accuracy at P = 0.005: rows permuted, 0.10 points below it (met) "
            "[in place, 1.00 points below it (met)]") in page
    assert "within 2 points of its clean accuracy at P = 0.05: rows permuted, 2.00 points below it (met)\n" in page
    assert "within 3 points of its clean accuracy at P = 0.01: rows permuted, 0.10 points above it (met)\n" in page, "above clean"
    assert "| 0.005 | 0.001 | baseline | in place | 82.00 | 79.50 (79.00) | 50 % [≥ 1 %] | -2.50 |" in page
    assert "| 0.005 | 0.001 | baseline | rows permuted | 82.90 | 80.50 (80.00) | 100 % [≥ 1 %] | -2.40 |" in page
    assert "fault-tolerant at P = 0.05 (in place)" in page and "baseline at P = 0.005 (rows permuted)" not in page


def test_a_report_in_the_wrong_variant_folder_is_refused(tmp_path):
    _lot_report(tmp_path / "lots-rows-permuted/baseline/P-0.01/report.json", 83.0, [40.0], [82.0])  # rows not permuted
    (tmp_path / "manifest.json").write_text(json.dumps({"steps": {}}))
    with pytest.raises(SystemExit, match="rows_permuted is False"):
        study.render(tmp_path)


def test_archive_copies_the_lots_of_both_variants(tmp_path):
    run = tmp_path / "run"
    for folder in ("lots", "lots-rows-permuted"):
        _lot_report(run / folder / "baseline/P-0.01/report.json", 83.0, [40.0], [82.0], permuted=folder != "lots")
        (run / folder / "baseline/P-0.01/report.md").write_text("# lot")
        (run / folder / "baseline/P-0.01/chips.csv").write_text("not archived")
    (run / "manifest.json").write_text(json.dumps({"steps": {}}))
    study.main(["archive", str(run), "--to", str(tmp_path / "archive")])
    archived = sorted(p.relative_to(tmp_path / "archive").as_posix() for p in (tmp_path / "archive").rglob("*") if p.is_file())
    assert archived == ["lots-rows-permuted/baseline/P-0.01/report.json", "lots-rows-permuted/baseline/P-0.01/report.md",
                        "lots/baseline/P-0.01/report.json", "lots/baseline/P-0.01/report.md", "manifest.json"]
