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
    archived = {f"lot-{lot.model}-{study.field_folder(lot.rate, lot.field)}" for lot in study.lots_in(STUDY / "results")}
    assert ran == archived and {lot.rate for lot in study.lots_in(STUDY / "results")} <= set(study.RATES)
    if "train-fault-tolerant" in manifest:
        assert (STUDY / "results" / study.FT_RUN / "model.pt").is_file(), "the fault-tolerant model is archived"


def test_a_partial_run_measures_only_the_models_asked_for():
    names = [step.name for step in study.study_steps(_args(models=["baseline"]))]
    assert "train-fault-tolerant" not in names and not [n for n in names if "fault-tolerant" in n]


def _args(**over):
    defaults = dict(out="runs/x", data=str(study.SHARED_DATA), rates=[0.01, 0.05], field_rate=0.002, chips=5, max_images=100,
                    models=list(study.MODELS))
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


def _lot_report(path: Path, clean: float, unprogrammed: list, programmed: list, field: list | None = None) -> None:
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
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"figures": {"acc_retrain": clean, "acc_pretrain": 83.0}, "data": {"images": 100}, "lot": lot}))


def test_a_lot_report_becomes_a_row_and_the_goals_are_judged_on_it(tmp_path):
    _lot_report(tmp_path / "lots/baseline/P-0.005/report.json", 83.0, [40.0, 60.0], [82.5, 81.5])
    _lot_report(tmp_path / "lots/baseline/P-0.01-field-0.001/report.json", 83.0, [20.0, 30.0], [78.0, 79.0], [70.0, 81.0])
    (tmp_path / "manifest.json").write_text(json.dumps({"steps": {"x": {"command": "ftdeploy verify a", "returncode": 1, "seconds": 3}}}))
    page = study.render(tmp_path)
    assert "| 0.005 | baseline | 83.00 | 50.00 (40.00) | 0 % [≥ 1 %] | 82.00 (81.50) | 100 % [≥ 1 %] | +32.00 |" in page
    assert "within 1 point of its clean accuracy at P = 0.005: 1.00 points below it (met)" in page
    assert "within 3 points of its clean accuracy at P = 0.01: 4.50 points below it (not met)" in page
    assert "at P = 0.05: not measured" in page
    assert "Not measured yet: baseline at P = 0.02, baseline at P = 0.05, fault-tolerant at P = 0.005" in page
    assert "ftdeploy verify a    # exit 1, 3 s" in page
    assert "| 0.01 | 0.001 | baseline | 78.50 | 75.50 (70.00) | 50 % [≥ 1 %] | -3.00 |" in page, "field faults on top"


def test_a_folder_without_lots_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="no lot reports"):
        study.render(tmp_path)
