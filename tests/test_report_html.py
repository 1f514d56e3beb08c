"""report.html: one self-contained page rendered from report.json's dict. It parses, fetches
nothing, embeds its figures, names every limit and the image set it was measured on, escapes
what users named, gives the same bytes for the same report, renders the optional fields of newer
reports (chip spec, yield, percentiles, worst chips, early stopping) and reports without them,
and opens in a real browser without errors."""

from __future__ import annotations

import copy
import json
import math
import random
import shutil
import subprocess

import pytest

from ftdeploy.report import REPORT_HTML, check_line, overall_line, render_markdown, write_report
from ftdeploy.report_html import chip_threshold, image_set_caption, limit_accuracies, render_html

from conftest import Page

# The verify tests' fixtures: a quick model exported and signed off on 3 chips, 200 images.
from test_verify import bundle, ckpt, folder, onnx_path, profiles, reference_path, report, resolved  # noqa: F401

FINGERPRINT = "ab12cd34ef56" * 5 + "abcd"


def synthetic_report(rates=(0.0, 0.005, 0.01, 0.02, 0.05), chips: int = 30, new_fields: bool = True, seed: int = 0) -> dict:
    """A report as verify_onnx writes it, without running a chip: random per-chip accuracies
    falling with the rate, one check of every kind (a failing one among them), and with
    ``new_fields`` the fields newer reports carry: confidence, chip spec, yield, percentiles,
    worst chips, early stopping."""
    rng = random.Random(seed)
    acc_pretrain, acc_retrain = 90.0, 89.0
    rows = []
    for k, rate in enumerate(rates):
        n = chips - chips // 3 if k == 1 and new_fields else chips  # one rate stopped early
        accs = [round(max(0.0, min(100.0, acc_retrain - 400 * rate + rng.gauss(0, 1 + 60 * rate))), 2) for _ in range(n)]
        mean = sum(accs) / n
        std = math.sqrt(sum((a - mean) ** 2 for a in accs) / (n - 1)) if n > 1 else None
        half = 2.0 * std / math.sqrt(n) if std is not None else None
        drop = acc_pretrain - mean
        row = {"rate": rate, "stuck_off": rate * 0.5, "stuck_on": rate * 0.5, "chips": n, "acc_defect_mean": mean,
               "acc_defect_std": std, "acc_defect_ci95": None if half is None else [mean - half, mean + half],
               "acc_drop": drop, "stability": acc_retrain / drop if drop > 0 else None,
               "stability_note": None if drop > 0 else "no degradation: Acc_defect >= Acc_pretrain", "chip_accuracies": accs}  # fmt: skip
        if new_fields:
            meeting = sum(a >= 80.0 for a in accs)
            row["yield"] = {"threshold_pct": 80.0, "spec": "accuracy >= 80.00 %", "meeting": meeting, "chips": n,
                            "yield_pct": 100.0 * meeting / n, "lower_bound_pct": max(0.0, 100.0 * meeting / n - 12.0), "confidence": 0.95}  # fmt: skip
            ordered = sorted(accs)
            row["percentiles"] = {"5": ordered[int(0.05 * (n - 1))], "50": ordered[(n - 1) // 2]}
            row["worst_chips"] = [{"rate": rate, "seed": 0, "index": accs.index(a), "acc": a} for a in ordered[:3]]
            row["stopped"] = {"chips": n, "cap": chips, "reason": f"every limit decided at 95 % after {n} chips"} if k == 1 else None
        rows.append(row)
    by_rate = {r["rate"]: r for r in rows}
    mid, last = rates[len(rates) // 2], rates[-1]
    checks = [
        _check("min_acc_retrain_pct", None, acc_retrain, 50.0, ">="),
        _check("max_acc_drop_pct", mid, by_rate[mid]["acc_drop"], 10.0, "<="),
        _check("min_acc_defect_pct", mid, by_rate[mid]["acc_defect_mean"], 99.0, ">="),  # fails
        _check("min_stability", last, by_rate[last]["stability"], 2.0, ">="),
    ]
    if chips > 1:  # a CI limit needs 2 chips or more
        checks.insert(3, _check("min_acc_defect_lower_ci_pct", mid, by_rate[mid]["acc_defect_ci95"][0], 50.0, ">="))
    if new_fields:
        checks += [_check("min_yield_pct", mid, by_rate[mid]["yield"]["lower_bound_pct"], 50.0, ">="),
                   _check("min_percentile_acc_pct", mid, by_rate[mid]["percentiles"]["5"], 60.0, ">=")]  # fmt: skip
    failed = sum(not c["passed"] for c in checks)
    signoff = {"seed": 0, "chips": chips, "rates": list(rates), "split": [0.5, 0.5], "faults": "stuck-at: P_sa",
               "ci": "95 % two-sided Student t"}  # fmt: skip
    if new_fields:
        signoff.update(confidence=0.95, chip_spec={"min_acc_pct": 80.0, "max_drop_pct": None})
    return {
        "schema": "ftdeploy-report/1",
        "tool": {"name": "ftdeploy", "version": "0.1.0", "onnxruntime": "1.20.0"},
        "model": {"file": "runs/release.onnx", "sha256": "0" * 64, "content_sha256": "1" * 64, "format": "ftdeploy-onnx/1",
                  "exported_by": "0.1.0", "model": "democnn", "method": "progressive", "schedule": [0.01, 0.01, 0.02],
                  "sparsity": None, "equalization": None, "training": None, "mapping": "differential pair, 8-bit",
                  "layers": 4, "cells": 12345},  # fmt: skip
        "profile": {"name": "synthetic", "file": "profiles/synthetic.yaml", "sha256": "2" * 64, "extends": [],
                    "target": "paper-diff8", "target_file": "targets/paper-diff8.yaml", "target_sha256": "3" * 64, "resolved": {}},  # fmt: skip
        "data": {"spec": "embedded", "val_split": 10, "split_seed": 0, "images": 500, "val_images": 1000, "max_images": 500,
                 "all_images": False, "fingerprint": FINGERPRINT, "description": "demo", "training_record": None},  # fmt: skip
        "signoff": signoff,
        "figures": {"acc_pretrain": acc_pretrain, "acc_pretrain_source": "file metadata", "acc_pretrain_same_images": None,
                    "acc_retrain": acc_retrain, "rates": rows},  # fmt: skip
        "verdict": {"passed": not failed, "checks": checks,
                    "summary": f"{failed} of {len(checks)} limits failed" if failed else f"{len(checks)} of {len(checks)} limits met"},  # fmt: skip
        "notes": ["A note with <angle brackets> & an ampersand."],
    }


def _check(name, rate, value, limit, comparison) -> dict:
    passed = value is None or (value >= limit if comparison == ">=" else value <= limit)
    return {"name": name, "rate": rate, "value": value, "limit": limit, "comparison": comparison, "passed": passed,
            "reason": f"{name} {'met' if passed else 'not met'}", "note": None}  # fmt: skip


@pytest.fixture(scope="module")
def synthetic() -> dict:
    return synthetic_report()


@pytest.fixture(scope="module")
def synthetic_page(synthetic) -> str:
    return render_html(synthetic)


# --- a well-formed, self-contained page -------------------------------------------------------------


def test_page_parses_and_every_element_is_closed(synthetic_page):
    page = Page(synthetic_page)
    assert synthetic_page.startswith("<!DOCTYPE html>")
    assert page.mismatched == [] and page.open == [], (page.mismatched, page.open[-5:])
    assert [t for t, _ in page.tags].count("svg") == 2


def test_page_fetches_nothing_and_runs_no_script(synthetic_page):
    page = Page(synthetic_page)
    assert not [t for t, _ in page.tags if t in ("script", "iframe", "object", "embed", "link")]
    for tag, attrs in page.tags:
        for name, value in attrs.items():
            if name in ("src", "href", "xlink:href", "action", "poster", "data"):
                assert not value.startswith(("http:", "https:", "//")), (tag, name, value)
            if name.startswith("xmlns"):
                assert value in ("http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"), (tag, name, value)
            assert not name.startswith("on"), (tag, name)  # no event handlers either
    # A URL anywhere else (CSS url(), a stray link) would be fetched or followed: only the namespaces.
    assert set(_urls(synthetic_page)) <= {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}


def _urls(text: str) -> list[str]:
    import re

    return re.findall(r"https?://[^\s\"'<>)]+", text)


def test_figures_are_embedded_with_ids_unique_on_the_page(synthetic_page):
    page = Page(synthetic_page)
    assert synthetic_page.count("<svg") + synthetic_page.count("data:image") >= 2
    ids = [attrs["id"] for _, attrs in page.tags if "id" in attrs]
    assert ids and len(ids) == len(set(ids)), "two figures on one page must not share an id"
    targets = {ref[1:] for _, attrs in page.tags for key, ref in attrs.items() if key.endswith("href") and ref.startswith("#")}
    assert targets <= set(ids), sorted(targets - set(ids))[:5]  # every internal reference resolves


def test_each_figure_is_well_formed_svg(synthetic_page):
    import re
    import xml.etree.ElementTree as ET

    svgs = re.findall(r"<svg\b.*?</svg>", synthetic_page, flags=re.DOTALL)
    assert len(svgs) == 2
    for svg in svgs:
        root = ET.fromstring(svg)
        assert root.tag == "{http://www.w3.org/2000/svg}svg" and root.get("viewBox")


# --- what the page says -----------------------------------------------------------------------


def test_page_names_the_verdict_every_limit_and_the_image_set(synthetic, synthetic_page):
    text = Page(synthetic_page).all_text()
    assert "FAILED" in text and overall_line(synthetic) in text
    for check in synthetic["verdict"]["checks"]:
        assert check_line(check) in text, check_line(check)
        assert check["name"] in text
    rows = Page(synthetic_page).table("limit")[1:]
    assert [(r[0], r[1]) for r in rows] == [(c["name"], "—" if c["rate"] is None else f"{c['rate']:g}")
                                            for c in synthetic["verdict"]["checks"]]  # fmt: skip
    assert [r[4] for r in rows] == ["PASSED" if c["passed"] else "FAILED" for c in synthetic["verdict"]["checks"]]
    assert FINGERPRINT[:16] in text and "500 images" in text and "embedded" in text


def test_every_figure_caption_names_its_image_set_and_chips(synthetic, synthetic_page):
    import re

    captions = re.findall(r"<figcaption>(.*?)</figcaption>", synthetic_page, flags=re.DOTALL)
    assert len(captions) == 2
    caption = image_set_caption(synthetic)
    assert caption == f"Image set: embedded, 500 images, sha256 {FINGERPRINT[:16]}…; 20 to 30 chips per rate, chip seed 0."
    for c in captions:
        assert Page(c).all_text().endswith(caption)


def test_the_new_fields_are_rendered(synthetic, synthetic_page):
    text = Page(synthetic_page).all_text()
    stopped = synthetic["figures"]["rates"][1]
    assert "every limit decided at 95 % after 20 chips" in text and "after 20 of at most 30 chips" in text
    assert "every chip: accuracy ≥ 80.00 %" in text and "95 % (yield bounds and early stopping)" in text
    for r in synthetic["figures"]["rates"]:
        y = r["yield"]
        assert f"{y['yield_pct']:.2f} % ({y['meeting']} of {y['chips']} chips meet accuracy >= 80.00 %)" in text
        assert f"≥ {y['lower_bound_pct']:.2f} % at 95 % confidence" in text
        assert f"p5 {r['percentiles']['5']:.2f}, p50 {r['percentiles']['50']:.2f}" in text
    worst = stopped["worst_chips"][0]
    assert "Worst chips" in text and f"{worst['acc']:.2f}" in text
    # Figure 2 writes each rate's yield above it and marks the chip spec and the worst chips.
    fig2 = synthetic_page.split("<svg", 3)[2]
    assert f"yield {stopped['yield']['yield_pct']:.2f} %" in fig2 and "chip spec" in fig2 and "worst chips" in fig2 and "p50" in fig2


def test_a_report_without_the_new_fields_renders_without_them():
    old = synthetic_report(new_fields=False)
    text = Page(render_html(old)).all_text()
    assert "yield" not in text and "Worst chips" not in text and "stopped early" not in text and "chip spec" not in text
    assert overall_line(old) in text


def test_limits_are_drawn_as_the_accuracies_they_ask_for(synthetic):
    marks = {m["name"]: m for m in limit_accuracies(synthetic)}
    fig, checks = synthetic["figures"], {c["name"]: c for c in synthetic["verdict"]["checks"]}
    assert marks["min_acc_defect_pct"]["acc"] == 99.0 and not marks["min_acc_defect_pct"]["passed"]
    assert marks["min_acc_defect_lower_ci_pct"]["acc"] == 50.0
    assert marks["max_acc_drop_pct"]["acc"] == pytest.approx(fig["acc_pretrain"] - 10.0)
    # SS >= S  <=>  Acc_defect >= Acc_pretrain - Acc_retrain / S
    assert marks["min_stability"]["acc"] == pytest.approx(fig["acc_pretrain"] - fig["acc_retrain"] / 2.0)
    assert marks["min_yield_pct"]["acc"] == 80.0 and marks["min_percentile_acc_pct"]["acc"] == 60.0
    assert "min_acc_retrain_pct" not in marks, "fault-free: a line in the figure, not a rate's marker"
    assert {m["rate"] for m in marks.values()} <= set(synthetic["signoff"]["rates"])
    assert checks.keys() - marks.keys() == {"min_acc_retrain_pct"}


def test_a_stability_minimum_of_zero_asks_for_no_accuracy(synthetic):
    zero = copy.deepcopy(synthetic)
    next(c for c in zero["verdict"]["checks"] if c["name"] == "min_stability")["limit"] = 0.0
    assert "min_stability" not in {m["name"] for m in limit_accuracies(zero)}
    render_html(zero)


def test_chip_threshold_follows_the_yield_then_the_chip_spec(synthetic):
    rate = copy.deepcopy(synthetic["figures"]["rates"][0])
    assert chip_threshold(synthetic, rate) == 80.0
    spec = copy.deepcopy(synthetic)
    rate["yield"] = None
    spec["signoff"]["chip_spec"] = {"min_acc_pct": None, "max_drop_pct": 5.0}
    assert chip_threshold(spec, rate) == pytest.approx(85.0)  # Acc_pretrain 90 - 5
    spec["signoff"]["chip_spec"] = {"min_acc_pct": 87.0, "max_drop_pct": 5.0}
    assert chip_threshold(spec, rate) == 87.0, "both hold: the stricter"
    spec["signoff"]["chip_spec"] = None
    assert chip_threshold(spec, rate) is None


# --- pure and safe ------------------------------------------------------------------------------


def test_same_report_same_bytes(synthetic, synthetic_page):
    assert render_html(copy.deepcopy(synthetic)) == synthetic_page
    assert render_html(json.loads(json.dumps(synthetic))) == synthetic_page, "from report.json as read back"


def test_text_from_users_is_escaped(synthetic):
    hostile = copy.deepcopy(synthetic)
    hostile["profile"]["name"] = "<script>alert(1)</script>"
    hostile["model"]["file"] = 'runs/"><img src=x onerror=alert(2)>.onnx'
    hostile["data"]["spec"] = "imagefolder:<b>mine</b>"
    page = render_html(hostile)
    assert "<script>" not in page and "<img" not in page and "<b>mine" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert not [t for t, _ in Page(page).tags if t in ("script", "img")]


def test_one_chip_per_rate_has_no_ci_and_still_renders():
    one = synthetic_report(chips=1, new_fields=False)
    for r in one["figures"]["rates"]:
        assert r["acc_defect_ci95"] is None
    text = Page(render_html(one)).all_text()
    assert "n/a (1 chip)" in text and "1 chip per rate" in text


@pytest.mark.parametrize("rates", [(0.0,), (0.01,), (0.01, 0.05), (0.0, 0.02)], ids=str)
def test_any_rate_axis_renders(rates):
    """One rate, positive rates only (log axis), and zero among them (symlog)."""
    page = render_html(synthetic_report(rates=rates, chips=4))
    assert page.count("<svg") == 2


# --- from a real sign-off -------------------------------------------------------------------------


def test_written_with_the_other_files_from_a_real_sign_off(report, tmp_path):  # noqa: F811  (the fixture)
    """A real verify run (3 chips, 200 images) with a yield and percentiles added at one rate."""
    real = copy.deepcopy(report)
    rate = real["figures"]["rates"][1]
    accs = rate["chip_accuracies"]
    rate["yield"] = {"threshold_pct": 10.0, "spec": "accuracy >= 10.00 %", "meeting": len(accs), "chips": len(accs),
                     "yield_pct": 100.0, "lower_bound_pct": 29.24, "confidence": 0.95}  # fmt: skip
    rate["percentiles"] = {"50": sorted(accs)[1]}
    paths = write_report(real, tmp_path)
    assert [p.name for p in paths] == ["report.json", "report.md", "report.xml", REPORT_HTML]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report.json", "report.md", "report.xml"]
    page = (tmp_path / REPORT_HTML).read_text(encoding="utf-8")
    assert page == render_html(json.loads((tmp_path / "report.json").read_text()))
    text = Page(page).all_text()
    assert overall_line(real) in text and real["data"]["fingerprint"][:16] in text and "200 images" in text
    for check in real["verdict"]["checks"]:
        assert check_line(check) in text
    assert "29.24 % at 95 % confidence" in text
    assert render_markdown(real) == (tmp_path / "report.md").read_text(), "report.md ignores the fields it does not know"


# --- in a browser -----------------------------------------------------------------------------------


def _browser() -> str | None:
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


@pytest.mark.skipif(_browser() is None, reason="no headless Chromium installed (apt-get install chromium) to open the page")
def test_page_opens_in_a_browser_without_errors(synthetic_page, tmp_path):
    page = tmp_path / "report.html"
    page.write_text(synthetic_page, encoding="utf-8")
    proc = subprocess.run([_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
                           "--dump-dom", page.as_uri()], check=False, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    dom = proc.stdout
    assert "FAILED sign-off" in dom and dom.count("<svg") == 2 and "Figure 2." in dom
    errors = [line for line in proc.stderr.splitlines() if "Uncaught" in line or "CONSOLE" in line]
    assert errors == [], errors
