"""What a production line reads off a sign-off: rates as the chip family states them, the yield
of chips meeting a chip spec with its exact lower bound, percentile limits, the worst chips by id
(each rerun alone with --chip), and a verdict a guessing model cannot pass."""

from __future__ import annotations

from pathlib import Path

import pytest
from scipy import stats

from ftdeploy.data import load_data
from ftdeploy.errors import ConfigError
from ftdeploy.export import export_onnx
from ftdeploy.figures import chip_percentile, chip_yield, judge, worst_chips, yield_bounds
from ftdeploy.profiles import builtin_profiles, load_profile
from ftdeploy.training.checkpoint import load_checkpoint
from ftdeploy.verify import verify_chip, verify_onnx

from _quick_model import quick_checkpoint
from conftest import run_main

IMAGES = 200
PROFILE = """\
name: yield-test
target: paper-diff8
faults:
  - kind: stuck-at
    stuck_off: 0.002
    stuck_on: 0.008
signoff:
  rates: [0.01, [0.004, 0.016]]
  chips: 8
  seed: 0
  max_images: 200
  confidence: 0.9
  chip_spec:
    min_acc_pct: 15.0
  acceptance:
    - rate: 0.01
      min_yield_pct: 10.0
      min_percentile_acc_pct: 5.0
      percentile: 10
    - rate: [0.004, 0.016]
      min_yield_pct: 99.0
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("signoff")


@pytest.fixture(scope="module")
def resolved(folder):
    (folder / "yield.yaml").write_text(PROFILE)
    return load_profile(folder / "yield.yaml")


@pytest.fixture(scope="module")
def model(folder, resolved) -> Path:
    """A quick pretrained model: its own reference (Acc_pretrain = its accuracy)."""
    out = folder / "model.onnx"
    export_onnx(load_checkpoint(quick_checkpoint(load_data(None), resolved.target, folder)), resolved, out)
    return out


@pytest.fixture(scope="module")
def report(model, resolved) -> dict:
    return verify_onnx(model, resolved, reference=model)


# --- rates as the chip family states them ---------------------------------------------------


def test_measured_rates_are_simulated_as_given(report):
    """A total is split with the profile's measured 1:4 ratio, a pair is simulated as written."""
    by_rate = {r["rate"]: r for r in report["figures"]["rates"]}
    assert by_rate[0.01]["stuck_off"] == pytest.approx(0.002) and by_rate[0.01]["stuck_on"] == pytest.approx(0.008)
    assert by_rate[0.02]["stuck_off"] == pytest.approx(0.004) and by_rate[0.02]["stuck_on"] == pytest.approx(0.016)
    assert report["signoff"]["rates_as_given"] == [0.01, [0.004, 0.016]]
    assert report["signoff"]["split"] == [0.002, 0.008]


def test_a_total_rate_without_a_stuck_at_ratio_is_refused(folder):
    path = folder / "no-ratio.yaml"
    path.write_text(PROFILE.replace("  - kind: stuck-at\n    stuck_off: 0.002\n    stuck_on: 0.008\n",
                                    "  - kind: read-noise\n    sigma_rel: 0.01\n"))  # fmt: skip
    with pytest.raises(ConfigError, match=r"signoff.rates 0.01: a total stuck-at rate is split .* faults has none") as err:
        load_profile(path)
    assert str(err.value).count("\n") == 0


@pytest.mark.parametrize("rates, expected", [
    ("[0.01, 0.01]", "each total stuck-at rate may appear once"),
    ("[0.01, [0.005, 0.005]]", "each total stuck-at rate may appear once"),
    ("[[0.1, 0.2, 0.3]]", "expected a total rate or a [stuck_off, stuck_on] pair, found a list of 3"),
    ("[[0.7, 0.6]]", "stuck_off + stuck_on must be at most 1"),
])  # fmt: skip
def test_bad_signoff_rates_are_one_line(folder, rates, expected):
    path = folder / "bad-rates.yaml"
    path.write_text(PROFILE.replace("rates: [0.01, [0.004, 0.016]]", f"rates: {rates}").split("  acceptance:")[0])
    with pytest.raises(ConfigError) as err:
        load_profile(path)
    assert expected in str(err.value) and str(err.value).count("\n") == 0, str(err.value)


# --- yield, percentiles, worst chips ---------------------------------------------------------


def test_yield_bounds_are_exact_clopper_pearson():
    for meeting, chips, c in [(28, 30, 0.95), (0, 10, 0.95), (10, 10, 0.9), (57, 100, 0.99)]:
        low, high = yield_bounds(meeting, chips, c)
        expected_low = 0.0 if meeting == 0 else stats.beta.ppf(1 - c, meeting, chips - meeting + 1)
        expected_high = 1.0 if meeting == chips else stats.beta.ppf(c, meeting + 1, chips - meeting)
        assert low == pytest.approx(100 * expected_low, abs=1e-9) and high == pytest.approx(100 * expected_high, abs=1e-9)


def test_yield_counts_chips_meeting_the_spec():
    accs = [90.0, 80.0, 79.99, 85.0, 70.0]
    y = chip_yield(accs, 80.0, "accuracy >= 80.00 %", 0.95)
    assert (y["meeting"], y["chips"], y["yield_pct"]) == (3, 5, 60.0)
    assert y["lower_bound_pct"] < 60.0 < y["upper_bound_pct"]


def test_percentile_chip_is_a_measured_chip():
    accs = [float(a) for a in range(1, 21)]  # 1..20
    assert chip_percentile(accs, 5) == 1.0, "1 of 20 chips is the 5th percentile"
    assert chip_percentile(accs, 10) == 2.0 and chip_percentile(accs, 50) == 10.0
    assert all(chip_percentile(accs, q) in accs for q in (1, 7.5, 33, 99))


def test_worst_chips_are_listed_by_id():
    worst = worst_chips([50.0, 40.0, 60.0, 40.0], rate=0.01, seed=3, count=3)
    assert worst == [{"rate": 0.01, "seed": 3, "index": 1, "acc": 40.0}, {"rate": 0.01, "seed": 3, "index": 3, "acc": 40.0},
                     {"rate": 0.01, "seed": 3, "index": 0, "acc": 50.0}]  # fmt: skip


def test_report_gives_yield_percentiles_and_worst_chips(report):
    for r in report["figures"]["rates"]:
        accs = r["chip_accuracies"]
        y = r["yield"]
        assert y["threshold_pct"] == 15.0 and y["meeting"] == sum(a >= 15.0 for a in accs) and y["chips"] == 8
        assert y["confidence"] == 0.9
        assert y["lower_bound_pct"] == pytest.approx(yield_bounds(y["meeting"], 8, 0.9)[0])
        assert set(r["percentiles"]) == {"5", "10", "50"}
        assert r["worst_chips"][0]["acc"] == min(accs) and accs[r["worst_chips"][0]["index"]] == min(accs)


def test_yield_and_percentile_limits_are_judged_on_their_figures(report):
    checks = {(c["name"], c["rate"]): c for c in report["verdict"]["checks"]}
    low = report["figures"]["rates"][0]["yield"]["lower_bound_pct"]
    assert checks[("min_yield_pct", 0.01)]["value"] == low and checks[("min_yield_pct", 0.01)]["passed"] == (low >= 10.0)
    assert "lower bound" in checks[("min_yield_pct", 0.01)]["reason"]
    p10 = report["figures"]["rates"][0]["percentiles"]["10"]
    assert checks[("min_percentile_acc_pct", 0.01)]["value"] == p10
    # 8 chips can never show a 99 % yield at 90 % confidence: its lower bound is at most 75 %
    assert not checks[("min_yield_pct", 0.02)]["passed"] and report["verdict"]["passed"] is False


def test_chip_spec_from_a_drop_uses_acc_pretrain(report, resolved):
    spec = resolved.profile.signoff.chip_spec.model_copy(update={"min_acc_pct": None, "max_drop_pct": 2.0})
    assert spec.threshold(report["figures"]["acc_pretrain"]) == report["figures"]["acc_pretrain"] - 2.0
    both = spec.model_copy(update={"min_acc_pct": 90.0})
    assert both.threshold(50.0) == 90.0, "both given: a chip must meet both"


def test_min_yield_needs_a_chip_spec(folder):
    path = folder / "no-spec.yaml"
    path.write_text(PROFILE.replace("  chip_spec:\n    min_acc_pct: 15.0\n", ""))
    with pytest.raises(ConfigError, match="min_yield_pct counts chips meeting signoff.chip_spec: set chip_spec"):
        load_profile(path)


# --- one chip alone ----------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.01, 0.02])
def test_one_chip_rerun_alone_is_the_reports_chip(report, model, resolved, rate):
    worst = next(r for r in report["figures"]["rates"] if r["rate"] == rate)["worst_chips"][0]
    one = verify_chip(model, resolved, (rate, worst["index"]), reference=model)
    assert one["accuracy"] == worst["acc"]
    assert one["meets_spec"] == (worst["acc"] >= 15.0)
    assert f"chip {worst['index']}" in one["line"] and "chip spec" in one["line"]


def test_cli_chip_option(report, model, resolved, monkeypatch, capsys):
    code, out, err = run_main(monkeypatch, capsys, "verify", model, "--profile", resolved.profile_path, "--reference", model,
                          "--chip", "0.01:3")  # fmt: skip
    assert code == 0, err
    assert f"accuracy {report['figures']['rates'][0]['chip_accuracies'][3]:.2f} %" in out
    for bad in ("0.01", "0.01:x", "0.03:1", "2:1"):
        code, _, err = run_main(monkeypatch, capsys, "verify", model, "--profile", resolved.profile_path, "--chip", bad)
        assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "--chip" in err, (bad, err)


def test_verify_without_out_says_no_report_was_written(model, resolved, monkeypatch, capsys):
    code, out, _ = run_main(monkeypatch, capsys, "verify", model, "--profile", resolved.profile_path, "--reference", model, "--chips", 2)
    assert code == 1 and "no report written (give --out DIR" in out


# --- a verdict that means something ----------------------------------------------------------


def test_a_guessing_model_fails_every_shipped_profile_on_the_chance_check(folder):
    """A model whose every output is the same class scores chance (10 %) and loses nothing to
    faults: limits on drops and stability alone would pass it. The chance check fails it."""
    demo = load_profile("demo")
    (folder / "guess").mkdir()
    ckpt = load_checkpoint(quick_checkpoint(load_data(None), demo.target, folder / "guess"))
    last_layer = list(ckpt["state_dict"])[-2:]  # the classifier's weight and bias: every logit 0, argmax class 0
    for key in last_layer:
        ckpt["state_dict"][key].zero_()
    out = folder / "guess.onnx"
    export_onnx(ckpt, demo, out)
    rep = verify_onnx(out, demo, chips=2, reference=out)
    assert rep["figures"]["acc_retrain"] == pytest.approx(10.0)
    chance = next(c for c in rep["verdict"]["checks"] if c["name"] == "chance_margin_pct")
    assert not chance["passed"] and not rep["verdict"]["passed"]
    assert [c["passed"] for c in rep["verdict"]["checks"] if c["name"] != "chance_margin_pct"] == [True], "drop alone passes it"
    for path in builtin_profiles():
        assert load_profile(path).profile.signoff.chance_margin_pct > 0, path.name


def test_the_chance_check_can_be_turned_off(report, resolved):
    figures = {**report["figures"], "acc_retrain": 10.5}
    off = resolved.model_copy(update={"profile": resolved.profile.model_copy(update={
        "signoff": resolved.profile.signoff.model_copy(update={"chance_margin_pct": 0.0})})})  # fmt: skip
    assert "chance_margin_pct" not in [c.name for c in judge(figures, off).checks]
    assert not next(c for c in judge(figures, resolved).checks if c.name == "chance_margin_pct").passed
