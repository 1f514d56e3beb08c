"""Sign-off reports. ``report.json`` is the one source of truth (built by
:func:`ftdeploy.verify.verify_onnx`); ``report.md``, ``report.xml`` (JUnit, for CI servers),
``report.html`` (:mod:`ftdeploy.report_html`, with figures) and the greppable verdict lines are
rendered from that dict by pure functions, so they can never disagree with it.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from .errors import VerifyError
from .files import replace_together

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
REPORT_XML = "report.xml"
REPORT_HTML = "report.html"


def to_json(report: dict) -> str:
    """Canonical JSON text of a report. ``allow_nan=False``: an undefined figure must be null
    with a note, never a NaN or Infinity that strict JSON readers reject."""
    return json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


# --- verdict lines --------------------------------------------------------------------------


def fmt_limit(value: float | None) -> str:
    """A limit to two decimals; ``inf`` where there is none."""
    return "inf" if value is None else f"{value:.2f}"


def check_line(check: dict) -> str:
    """``PASSED rate=0.005 max_acc_drop_pct: 1.20 <= 3.00`` or ``FAILED ...: 4.10 > 3.00``."""
    status = "PASSED" if check["passed"] else "FAILED"
    where = f"rate={check['rate']:g} " if check["rate"] is not None else ""
    relation = check["comparison"] if check["passed"] else {">=": "<", "<=": ">"}[check["comparison"]]
    value, limit = fmt_limit(check["value"]), fmt_limit(check["limit"])
    if value == limit and not check["passed"]:  # 3.004 > 3.00 must not print as "3.00 > 3.00"
        value = f"{check['value']:.6g}"
    note = f" ({check['note']})" if check.get("note") else ""
    return f"{status} {where}{check['name']}: {value} {relation} {limit}{note}"


def overall_line(report: dict) -> str:
    """The last line of a sign-off: ``PASSED sign-off: 2 of 2 limits met`` or ``FAILED ...``."""
    verdict = report["verdict"]
    return f"{'PASSED' if verdict['passed'] else 'FAILED'} sign-off: {verdict['summary']}"


def verdict_lines(report: dict) -> list[str]:
    """One line per check, then the overall verdict."""
    return [check_line(c) for c in report["verdict"]["checks"]] + [overall_line(report)]


# --- markdown -------------------------------------------------------------------------------


def fmt_pct(value: float | None) -> str:
    """A percentage to two decimals; ``n/a`` where it was not measured."""
    return "n/a" if value is None else f"{value:.2f}"


def _ci(ci: list[float] | None) -> str:
    return "n/a (1 chip)" if ci is None else f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def _ss(rate: dict) -> str:
    if rate["stability"] is not None:
        return f"{rate['stability']:.2f}"
    return "n/a" if rate["acc_drop"] is None else "+inf ¹"


def _yield(rate: dict) -> str:
    y = rate.get("yield")
    if not y:
        return "n/a"
    return f"{y['meeting']}/{y['chips']} = {y['yield_pct']:.1f} % (≥ {y['lower_bound_pct']:.1f})"


def _drop(rate: dict) -> str:
    return "n/a" if rate["acc_drop"] is None else f"{rate['acc_drop']:.2f}"


def render_markdown(report: dict) -> str:
    """report.md from report.json's dict: a pure function, no I/O, no clock."""
    model, profile, data, signoff, fig = report["model"], report["profile"], report["data"], report["signoff"], report["figures"]
    verdict = report["verdict"]
    lines = [
        f"# Sign-off: {Path(model['file']).name} — {'PASSED' if verdict['passed'] else 'FAILED'}",
        "",
        f"**{overall_line(report)}**",
        "",
        "## Inputs",
        "",
        "| input | |",
        "|---|---|",
        *model_rows(model),
        *profile_rows(profile),
        f"| data | {data['spec']}: {data['images']} of {data['val_images']} {'images (every image)' if data.get('all_images') else 'validation images'}"
        f"{' (stratified subset, seed ' + str(data['split_seed']) + ')' if data['images'] < data['val_images'] else ''}"
        f"{'; image set sha256 `' + data['fingerprint'][:16] + '…`' if data.get('fingerprint') else ''} |",
        f"| chips | {chips_per_rate(signoff)}, seed {signoff['seed']}, stuck-off : stuck-on = "
        f"{signoff['split'][0]:g} : {signoff['split'][1]:g} (a rate given as a pair: as given) |",
        f"| faults | {signoff.get('faults', 'stuck-at')} |",
        *reference_row(report),
        *chip_spec_row(signoff),
        f"| tool | ftdeploy {report['tool']['version']}, onnxruntime {report['tool']['onnxruntime']} |",
        "",
        "## Figures (accuracy, %)",
        "",
        f"- Acc_pretrain: **{fmt_pct(fig['acc_pretrain'])}** — {fig['acc_pretrain_source']}",
        f"- Acc_retrain: **{fmt_pct(fig['acc_retrain'])}** — "
        f"{fig.get('acc_retrain_source', 'fault-free ONNX model on the evaluation images')}",
        *([f"- Acc_defect — {fig['acc_defect_source']}"] if fig.get("acc_defect_source") else []),
        f"- Images: {image_set_text(data)}",
        "",
        "| P_sa | stuck-off | stuck-on | Acc_defect | std | 95 % CI | drop (pts) | SS | 5th pct chip | yield (lower bound) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in fig["rates"]:
        p5 = (r.get("percentiles") or {}).get("5")
        lines.append(f"| {r['rate']:g} | {r['stuck_off']:.3g} | {r['stuck_on']:.3g} | {fmt_pct(r['acc_defect_mean'])} | "
                     f"{fmt_pct(r['acc_defect_std'])} | {_ci(r['acc_defect_ci95'])} | {_drop(r)} | {_ss(r)} | {fmt_pct(p5)} | "
                     f"{_yield(r)} |")  # fmt: skip
    lines += [
        *_stopped_lines(fig["rates"]),
        "",
        "SS = Acc_retrain / (Acc_pretrain − Acc_defect). "
        "¹ When Acc_defect ≥ Acc_pretrain the score is undefined; it is reported as +inf "
        "(null in report.json) and any min_stability limit counts as met.",
        f"CI: {signoff['ci']}.",
        *([f"Yield: chips meeting the chip spec, with its exact one-sided lower bound (Clopper-Pearson) at "
           f"{100 * signoff['confidence']:g} % confidence."] if signoff.get("chip_spec") else []),
        "",
        "## Verdict",
        "",
        "```",
        *verdict_lines(report),
        "```",
        "",
    ]
    if verdict["checks"]:
        lines += ["| limit | P_sa | measured | limit | result | reason |", "|---|---|---|---|---|---|"]
        for c in verdict["checks"]:
            rate = "—" if c["rate"] is None else f"{c['rate']:g}"
            lines.append(f"| {c['name']} | {rate} | {fmt_limit(c['value'])} | {c['comparison']} {fmt_limit(c['limit'])} | "
                         f"{'PASSED' if c['passed'] else 'FAILED'} | {c['reason']} |")  # fmt: skip
        lines.append("")
    if report["notes"]:
        lines += ["## Notes", "", *[f"- {n}" for n in report["notes"]], ""]
    lines += _worst_chip_lines(fig["rates"])
    lines += ["## Per-chip accuracy (%)", ""]
    for r in fig["rates"]:
        lines.append(f"- P_sa {r['rate']:g}: " + ", ".join(f"{a:.2f}" for a in r["chip_accuracies"]))
    lines.append("")
    return "\n".join(lines)


def chips_per_rate(signoff: dict) -> str:
    """How many chips each rate measured: the fixed count, or the sequential plan's range."""
    seq = signoff.get("sequential") or {}
    if not seq.get("sequential"):
        return f"{signoff['chips']} per rate"
    return f"at most {signoff['chips']} per rate, drawn {seq['batch_chips']} at a time until every limit is decided"


def _stopped_lines(rates: list[dict]) -> list[str]:
    """Chips each rate drew and why it stopped there (sequential sign-off)."""
    stopped = [(r["rate"], r["stopped"]) for r in rates if r.get("stopped")]
    return ["", *[f"- P_sa {rate:g}: {s['chips']} of at most {s['cap']} chips — {s['reason']}" for rate, s in stopped]] if stopped else []


def image_set_text(data: dict) -> str:
    """Which images every figure was measured on."""
    fingerprint = f", image set sha256 {data['fingerprint'][:16]}…" if data.get("fingerprint") else ""
    return f"{data['images']} images of {data['spec']}{fingerprint}"


def model_rows(model: dict) -> list[str]:
    """The Inputs table's rows on the model file: its hashes, signature, network and mapping."""
    return [
        f"| model file | `{model['file']}` (sha256 `{model['sha256']}`) |",
        f"| content hash | `{model['content_sha256']}` |",
        *_signature_row(model),
        f"| model | {model['model']}, {model['layers']} crossbar layers, {model['cells']:,} cells; "
        f"method {model['method']} (schedule {schedule_text(model['schedule'])}) |",
        f"| mapping | {model['mapping']} |",
    ]


def profile_rows(profile: dict) -> list[str]:
    """The Inputs table's rows on the profile and its target, each with its file and hash."""
    return [
        f"| profile | {profile['name']} (`{profile['file']}`, sha256 `{profile['sha256'][:16]}…`){_bases(profile)} |",
        f"| target | {profile['target']} (`{profile['target_file']}`, sha256 `{profile['target_sha256'][:16]}…`) |",
    ]


def _signature_row(model: dict) -> list[str]:
    """Who signed the file and whether verify checked it (absent from reports made without the CLI)."""
    signature = model.get("signature")
    if signature is None:
        return []
    if signature["signer"] is None:
        return ["| signature | none (not signed) |"]
    how = "verified against the trusted keys" if signature["checked"] else "not checked (no --trust)"
    return [f"| signature | Ed25519 by key `{signature['signer']}`, {how} |"]


def reference_row(report: dict) -> list[str]:
    """The model-table row naming the reference Acc_pretrain was measured on, if one was given."""
    ref = report.get("reference")
    return [f"| reference | `{ref['file']}` (sha256 `{ref['sha256'][:16]}…`), Acc_pretrain measured on it |"] if ref else []


def chip_spec_row(signoff: dict) -> list[str]:
    """The model-table row stating the per-chip spec, if the profile sets one."""
    spec = signoff.get("chip_spec")
    if not spec:
        return []
    parts = [f"accuracy ≥ {spec['min_acc_pct']:.2f} %" if spec.get("min_acc_pct") is not None else None,
             f"Acc_pretrain − accuracy ≤ {spec['max_drop_pct']:.2f} pts" if spec.get("max_drop_pct") is not None else None]  # fmt: skip
    return [f"| chip spec | {' and '.join(p for p in parts if p)} |"]


def _worst_chip_lines(rates: list[dict]) -> list[str]:
    """The least accurate chips of each rate by id: `verify --chip RATE:INDEX` reruns one."""
    if not any(r.get("worst_chips") for r in rates):
        return []
    lines = ["## Worst chips", "", "Rerun one alone with `ftdeploy verify ... --chip RATE:INDEX`.", "",
             "| P_sa | seed | chip | accuracy (%) |", "|---|---|---|---|"]  # fmt: skip
    for r in rates:
        lines += [f"| {w['rate']:g} | {w['seed']} | {w['index']} | {w['acc']:.2f} |" for w in r.get("worst_chips") or []]
    return lines + [""]


def schedule_text(schedule: list[float] | None) -> str:
    """A training schedule as ``N epochs at r1 → r2 …`` (its distinct rates, in order)."""
    if not schedule:
        return "n/a"
    rates = list(dict.fromkeys(schedule))  # distinct, in order
    return f"{len(schedule)} epochs at " + " → ".join(f"{r:g}" for r in rates)


def _bases(profile: dict) -> str:
    """The profiles it extends, each with its hash: the report's figures depend on them too.
    Reports written before ``extends`` existed have no such field."""
    return "".join(f", extends `{b['file']}` (sha256 `{b['sha256'][:16]}…`)" for b in profile.get("extends", []))


# --- JUnit XML ----------------------------------------------------------------------------


def check_case_name(check: dict) -> str:
    """A limit's name as a test case: ``rate=0.005 max_acc_drop_pct`` (or the limit alone)."""
    return (f"rate={check['rate']:g} " if check["rate"] is not None else "") + check["name"]


def render_junit(report: dict) -> str:
    """report.xml from report.json's dict: JUnit XML, which CI servers and test dashboards read,
    one test case per limit, a failed one carrying its verdict line and reason; the figures it
    was judged on as suite properties. A pure function, no clock: the same report gives the
    same bytes."""
    checks = report["verdict"]["checks"]
    counts = {"tests": str(len(checks)), "failures": str(sum(not c["passed"] for c in checks)), "errors": "0"}
    suites = ET.Element("testsuites", name="ftdeploy sign-off", **counts)
    suite = ET.SubElement(suites, "testsuite", name=f"{Path(report['model']['file']).name} on {report['profile']['name']}",
                          skipped="0", **counts)  # fmt: skip
    properties = ET.SubElement(suite, "properties")
    fig = report["figures"]
    for name, value in (("model_sha256", report["model"]["sha256"]), ("profile", report["profile"]["name"]),
                        ("target", report["profile"]["target"]), ("chips", report["signoff"]["chips"]),
                        ("seed", report["signoff"]["seed"]), ("acc_pretrain", fmt_pct(fig["acc_pretrain"])),
                        ("acc_retrain", fmt_pct(fig["acc_retrain"])), ("acc_pretrain_source", fig.get("acc_pretrain_source")),
                        ("images", image_set_text(report["data"])), ("verdict", overall_line(report))):  # fmt: skip
        ET.SubElement(properties, "property", name=name, value=str(value))
    for check in checks:
        case = ET.SubElement(suite, "testcase", classname=f"ftdeploy.signoff.{report['profile']['name']}", name=check_case_name(check))
        if not check["passed"]:
            ET.SubElement(case, "failure", message=check_line(check), type="AcceptanceLimit").text = check["reason"]
    ET.SubElement(suite, "system-out").text = "\n".join(verdict_lines(report))
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


# --- writing --------------------------------------------------------------------------------


def write_report(report: dict, out_dir: str | Path, sign=None) -> tuple[Path, ...]:
    """Write out_dir/report.json, report.md, report.xml and report.html together
    (:func:`ftdeploy.files.replace_together`): all are rendered and written to temporary files
    before any is renamed into place, and a failure (a full disk, a read-only folder) leaves the
    previous report as it was and no temporary file. ``sign``: a :class:`ftdeploy.signing.SigningKey`; report.sig, its signature
    over all of them, is then written with them (an unsigned report removes a stale one).
    Returns their paths, in that order."""
    out_dir = Path(out_dir)
    texts = {out_dir / REPORT_JSON: to_json(report), **{out_dir / name: render(report) for name, render in _renderers(report).items()}}
    if sign is not None:
        from .signing import REPORT_SIG, report_signature

        texts[out_dir / REPORT_SIG] = report_signature({p.name: t.encode("utf-8") for p, t in texts.items()}, sign)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VerifyError(f"{out_dir}: cannot create report folder: {exc.strerror}") from None
    stale_sig = [] if sign is not None else [out_dir / "report.sig"]  # a previous signed report's: it would not match
    try:
        replace_together({path: text.encode("utf-8") for path, text in texts.items()}, remove=stale_sig)
    except OSError as exc:
        raise VerifyError(f"{out_dir}: cannot write report: {exc.strerror}") from None
    return tuple(texts)


def report_files(report: dict) -> list[str]:
    """The names of the files :func:`write_report` writes for this report (without a signature)."""
    return [REPORT_JSON, *_renderers(report)]


def _renderers(report: dict) -> dict:
    """The files rendered from report.json's dict, by name, for the report's kind: a sign-off's,
    or a lot's (measured chips, :mod:`ftdeploy.lot_report`)."""
    from .lot_report import is_lot_report, render_lot_junit, render_lot_markdown
    from .report_html import render_html, render_lot_html  # imports matplotlib: only when a report is written

    if is_lot_report(report):
        return {REPORT_MD: render_lot_markdown, REPORT_XML: render_lot_junit, REPORT_HTML: render_lot_html}
    return {REPORT_MD: render_markdown, REPORT_XML: render_junit, REPORT_HTML: render_html}
