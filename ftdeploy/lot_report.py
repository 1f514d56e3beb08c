"""Lot reports (:func:`ftdeploy.lot.verify_lot`): ``report.md``, ``report.xml`` (JUnit, one test
case per chip) and the greppable verdict lines, rendered from report.json's dict by pure
functions, as :mod:`ftdeploy.report` renders a sign-off's. No I/O, no clock: the same report
gives the same bytes."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from .report import _chip_spec_row, _image_set, _pct, _reference_row, model_rows, profile_rows

LOT_SCHEMA = "ftdeploy-lot-report/1"


def is_lot_report(report: dict) -> bool:
    return report.get("schema") == LOT_SCHEMA


# --- verdict lines --------------------------------------------------------------------------------


def chip_line(chip: dict, threshold: float) -> str:
    """``PASSED chip D112: 81.20 >= 70.00`` or ``FAILED chip D113: 61.20 < 70.00``."""
    status, relation = ("PASSED", ">=") if chip["meets_spec"] else ("FAILED", "<")
    acc = f"{chip['accuracy']:.2f}"
    if acc == f"{threshold:.2f}" and not chip["meets_spec"]:  # 69.996 < 70.00 must not print as "70.00 < 70.00"
        acc = f"{chip['accuracy']:.6g}"
    line = f"{status} chip {chip['id']}: accuracy {acc} {relation} {threshold:.2f}"
    if "accuracy_unprogrammed" in chip:  # verify --program: the same chip with the file's levels as given
        line += f" (unprogrammed {chip['accuracy_unprogrammed']:.2f}, {'PASSED' if chip['meets_spec_unprogrammed'] else 'FAILED'})"
    return line


def lot_line(report: dict) -> str:
    """The last line: ``PASSED lot: 4 of 4 chips meet the chip spec; yield 100.0 % (lower bound 47.3 %)``."""
    verdict, y = report["verdict"], report["lot"]["yield"]
    line = (f"{'PASSED' if verdict['passed'] else 'FAILED'} lot: {verdict['summary']}; yield {y['yield_pct']:.1f} % "
            f"({100 * y['confidence']:g} % lower bound {y['lower_bound_pct']:.1f} %)")  # fmt: skip
    before = report["lot"].get("yield_unprogrammed")
    if before is not None:
        line += f"; programmed around each chip's map, unprogrammed yield {before['yield_pct']:.1f} % (lower bound {before['lower_bound_pct']:.1f} %)"
    return line


def lot_lines(report: dict) -> list[str]:
    """One line per chip, then the lot's verdict."""
    threshold = report["signoff"]["threshold_pct"]
    return [chip_line(c, threshold) for c in report["lot"]["chips"]] + [lot_line(report)]


# --- markdown -------------------------------------------------------------------------------------


def render_lot_markdown(report: dict) -> str:
    """report.md of a lot."""
    model, profile, data, signoff, fig, lot = (report[k] for k in ("model", "profile", "data", "signoff", "figures", "lot"))
    verdict, y, place = report["verdict"], lot["yield"], lot["placement"]
    lines = [
        f"# Measured chips: {Path(model['file']).name} — {'PASSED' if verdict['passed'] else 'FAILED'}",
        "",
        f"**{lot_line(report)}**",
        "",
        "## Inputs",
        "",
        "| input | |",
        "|---|---|",
        *model_rows(model),
        f"| placement | {place['scheme']}: tiles 0-{place['tiles'] - 1} of {place['tile_rows']} x {place['tile_cols']} cells |",
        *profile_rows(profile),
        f"| data | {_image_set(data)} |",
        f"| fault maps | `{lot['fault_maps']}`: {len(lot['chips'])} chips |",
        f"| simulated on top | {signoff['faults']} |",
        *_reference_row(report),
        *_chip_spec_row(signoff),
        f"| tool | ftdeploy {report['tool']['version']}, onnxruntime {report['tool']['onnxruntime']} |",
        "",
        "## Figures (accuracy, %)",
        "",
        f"- Acc_pretrain: **{_pct(fig['acc_pretrain'])}** — from {fig['acc_pretrain_source']}",
        f"- Acc_retrain: **{_pct(fig['acc_retrain'])}** — {fig['acc_retrain_source']}",
        f"- Chip spec: {signoff['chip_spec_description']}: a chip meets it with accuracy ≥ **{signoff['threshold_pct']:.2f}**",
        f"- Yield: {y['meeting']}/{y['chips']} = **{y['yield_pct']:.1f} %**, exact one-sided bounds (Clopper-Pearson) at "
        f"{100 * y['confidence']:g} % confidence: ≥ {y['lower_bound_pct']:.1f} %, ≤ {y['upper_bound_pct']:.1f} %",
        *_unprogrammed_yield(lot),
        "",
        "## Chips",
        "",
        *_chip_table(lot),
    ]
    lines += ["", "## Verdict", "", "```", *lot_lines(report), "```", ""]
    if report["notes"]:
        lines += ["## Notes", "", *[f"- {n}" for n in report["notes"]], ""]
    return "\n".join(lines)


def _unprogrammed_yield(lot: dict) -> list[str]:
    before = lot.get("yield_unprogrammed")
    if before is None:
        return []
    return [f"- Programmed around each chip's map; unprogrammed (the file's levels as given): {before['meeting']}/{before['chips']} = "
            f"**{before['yield_pct']:.1f} %**, ≥ {before['lower_bound_pct']:.1f} %, ≤ {before['upper_bound_pct']:.1f} %"]  # fmt: skip


def _chip_table(lot: dict) -> list[str]:
    """One row per chip; with --program, the unprogrammed accuracy and result beside the programmed ones."""
    programmed = lot.get("programmed", False)
    extra = " unprogrammed (%) | unprogrammed result |" if programmed else ""
    rows = ["| chip | map | sha256 | stuck-off | stuck-on | in the model (off / on) | accuracy (%) | result |" + extra,
            "|---|---|---|---|---|---|---|---|" + ("---|---|" if programmed else "")]  # fmt: skip
    for c in lot["chips"]:
        row = (f"| {c['id']} | `{Path(c['file']).name}` | `{c['sha256'][:16]}…` | {c['stuck_off']:,} | {c['stuck_on']:,} | "
               f"{c['stuck_off_in_model']:,} / {c['stuck_on_in_model']:,} | {c['accuracy']:.2f} | "
               f"{'PASSED' if c['meets_spec'] else 'FAILED'} |")  # fmt: skip
        if programmed:
            row += f" {c['accuracy_unprogrammed']:.2f} | {'PASSED' if c['meets_spec_unprogrammed'] else 'FAILED'} |"
        rows.append(row)
    return rows


# --- JUnit XML ------------------------------------------------------------------------------------


def render_lot_junit(report: dict) -> str:
    """report.xml of a lot: one test case per chip, a chip that fails the spec a failed case
    carrying its accuracy against the spec; the lot's figures as suite properties."""
    chips, signoff, y = report["lot"]["chips"], report["signoff"], report["lot"]["yield"]
    counts = {"tests": str(len(chips)), "failures": str(sum(not c["meets_spec"] for c in chips)), "errors": "0"}
    suites = ET.Element("testsuites", name="ftdeploy measured chips", **counts)
    suite = ET.SubElement(suites, "testsuite", name=f"{Path(report['model']['file']).name} on {report['profile']['name']}: "
                          f"{len(chips)} measured chips", skipped="0", **counts)  # fmt: skip
    properties = ET.SubElement(suite, "properties")
    for name, value in (("model_sha256", report["model"]["sha256"]), ("profile", report["profile"]["name"]),
                        ("target", report["profile"]["target"]), ("fault_maps", report["lot"]["fault_maps"]),
                        ("chip_spec", signoff["chip_spec_description"]), ("threshold_pct", f"{signoff['threshold_pct']:.2f}"),
                        ("acc_pretrain", _pct(report["figures"]["acc_pretrain"])), ("acc_retrain", _pct(report["figures"]["acc_retrain"])),
                        ("yield_pct", f"{y['yield_pct']:.2f}"), ("yield_lower_bound_pct", f"{y['lower_bound_pct']:.2f}"),
                        ("verdict", lot_line(report))):  # fmt: skip
        ET.SubElement(properties, "property", name=name, value=str(value))
    before = report["lot"].get("yield_unprogrammed")
    if before is not None:
        ET.SubElement(properties, "property", name="yield_unprogrammed_pct", value=f"{before['yield_pct']:.2f}")
    for chip in chips:
        case = ET.SubElement(suite, "testcase", classname=f"ftdeploy.chips.{report['profile']['name']}", name=chip["id"])
        if not chip["meets_spec"]:
            ET.SubElement(case, "failure", message=chip_line(chip, signoff["threshold_pct"]), type="ChipSpec").text = (
                f"accuracy {chip['accuracy']:.2f} % is below {signoff['threshold_pct']:.2f} % ({signoff['chip_spec_description']}); "
                f"fault map {chip['file']} (sha256 {chip['sha256']}): {chip['stuck_off']} stuck-off, {chip['stuck_on']} stuck-on cells"
            )
    ET.SubElement(suite, "system-out").text = "\n".join(lot_lines(report))
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"
