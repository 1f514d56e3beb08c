"""Lot reports (:func:`ftdeploy.lot.verify_lot`): ``report.md``, ``report.xml`` (JUnit, one test
case per chip) and the greppable verdict lines, rendered from report.json's dict by pure
functions, as :mod:`ftdeploy.report` renders a sign-off's (the page, report.html:
:func:`ftdeploy.report_html.render_lot_html`). No I/O, no clock: the same report gives the same
bytes."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from .report import chip_spec_row, image_set_text, fmt_pct, reference_row, model_rows, profile_rows

LOT_SCHEMA = "ftdeploy-lot-report/1"


def is_lot_report(report: dict) -> bool:
    return report.get("schema") == LOT_SCHEMA


# --- verdict lines --------------------------------------------------------------------------------


#: The figures a lot may measure each chip with besides the judged one, in the order they are
#: taken: (suffix of the chip's ``accuracy_*`` / ``meets_spec_*`` and the lot's ``yield_*``, what it is).
EARLIER_COLUMNS = (("unprogrammed", "unprogrammed"), ("without_field", "without field faults"))


def columns(lot: dict) -> list[tuple[str, str]]:
    """Every figure of the lot's chips, in the order taken, the judged one (as shipped) last, its
    key suffix ""; as (key suffix, heading)."""
    programmed, field = lot.get("programmed", False), "field_rate" in lot
    headings = {"unprogrammed": "unprogrammed, measured faults" if field else "unprogrammed",
                "without_field": "programmed, measured faults" if programmed else "measured faults"}
    shipped = ("programmed + field faults" if programmed else "measured + field faults") if field else \
        ("programmed" if programmed else "")  # fmt: skip
    return [(key, headings[key]) for key, _ in EARLIER_COLUMNS if f"yield_{key}" in lot] + [("", shipped)]


def chip_line(chip: dict, threshold: float) -> str:
    """``PASSED chip D112: 81.20 >= 70.00`` or ``FAILED chip D113: 61.20 < 70.00``."""
    status, relation = ("PASSED", ">=") if chip["meets_spec"] else ("FAILED", "<")
    acc = f"{chip['accuracy']:.2f}"
    if acc == f"{threshold:.2f}" and not chip["meets_spec"]:  # 69.996 < 70.00 must not print as "70.00 < 70.00"
        acc = f"{chip['accuracy']:.6g}"
    line = f"{status} chip {chip['id']}: accuracy {acc} {relation} {threshold:.2f}"
    # verify --program: the same chip with the file's levels as given; field faults: without them
    earlier = [f"{label} {chip['accuracy_' + key]:.2f}, {'PASSED' if chip['meets_spec_' + key] else 'FAILED'}"
               for key, label in EARLIER_COLUMNS if f"accuracy_{key}" in chip]  # fmt: skip
    return line + (f" ({'; '.join(earlier)})" if earlier else "")


def lot_line(report: dict) -> str:
    """The last line: ``PASSED lot: 4 of 4 chips meet the chip spec; yield 100.0 % (lower bound 47.3 %)``."""
    verdict, y, lot = report["verdict"], report["lot"]["yield"], report["lot"]
    line = (f"{'PASSED' if verdict['passed'] else 'FAILED'} lot: {verdict['summary']}; yield {y['yield_pct']:.1f} % "
            f"({100 * y['confidence']:g} % lower bound {y['lower_bound_pct']:.1f} %)")  # fmt: skip
    if "field_rate" in lot:
        line += f" with field faults at {lot['field_rate']:g}"
    if lot.get("programmed"):
        line += "; programmed around each chip's map"
    for key, label in EARLIER_COLUMNS:
        before = lot.get(f"yield_{key}")
        if before is not None:
            line += f"; {label} yield {before['yield_pct']:.1f} % (lower bound {before['lower_bound_pct']:.1f} %)"
    return line


def lot_lines(report: dict) -> list[str]:
    """One line per chip, then the lot's verdict."""
    threshold = report["signoff"]["threshold_pct"]
    return [chip_line(c, threshold) for c in report["lot"]["chips"]] + [lot_line(report)]


# --- markdown -------------------------------------------------------------------------------------


def render_lot_markdown(report: dict) -> str:
    """report.md of a lot."""
    model, signoff, fig, lot = (report[k] for k in ("model", "signoff", "figures", "lot"))
    verdict, y = report["verdict"], lot["yield"]
    lines = [
        f"# Measured chips: {Path(model['file']).name} — {'PASSED' if verdict['passed'] else 'FAILED'}",
        "",
        f"**{lot_line(report)}**",
        "",
        "## Inputs",
        "",
        "| input | |",
        "|---|---|",
        *lot_input_rows(report),
        "",
        "## Figures (accuracy, %)",
        "",
        f"- Acc_pretrain: **{fmt_pct(fig['acc_pretrain'])}** — from {fig['acc_pretrain_source']}",
        f"- Acc_retrain: **{fmt_pct(fig['acc_retrain'])}** — {fig['acc_retrain_source']}",
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


def lot_input_rows(report: dict) -> list[str]:
    """The inputs of a lot as markdown table rows ``| input | value |`` (report.md's table; the
    HTML page renders the same rows)."""
    lot, signoff, place = report["lot"], report["signoff"], report["lot"]["placement"]
    return [
        *model_rows(report["model"]),
        f"| placement | {place['scheme']}: tiles 0-{place['tiles'] - 1} of {place['tile_rows']} x {place['tile_cols']} cells |",
        *profile_rows(report["profile"]),
        f"| data | {image_set_text(report['data'])} |",
        f"| fault maps | `{lot['fault_maps']}`: {len(lot['chips'])} chips |",
        f"| simulated on top | {signoff['faults']} |",
        *reference_row(report),
        *chip_spec_row(signoff),
        f"| tool | ftdeploy {report['tool']['version']}, onnxruntime {report['tool']['onnxruntime']} |",
    ]


def _unprogrammed_yield(lot: dict) -> list[str]:
    """The yield of every figure besides the judged one, and which figure is judged."""
    cols = columns(lot)
    if len(cols) == 1:
        return []
    lines = [f"- The yield above is the chips {cols[-1][1]} (as shipped); the same chips"]
    for key, label in cols[:-1]:
        y = lot[f"yield_{key}"]
        lines.append(f"  - {label}: {y['meeting']}/{y['chips']} = **{y['yield_pct']:.1f} %**, ≥ {y['lower_bound_pct']:.1f} %, "
                     f"≤ {y['upper_bound_pct']:.1f} %")  # fmt: skip
    return lines


def _chip_table(lot: dict) -> list[str]:
    """One row per chip: the judged accuracy and result, then every other figure taken (with
    --program the unprogrammed one; with field faults the one without them) and, with field
    faults, how many the chip got."""
    cols, field = columns(lot), "field_rate" in lot
    extra = "".join(f" {label} (%) | {label} result |" for _, label in cols[:-1]) + (" field faults (off / on) |" if field else "")
    rows = ["| chip | map | sha256 | stuck-off | stuck-on | in the model (off / on) | accuracy (%) | result |" + extra,
            "|---|---|---|---|---|---|---|---|" + "---|---|" * (len(cols) - 1) + ("---|" if field else "")]  # fmt: skip
    for c in lot["chips"]:
        row = (f"| {c['id']} | `{Path(c['file']).name}` | `{c['sha256'][:16]}…` | {c['stuck_off']:,} | {c['stuck_on']:,} | "
               f"{c['stuck_off_in_model']:,} / {c['stuck_on_in_model']:,} | {c['accuracy']:.2f} | "
               f"{'PASSED' if c['meets_spec'] else 'FAILED'} |")  # fmt: skip
        for key, _ in cols[:-1]:
            row += f" {c['accuracy_' + key]:.2f} | {'PASSED' if c['meets_spec_' + key] else 'FAILED'} |"
        if field:
            row += f" {c['field_stuck_off_in_model']:,} / {c['field_stuck_on_in_model']:,} |"
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
                        ("acc_pretrain", fmt_pct(report["figures"]["acc_pretrain"])), ("acc_retrain", fmt_pct(report["figures"]["acc_retrain"])),
                        ("yield_pct", f"{y['yield_pct']:.2f}"), ("yield_lower_bound_pct", f"{y['lower_bound_pct']:.2f}"),
                        ("verdict", lot_line(report))):  # fmt: skip
        ET.SubElement(properties, "property", name=name, value=str(value))
    for key, _ in EARLIER_COLUMNS:
        before = report["lot"].get(f"yield_{key}")
        if before is not None:
            ET.SubElement(properties, "property", name=f"yield_{key}_pct", value=f"{before['yield_pct']:.2f}")
    if "field_rate" in report["lot"]:
        ET.SubElement(properties, "property", name="field_rate", value=f"{report['lot']['field_rate']:g}")
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
