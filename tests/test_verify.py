"""ftdeploy verify: ONNX Runtime sign-off on simulated chips. The chips are the PyTorch fast
path's chips, the figures follow their definitions, the report is reproducible to the byte,
and the exit code follows the verdict (0 pass, 1 a limit failed, 2 bad input)."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
import statistics
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml

from ftdeploy.chip import DeployedNetwork
from ftdeploy.cli import main
from ftdeploy.data import load_data
from ftdeploy.errors import ConfigError, DataError, VerifyError
from ftdeploy.export import HASH_KEY, content_hash, export_onnx
from ftdeploy.exported import load_export
from ftdeploy.figures import NO_DEGRADATION, judge, stability_score, summarize_chips, t_quantile_975
from ftdeploy.population import SimulatedChips, chip_accuracies
from ftdeploy.runtime import OnnxBackend
from ftdeploy.profiles import load_profile
from ftdeploy.report import check_case_name, check_line, render_junit, render_markdown, to_json, verdict_lines, write_report
from ftdeploy.training.checkpoint import load_checkpoint, model_from_checkpoint
from ftdeploy.verify import evaluation_data, subset_indices, subset_size, verify_onnx

from _quick_model import quick_checkpoint
from conftest import run_main

IMAGES = 200
CHIPS = 3
RATES = [0.0, 0.01, 0.05]

PASSING = f"""\
name: vtest
target: paper-diff8
faults:
  - kind: stuck-at
    p_sa: 0.01
signoff:
  rates: {RATES}
  chips: {CHIPS}
  seed: 0
  max_images: {IMAGES}
  acceptance:
    - rate: 0.01
      max_acc_drop_pct: 100.0
      min_acc_defect_lower_ci_pct: 0.0
    - rate: 0.05
      min_stability: 0.0
"""
#: Same chips, one impossible limit: the passing profile extended, as a production line would.
FAILING = """\
name: vtest-fail
extends: vtest.yaml
signoff:
  acceptance:
    - rate: 0.01
      max_acc_drop_pct: 100.0
      min_acc_defect_pct: 99.0
      min_acc_defect_lower_ci_pct: 0.0
    - rate: 0.05
      min_stability: 0.0
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("verify")


@pytest.fixture(scope="module")
def bundle():
    return load_data(None)


@pytest.fixture(scope="module")
def profiles(folder) -> dict[str, Path]:
    paths = {"pass": folder / "vtest.yaml", "fail": folder / "vtest-fail.yaml"}
    paths["pass"].write_text(PASSING)
    paths["fail"].write_text(FAILING)
    return paths


@pytest.fixture(scope="module")
def resolved(profiles):
    return load_profile(profiles["pass"])


@pytest.fixture(scope="module")
def ckpt(bundle, resolved, folder) -> dict:
    return load_checkpoint(quick_checkpoint(bundle, resolved.target, folder))


@pytest.fixture(scope="module")
def onnx_path(ckpt, resolved, folder) -> Path:
    out = folder / "model.onnx"
    export_onnx(ckpt, resolved, out)
    return out


@pytest.fixture(scope="module")
def reference_path(bundle, resolved, folder) -> Path:
    """Another quick model, exported for the same target: the fault-free reference whose accuracy
    on the signed-off images is Acc_pretrain (the profile's 200-image subset is not the image set
    the checkpoint measured its own Acc_pretrain on)."""
    ref_folder = folder / "reference"
    ref_folder.mkdir()
    out = folder / "reference.onnx"
    export_onnx(load_checkpoint(quick_checkpoint(bundle, resolved.target, ref_folder, seed=1)), resolved, out)
    return out


@pytest.fixture(scope="module")
def report(onnx_path, resolved, reference_path) -> dict:
    return verify_onnx(onnx_path, resolved, reference=reference_path)


@pytest.fixture(scope="module")
def torch_eval(ckpt, resolved, bundle):
    """The PyTorch fast path on the verifier's images: (DeployedNetwork, x uint8, y, mean, std)."""
    keep = torch.from_numpy(subset_indices(bundle.val_y.numpy(), IMAGES))
    norm = ckpt["normalization"]
    net = DeployedNetwork(model_from_checkpoint(ckpt), resolved.target)
    return net, bundle.val_x[keep], bundle.val_y[keep], norm["mean"], norm["std"]


# --- the chips are the PyTorch fast path's chips ------------------------------------------------


def test_acc_retrain_is_the_fault_free_deployed_accuracy(report, torch_eval):
    net, x, y, mean, std = torch_eval
    assert report["figures"]["acc_retrain"] == net.accuracy(x, y, mean, std)


@pytest.mark.parametrize("rate", RATES)
def test_onnx_runtime_chips_equal_torch_fast_path_chips(report, torch_eval, resolved, rate):
    """Same chip_rng streams, same layer order, bit-identical decoded weights: the per-chip
    accuracies agree exactly. Allowed slack (one image per chip) only because the two runtimes
    accumulate convolutions in different orders, which could flip an argmax on a near-exact tie."""
    net, x, y, mean, std = torch_eval
    chips = SimulatedChips(resolved.profile.fault_model.at_rate(rate), rate, 0, CHIPS)
    expected = chip_accuracies(net.backend(x, y, mean, std), chips)
    got = next(r for r in report["figures"]["rates"] if r["rate"] == rate)["chip_accuracies"]
    one_image = 100.0 / len(y)
    assert len(got) == CHIPS
    assert max(abs(a - b) for a, b in zip(got, expected)) <= one_image + 1e-9, (got, expected)


COMPOSED = [
    [{"kind": "programming-variation", "sigma_rel": 0.1}],
    [{"kind": "programming-variation", "sigma_uS": 2.0}, {"kind": "drift", "nu_mean": 0.05, "nu_std": 0.02, "at": "1 day"}],
    [{"kind": "stuck-at", "p_sa": 0.01}, {"kind": "programming-variation", "sigma_rel": 0.05, "distribution": "lognormal"},
     {"kind": "drift", "nu_mean": 0.03, "nu_std": 0.01, "at": "1 year"}, {"kind": "read-noise", "sigma_rel": 0.05}],
]


@pytest.mark.parametrize("faults", COMPOSED, ids=["variation", "variation+drift", "all-four"])
def test_backends_agree_chip_for_chip_on_composed_non_idealities(faults, onnx_path, torch_eval, tmp_path):
    """Continuous conductances go through the analog copy of the ONNX graph (float32 levels) and
    through the PyTorch backend's decode: same chips, same per-batch read noise (both backends
    read a noisy chip afresh for every batch of 64 images), same accuracies."""
    net, x, y, mean, std = torch_eval
    resolved = load_profile(_profile_with_faults(tmp_path, faults))
    export = load_export(onnx_path)
    data = evaluation_data(export, None, None, IMAGES)
    onnx_backend = OnnxBackend(export, data.x, data.y, batch_size=64)
    torch_backend = net.backend(x, y, mean, std, batch_size=64)
    for rate in (0.0, 0.02):
        chips = SimulatedChips(resolved.profile.fault_model.at_rate(rate), rate, 0, 2)
        got, expected = chip_accuracies(onnx_backend, chips), chip_accuracies(torch_backend, chips)
        assert max(abs(a - b) for a, b in zip(got, expected)) <= 100.0 / len(y) + 1e-9, (rate, got, expected)
    clean = onnx_backend.accuracy()
    assert clean == torch_backend.accuracy()
    assert min(chip_accuracies(onnx_backend, SimulatedChips(resolved.profile.fault_model.at_rate(0.1), 0.1, 0, 2))) < clean


def test_analog_graph_decodes_integer_levels_exactly_as_the_file(onnx_path, torch_eval):
    """Integer levels fed as float32 to the analog graph give the file's own logits bit for bit:
    the Sub/Mul that replaces DequantizeLinear computes what it computes."""
    export = load_export(onnx_path)
    data = evaluation_data(export, None, None, 50)
    backend = OnnxBackend(export, data.x, data.y)
    backend._load([lv.astype(np.float32) for lv in export.levels])
    analog = backend._session.run(["logits"], {"input": data.x, **backend._feeds})[0]
    backend._load(None)
    plain = backend._session.run(["logits"], {"input": data.x})[0]
    assert np.array_equal(analog, plain)


def _profile_with_faults(folder, faults) -> Path:
    """The passing profile with these faults; a stuck-at entry at 0 where they have none, to
    give the sign-off rates their stuck-off : stuck-on ratio."""
    if not any(f["kind"] == "stuck-at" for f in faults):
        faults = [{"kind": "stuck-at", "p_sa": 0.0}, *faults]
    path = folder / "composed.yaml"
    path.write_text(PASSING.replace("faults:\n  - kind: stuck-at\n    p_sa: 0.01\n", "") + yaml.safe_dump({"faults": faults}))
    return path


def test_verify_reports_what_was_simulated_with_composed_kinds(onnx_path, reference_path, tmp_path):
    faults = COMPOSED[2]
    rep = verify_onnx(onnx_path, load_profile(_profile_with_faults(tmp_path, faults)), chips=2, max_images=100,
                      reference=reference_path)
    assert "drift" in rep["signoff"]["faults"] and "read-noise" in rep["signoff"]["faults"]
    zero = rep["figures"]["rates"][0]
    assert zero["rate"] == 0.0 and len(set(zero["chip_accuracies"])) > 1, "variation and noise act at rate 0 too"


def test_rate_zero_chips_are_the_clean_chip_exactly(report):
    zero = report["figures"]["rates"][0]
    assert zero["rate"] == 0.0
    assert zero["chip_accuracies"] == [report["figures"]["acc_retrain"]] * CHIPS
    assert zero["acc_defect_std"] == 0.0


def test_seed_selects_other_chips(onnx_path, resolved, reference_path, report):
    other = verify_onnx(onnx_path, resolved, seed=1, reference=reference_path)
    rate = lambda rep: rep["figures"]["rates"][-1]["chip_accuracies"]  # noqa: E731
    assert rate(other) != rate(report)
    assert other["signoff"]["seed"] == 1


# --- figures ------------------------------------------------------------------------------------


def test_figures_follow_their_definitions(report):
    fig = report["figures"]
    for r in fig["rates"]:
        accs = r["chip_accuracies"]
        assert r["acc_defect_mean"] == pytest.approx(statistics.fmean(accs))
        assert r["acc_defect_std"] == pytest.approx(statistics.stdev(accs))
        half = t_quantile_975(len(accs) - 1) * r["acc_defect_std"] / math.sqrt(len(accs))
        assert r["acc_defect_ci95"] == pytest.approx([r["acc_defect_mean"] - half, r["acc_defect_mean"] + half])
        assert r["acc_drop"] == pytest.approx(fig["acc_pretrain"] - r["acc_defect_mean"])
        if r["stability"] is None:
            assert r["acc_defect_mean"] >= fig["acc_pretrain"] and r["stability_note"] == NO_DEGRADATION
        else:
            assert r["stability"] == pytest.approx(fig["acc_retrain"] / r["acc_drop"])


def test_acc_pretrain_is_the_references_accuracy_on_the_same_images(report, reference_path, resolved):
    export = load_export(reference_path)
    data = evaluation_data(export, None, None, IMAGES)
    assert report["figures"]["acc_pretrain"] == OnnxBackend(export, data.x, data.y).accuracy()
    assert report["figures"]["acc_pretrain_same_images"] is True
    assert "reference.onnx" in report["figures"]["acc_pretrain_source"]
    assert report["reference"]["sha256"] == hashlib.sha256(reference_path.read_bytes()).hexdigest()


def test_stability_score_is_inf_without_degradation():
    assert stability_score(80.0, 90.0, 85.0) == pytest.approx(16.0)
    assert stability_score(80.0, 90.0, 90.0) == math.inf
    assert stability_score(80.0, 90.0, 91.0) == math.inf


def test_undefined_stability_meets_any_minimum(resolved):
    figures = {"acc_pretrain": 50.0, "acc_retrain": 52.0, "rates": [
        {"rate": r, "acc_defect_mean": 51.0, "acc_defect_ci95": [50.0, 52.0], "acc_drop": -1.0,
         "stability": None, "stability_note": NO_DEGRADATION} for r in RATES]}  # fmt: skip
    verdict = judge(figures, resolved).to_dict()
    ss = next(c for c in verdict["checks"] if c["name"] == "min_stability")
    assert ss["passed"] and ss["value"] is None and ss["note"] == NO_DEGRADATION
    assert check_line(ss) == f"PASSED rate=0.05 min_stability: inf >= 0.00 ({NO_DEGRADATION})"


def test_summary_of_one_chip_has_no_spread():
    assert summarize_chips([42.0]) == {"mean": 42.0, "std": None, "ci95": None}


def _exact_t_quantile_975(df: int) -> float:
    """t(0.975, df) from Student's t density itself: the point where the integral of the density
    from 0 reaches 0.475 (Simpson's rule, bisection), so the table's interpolation is checked
    without scipy, which the project does not install."""
    scale = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def half_cdf(q: float) -> float:
        x = np.linspace(0.0, q, 20001)
        y = scale * (1 + x * x / df) ** (-(df + 1) / 2)
        return float((x[1] - x[0]) / 3 * (y[0] + y[-1] + 4 * y[1:-1:2].sum() + 2 * y[2:-1:2].sum()))

    low, high = 1.9, 13.0
    while high - low > 1e-8:
        mid = (low + high) / 2
        low, high = (mid, high) if half_cdf(mid) < 0.475 else (low, mid)
    return (low + high) / 2


def test_t_quantiles():
    assert t_quantile_975(1) == pytest.approx(12.7062, abs=1e-4)
    assert t_quantile_975(29) == pytest.approx(2.0452, abs=1e-4)
    assert t_quantile_975(10**6) == pytest.approx(1.95996, abs=1e-4)
    for df in (1, 2, 9, 30, 35, 99, 150, 999, 5000):  # table rows and the interpolation between and past them
        assert t_quantile_975(df) == pytest.approx(_exact_t_quantile_975(df), abs=1e-4), df


def test_missing_acc_pretrain_falls_back_to_acc_retrain(onnx_path, resolved, tmp_path):
    """Odd checkpoints record no Acc_pretrain; the report says what it used instead."""
    model = onnx.load(onnx_path)
    props = {p.key: p.value for p in model.metadata_props}
    props["ftdeploy.acc_pretrain"] = "null"
    del props[HASH_KEY]
    onnx.helper.set_model_props(model, props)
    onnx.helper.set_model_props(model, {**props, HASH_KEY: content_hash(model)})
    odd = tmp_path / "odd.onnx"
    onnx.save(model, odd)
    rep = verify_onnx(odd, resolved, chips=2, max_images=50)
    assert rep["figures"]["acc_pretrain"] == rep["figures"]["acc_retrain"]
    assert "no Acc_pretrain" in rep["figures"]["acc_pretrain_source"]
    assert any("no Acc_pretrain" in n for n in rep["notes"])


# --- the report ---------------------------------------------------------------------------------


def test_report_records_what_was_verified(report, onnx_path, resolved):
    assert report["schema"] == "ftdeploy-report/1"
    assert report["model"]["sha256"] == hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    assert report["profile"]["sha256"] == hashlib.sha256(resolved.profile_path.read_bytes()).hexdigest()
    assert report["profile"]["target_sha256"] == hashlib.sha256(resolved.target_path.read_bytes()).hexdigest()
    assert report["profile"]["extends"] == [], "vtest extends no profile"
    assert report["data"]["images"] == IMAGES and report["data"]["spec"] == "embedded"
    assert report["signoff"] == {**report["signoff"], "seed": 0, "chips": CHIPS, "rates": RATES}
    assert [r["rate"] for r in report["figures"]["rates"]] == RATES
    assert report["verdict"]["passed"] is True


def test_evaluation_subset_is_stratified(bundle):
    keep = subset_indices(bundle.val_y.numpy(), IMAGES)
    counts = np.bincount(bundle.val_y.numpy()[keep], minlength=10)
    assert counts.min() == counts.max() == IMAGES // 10


def test_subset_size_counts_the_images_the_subset_keeps(bundle):
    labels = bundle.val_y.numpy()
    for asked in (None, 1, IMAGES, len(labels) - 1, len(labels), len(labels) + 5):
        keep = subset_indices(labels, asked)
        assert subset_size(len(labels), asked) == (len(labels) if keep is None else len(keep)), asked


def test_report_json_is_byte_identical_for_same_inputs(report, onnx_path, resolved, reference_path, tmp_path):
    again = verify_onnx(onnx_path, resolved, reference=reference_path)
    for a, b in zip(write_report(report, tmp_path / "a"), write_report(again, tmp_path / "b")):
        assert a.read_bytes() == b.read_bytes(), a.name
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["report.html", "report.json", "report.md", "report.xml"], "no temporary files left"


def test_markdown_is_rendered_from_the_json(report, tmp_path):
    _, md, *_ = write_report(report, tmp_path)
    from_json = json.loads((tmp_path / "report.json").read_text())
    assert md.read_text() == render_markdown(from_json)
    text = md.read_text()
    for line in verdict_lines(report):
        assert line in text
    assert "+inf" in text and "min_stability limit counts as met" in text  # the SS rule is stated
    for r in report["figures"]["rates"]:
        assert ", ".join(f"{a:.2f}" for a in r["chip_accuracies"]) in text


def _junit(text: str):
    import xml.etree.ElementTree as ET

    return ET.fromstring(text.encode())


def test_junit_xml_is_rendered_from_the_json_one_case_per_limit(report, tmp_path):
    """report.xml, for CI servers: one test case per limit, named by rate and limit; failures
    carry the verdict line; counts and properties agree with report.json."""
    _, _, xml, _ = write_report(report, tmp_path)
    from_json = json.loads((tmp_path / "report.json").read_text())
    assert xml.read_text() == render_junit(from_json)
    checks = report["verdict"]["checks"]
    suite = _junit(xml.read_text()).find("testsuite")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == [check_case_name(c) for c in checks] and len(checks) >= 2
    assert suite.get("tests") == str(len(checks)) and suite.get("failures") == str(sum(not c["passed"] for c in checks))
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["model_sha256"] == report["model"]["sha256"] and props["chips"] == str(report["signoff"]["chips"])
    assert props["verdict"] == verdict_lines(report)[-1]
    assert suite.find("system-out").text.splitlines() == verdict_lines(report)

    failing = copy.deepcopy(report)
    failing["verdict"]["checks"][1].update(passed=False, value=0.5, reason="stability score 0.50 is below the minimum")
    failing["verdict"].update(passed=False, summary="1 of 2 limits failed")
    suite = _junit(render_junit(failing)).find("testsuite")
    failures = [(c.get("name"), c.find("failure")) for c in suite.findall("testcase") if c.find("failure") is not None]
    assert [name for name, _ in failures] == [check_case_name(failing["verdict"]["checks"][1])]
    assert failures[0][1].get("message") == check_line(failing["verdict"]["checks"][1]) and failures[0][1].get("message").startswith("FAILED")
    assert failures[0][1].text == "stability score 0.50 is below the minimum" and suite.get("failures") == "1"


def test_undefined_stability_is_null_in_json_and_inf_in_markdown(report):
    odd = copy.deepcopy(report)
    odd["figures"]["rates"][1].update(stability=None, stability_note=NO_DEGRADATION)
    assert json.loads(to_json(odd))["figures"]["rates"][1]["stability"] is None
    assert "+inf" in render_markdown(odd)
    with pytest.raises(ValueError):  # an infinity must never leak into the JSON
        odd["figures"]["rates"][1]["stability"] = math.inf
        to_json(odd)


def test_verdict_lines_are_greppable(report):
    lines = verdict_lines(report)
    # A measured value may be negative: chips can beat Acc_pretrain on few images (a drop below 0).
    pattern = re.compile(r"^(PASSED|FAILED) (rate=[0-9.]+ )?[a-z_]+: (-?\d+\.\d\d|inf) (<=|>=|<|>) \d+\.\d\d( \(.*\))?$")
    assert all(pattern.match(line) for line in lines[:-1]), lines
    assert lines[0].startswith("PASSED chance_margin_pct: "), "a guessing model cannot pass: always checked"
    assert lines[-1] == "PASSED sign-off: 4 of 4 limits met"


# --- bad input ----------------------------------------------------------------------------------


def test_plain_onnx_file_is_not_an_ftdeploy_export(tmp_path):
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g",
                                   [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])  # fmt: skip
    plain = tmp_path / "plain.onnx"
    onnx.save(onnx.helper.make_model(graph), plain)
    with pytest.raises(VerifyError, match="not an ftdeploy export"):
        load_export(plain)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not a protobuf\xff" * 10)
    with pytest.raises(VerifyError):
        load_export(garbage)


def test_edited_file_is_refused(onnx_path, tmp_path):
    model = onnx.load(onnx_path)
    cells = next(i for i in model.graph.initializer if ".cells." in i.name)
    cells.raw_data = bytes([255]) + cells.raw_data[1:]
    edited = tmp_path / "edited.onnx"
    onnx.save(model, edited)
    with pytest.raises(VerifyError, match="content hash mismatch"):
        load_export(edited)


def test_profile_for_another_target_is_refused(onnx_path):
    with pytest.raises(VerifyError, match="exported for target 'paper-diff8'"):
        verify_onnx(onnx_path, load_profile("strict"))


def test_ci_limit_needs_two_chips(onnx_path, resolved):
    with pytest.raises(ConfigError, match="--chips 2 or more"):
        verify_onnx(onnx_path, resolved, chips=1)


def test_bad_data_spec_is_a_data_error(onnx_path, resolved):
    with pytest.raises(DataError):
        verify_onnx(onnx_path, resolved, data_spec="npz:/no/such/file.npz")


# --- CLI exit codes -----------------------------------------------------------------------------


#: Fewer images than the profile, same 3 chips: with 2 chips t(0.975, 1) = 12.7 stretches the CI
#: of a 100-image accuracy below 0 %, and the passing profile's CI limit is 0 %.
CLI_FAST = ("--max-images", 100)


def test_cli_exit_0_when_all_limits_pass(onnx_path, reference_path, profiles, tmp_path, monkeypatch, capsys):
    code, out, err = run_main(monkeypatch, capsys, "verify", onnx_path, "--profile", profiles["pass"], *CLI_FAST,
                              "--reference", reference_path, "--out", tmp_path / "r")
    assert code == 0, out + err
    assert "PASSED sign-off" in out
    assert json.loads((tmp_path / "r" / "report.json").read_text())["verdict"]["passed"] is True
    written = [tmp_path / "r" / name for name in ("report.json", "report.md", "report.xml", "report.html")]
    assert all(path.is_file() for path in written)
    assert f"wrote {', '.join(map(str, written))}" in out


def test_cli_exit_1_when_a_limit_fails_and_report_is_still_written(onnx_path, reference_path, profiles, tmp_path, monkeypatch, capsys):
    code, out, err = run_main(monkeypatch, capsys, "verify", onnx_path, "--profile", profiles["fail"], *CLI_FAST,
                              "--reference", reference_path, "--out", tmp_path / "r")
    assert code == 1, err
    # the profile it extends is part of what was verified: named and hashed in the report
    recorded = json.loads((tmp_path / "r" / "report.json").read_text())["profile"]
    base = profiles["pass"]
    assert recorded["extends"] == [{"file": str(base), "sha256": hashlib.sha256(base.read_bytes()).hexdigest()}]
    assert f"extends `{base}` (sha256 `{recorded['extends'][0]['sha256'][:16]}…`)" in (tmp_path / "r" / "report.md").read_text()
    assert re.search(r"^FAILED rate=0.01 min_acc_defect_pct: \d+\.\d\d < 99\.00$", out, re.M), out
    assert "FAILED sign-off: 1 of 5 limits failed" in out
    assert "sign-off failed" in err
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["verdict"]["passed"] is False
    failed = [c for c in report["verdict"]["checks"] if not c["passed"]]
    assert [c["name"] for c in failed] == ["min_acc_defect_pct"] and failed[0]["limit"] == 99.0 and failed[0]["reason"]


@pytest.mark.parametrize("bad", [
    ("--profile", "strict"),  # the file was exported for another target
    ("--profile", "PROFILE", "--data", "bogus:spec"),
    ("--profile", "PROFILE", "--chips", 0),
    ("--profile", "no-such-profile"),
])  # fmt: skip
def test_cli_exit_2_on_bad_input_leaves_no_report(onnx_path, profiles, tmp_path, monkeypatch, capsys, bad):
    args = [profiles["pass"] if a == "PROFILE" else a for a in bad]
    code, out, err = run_main(monkeypatch, capsys, "verify", onnx_path, *args, "--out", tmp_path / "r")
    assert code == 2, (out, err)
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


def test_cli_exit_2_for_a_missing_file(tmp_path, profiles, monkeypatch, capsys):
    code, _, err = run_main(monkeypatch, capsys, "verify", tmp_path / "missing.onnx", "--profile", profiles["pass"], "--out", tmp_path / "r")
    assert code == 2 and "file not found" in err
    assert not (tmp_path / "r").exists()


# --- your own test set ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def test_folder(bundle, tmp_path_factory) -> Path:
    """An ImageFolder of 30 embedded validation images, 3 per class: a whole test set of one's own."""
    from PIL import Image

    root = tmp_path_factory.mktemp("mytest")
    for c, name in enumerate(bundle.classes):
        (root / name).mkdir()
        for k, i in enumerate(np.flatnonzero(bundle.val_y.numpy() == c)[:3]):
            Image.fromarray(bundle.val_x[i].permute(1, 2, 0).numpy()).save(root / name / f"{k}.png")
    return root


def test_all_images_measures_every_image_of_the_folder(onnx_path, resolved, reference_path, test_folder):
    folder = dict(data_spec=f"imagefolder:{test_folder}", chips=2, max_images=None, reference=reference_path)
    rep = verify_onnx(onnx_path, resolved, all_images=True, **folder)
    assert rep["data"]["images"] == rep["data"]["val_images"] == 30 and rep["data"]["all_images"]
    held_out = verify_onnx(onnx_path, resolved, **folder)
    assert held_out["data"]["images"] == 3, "without it, the folder's default held-out tenth"
    assert rep["data"]["fingerprint"] != held_out["data"]["fingerprint"]
    again = verify_onnx(onnx_path, resolved, all_images=True, **folder)
    assert again["data"]["fingerprint"] == rep["data"]["fingerprint"], "the same images, the same fingerprint"
    assert f"image set sha256 `{rep['data']['fingerprint'][:16]}" in render_markdown(rep)


def test_all_images_with_a_val_split_is_one_line_exit_2(onnx_path, profiles, test_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["ftdeploy", "verify", str(onnx_path), "--profile", str(profiles["pass"]), "--data",
                                      f"imagefolder:{test_folder}", "--all-images", "--val-split", "5", "--out", str(tmp_path / "r")])  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "--all-images" in err[0] and "--val-split" in err[0], err
    assert not (tmp_path / "r").exists()


NO_PRETRAIN_LIMITS = PASSING.replace("""      max_acc_drop_pct: 100.0
""", "").replace("""    - rate: 0.05
      min_stability: 0.0
""", "")


def test_acc_pretrain_from_the_file_only_on_the_images_it_was_measured_on(onnx_path, resolved, ckpt, tmp_path):
    """The quick checkpoint measured Acc_pretrain on the whole embedded validation part: a
    sign-off there takes the file's figure; one on a 200-image subset has no Acc_pretrain on its
    images, so a limit that needs one is refused in one line naming --reference, and a profile
    without such limits reports no drop and no stability score."""
    whole = verify_onnx(onnx_path, resolved, chips=2, max_images=1000)
    assert whole["data"]["images"] == 1000 and whole["figures"]["acc_pretrain_same_images"] is True
    assert whole["figures"]["acc_pretrain"] == pytest.approx(ckpt["acc_pretrain"])
    assert "these same images" in whole["figures"]["acc_pretrain_source"]
    with pytest.raises(ConfigError, match=r"rate=0.01 max_acc_drop_pct, rate=0.05 min_stability compare against "
                                          r"Acc_pretrain.*give --reference PRE.onnx") as refused:  # fmt: skip
        verify_onnx(onnx_path, resolved, chips=2)
    assert "\n" not in str(refused.value)
    (tmp_path / "plain.yaml").write_text(NO_PRETRAIN_LIMITS)
    subset = verify_onnx(onnx_path, load_profile(tmp_path / "plain.yaml"), chips=2)
    fig = subset["figures"]
    assert fig["acc_pretrain"] is None and fig["acc_pretrain_same_images"] is False
    assert all(r["acc_drop"] is None and r["stability"] is None for r in fig["rates"])
    assert any("--reference" in note for note in subset["notes"])
    assert "n/a" in render_markdown(subset)


# --- sequential sign-off ----------------------------------------------------------------------

#: A cap of 40 chips in batches of 10: one limit every chip clears, one no chip can, a rate without.
SEQUENTIAL = f"""\
name: vtest-seq
target: paper-diff8
faults:
  - kind: stuck-at
    p_sa: 0.01
signoff:
  rates: {RATES}
  chips: 40
  batch_chips: 10
  max_images: 100
  chance_margin_pct: 0
  acceptance:
    - rate: 0.01
      min_acc_defect_pct: 1.0
    - rate: 0.05
      min_acc_defect_pct: 99.0
"""


class _Bar:
    """What a rich Progress is told: the bar's total as it changes, and the chips advanced."""

    def __init__(self):
        self.totals, self.advanced = [], 0

    def add_task(self, name, total):
        self.totals.append(total)
        return 0

    def advance(self, task):
        self.advanced += 1

    def update(self, task, total):
        self.totals.append(total)


@pytest.fixture(scope="module")
def sequential_profile(folder):
    path = folder / "vtest-seq.yaml"
    path.write_text(SEQUENTIAL)
    return load_profile(path)


def test_sequential_sign_off_stops_decided_rates_at_the_first_batch(onnx_path, sequential_profile, tmp_path):
    """Both limits are decided by the first 10 chips, and the rate without limits draws one batch:
    30 chips instead of 120, a prefix of the fixed count's chips, judged the same, and the
    progress bar's total shrinks to what was drawn."""
    bar = _Bar()
    seq = verify_onnx(onnx_path, sequential_profile, progress=bar)
    fixed = verify_onnx(onnx_path, sequential_profile, sequential=False)
    assert [r["chips"] for r in seq["figures"]["rates"]] == [10, 10, 10]
    assert [r["chips"] for r in fixed["figures"]["rates"]] == [40, 40, 40]
    for s, f in zip(seq["figures"]["rates"], fixed["figures"]["rates"]):
        assert s["chip_accuracies"] == f["chip_accuracies"][:10], "the same chips, fewer of them"
    zero, clear_pass, clear_fail = (r["stopped"] for r in seq["figures"]["rates"])
    assert zero["reason"].startswith("no limits at this rate") and zero["cap"] == 40
    assert clear_pass == {"chips": 10, "cap": 40, "looks": 1, "limits": [{"name": "min_acc_defect_pct", "limit": 1.0, "decision": "pass"}],
                          "reason": "every limit decided at 95 % confidence on 10 of 40 chips (min_acc_defect_pct pass)"}  # fmt: skip
    assert clear_fail["limits"][0]["decision"] == "fail"
    assert [c["passed"] for c in seq["verdict"]["checks"]] == [c["passed"] for c in fixed["verdict"]["checks"]] == [True, False]
    assert bar.totals == [120, 90, 60, 30] and bar.advanced == 30
    rule = seq["signoff"]["sequential"]
    assert rule["looks"] == [10, 20, 30, 40] and rule["look_confidence"] == pytest.approx(1 - 0.05 / 4)
    assert seq["signoff"]["chips"] == 40 and seq["signoff"]["chips_used"] == 30 and fixed["signoff"]["chips_used"] == 120
    assert fixed["signoff"]["sequential"] == {"sequential": False, "cap": 40}
    assert all(r["stopped"]["reason"] == "fixed count of 40 chips (sequential sign-off off)" for r in fixed["figures"]["rates"])
    md = render_markdown(seq)
    assert "| chips | at most 40 per rate, drawn 10 at a time until every limit is decided, seed 0" in md
    assert f"- P_sa 0.01: 10 of at most 40 chips — {clear_pass['reason']}" in md
    assert "10 at 0, 10 at 0.01, 10 at 0.05" in seq["figures"]["acc_defect_source"]
    again = verify_onnx(onnx_path, sequential_profile)
    for a, b in zip(write_report(seq, tmp_path / "a"), write_report(again, tmp_path / "b")):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_fixed_chips_on_the_command_line_draws_every_chip(onnx_path, folder, sequential_profile, tmp_path, monkeypatch, capsys):
    code, out, err = run_main(monkeypatch, capsys, "verify", onnx_path, "--profile", sequential_profile.profile_path,
                              "--max-images", 50, "--chips", 12, "--fixed-chips", "--out", tmp_path / "r")  # fmt: skip
    assert code == 1, out + err  # the 99 % limit fails
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert [r["chips"] for r in report["figures"]["rates"]] == [12, 12, 12]
    assert report["signoff"]["sequential"] == {"sequential": False, "cap": 12}


def test_a_chip_population_drawn_in_batches_is_the_same_population(onnx_path, resolved):
    export = load_export(onnx_path)
    data = evaluation_data(export, None, None, 50)
    backend = OnnxBackend(export, data.x, data.y)
    faults = resolved.profile.fault_model.at_rate(0.02)
    batch = SimulatedChips(faults, 0.02, 0, 3, start=4)
    assert [chip.id.index for chip in batch] == [4, 5, 6] and len(batch) == 3
    assert chip_accuracies(backend, batch) == chip_accuracies(backend, SimulatedChips(faults, 0.02, 0, 7))[4:]
