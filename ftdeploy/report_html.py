"""report.html: a report as one self-contained page for people. A sign-off's: the verdict, the
inputs, two figures (Acc_defect against the fault rate with the acceptance limits drawn where they
bound an accuracy, and every chip's accuracy at each rate) and the tables of report.md. A lot's
(measured chips, :func:`render_lot_html`): the lot's verdict and yield, every chip's accuracy
against the chip spec in each figure the lot measured, and the chip table.

Rendered from report.json's dict by a pure function, like report.md: no clock, no network, no
scripts; the figures are inline SVG and the styles inline CSS, so the one file can be mailed,
archived or attached to a CI run and opens anywhere. The same report gives the same bytes.
matplotlib is imported only when a page is rendered, so commands that write no report never
pay for it.

Fields that newer reports carry (a chip-level spec and its yield, percentiles, the worst chips,
early stopping, the confidence level) are shown when present; reports without them render too.
"""

from __future__ import annotations

import html
import io
import itertools
import math
import re
from pathlib import Path

from .lot_report import columns, lot_input_rows, lot_line, lot_lines
from .report import chips_per_rate, fmt_limit, fmt_pct, image_set_text, overall_line, schedule_text, verdict_lines

# --- small text helpers -------------------------------------------------------------------------


def _e(value) -> str:
    """Text from a report, escaped: file, profile and data names come from users."""
    return html.escape(str(value), quote=True)


def _rate(rate: float | None) -> str:
    return "—" if rate is None else f"{rate:g}"


def _status(passed: bool) -> str:
    return f'<span class="{"pass" if passed else "fail"}">{"PASSED" if passed else "FAILED"}</span>'


def _chip_counts(report: dict) -> list[int]:
    """Chips measured at each rate (a rate may stop early, so the counts can differ)."""
    return [len(r["chip_accuracies"]) for r in report["figures"]["rates"]]


def image_set_caption(report: dict) -> str:
    """What every figure was measured on, as plain text: the image set (spec, image count,
    fingerprint prefix) and the chips, so a figure copied out of the page still says which
    sign-off it belongs to."""
    data, signoff = report["data"], report["signoff"]
    fingerprint = data.get("fingerprint")
    counts = sorted(set(_chip_counts(report))) or [signoff["chips"]]
    chips = f"{counts[0]} chip{'s' * (counts[0] != 1)}" if len(counts) == 1 else f"{counts[0]} to {counts[-1]} chips"
    return (f"Image set: {data['spec']}, {data['images']} images"
            f"{f', sha256 {fingerprint[:16]}…' if fingerprint else ''}; "
            f"{chips} per rate, chip seed {signoff['seed']}.")  # fmt: skip


# --- the acceptance limits as accuracies -------------------------------------------------------

#: How each kind of limit is drawn in figure 1: legend label and marker. A minimum points up.
_LIMIT_STYLE = {
    "min_acc_defect_pct": ("min_acc_defect_pct (mean ≥)", "^"),
    "min_acc_defect_lower_ci_pct": ("min_acc_defect_lower_ci_pct (CI low ≥)", "2"),
    "max_acc_drop_pct": ("max_acc_drop_pct (mean ≥ Acc_pretrain − limit)", "v"),
    "min_stability": ("min_stability S (mean ≥ Acc_pretrain − Acc_retrain/S)", "s"),
    "min_percentile_acc_pct": ("min_percentile_acc_pct (percentile ≥)", "D"),
    "min_yield_pct": ("chip spec of min_yield_pct (each chip ≥)", "_"),
}


def chip_threshold(report: dict, rate: dict) -> float | None:
    """The accuracy (%) one chip must reach at this rate to meet the chip-level spec: the yield's
    own threshold when the rate reports one, else the profile's chip spec (a minimum accuracy,
    a maximum drop from Acc_pretrain, or the stricter of both); None without a spec."""
    measured = rate.get("yield") or {}
    if measured.get("threshold_pct") is not None:
        return measured["threshold_pct"]
    spec = report["signoff"].get("chip_spec") or {}
    acc_pretrain = report["figures"].get("acc_pretrain")
    bounds = [spec.get("min_acc_pct")]
    if spec.get("max_drop_pct") is not None and acc_pretrain is not None:
        bounds.append(acc_pretrain - spec["max_drop_pct"])
    bounds = [b for b in bounds if b is not None]
    return max(bounds) if bounds else None


def limit_accuracies(report: dict) -> list[dict]:
    """Every rated acceptance limit that bounds an accuracy, as that accuracy (%) at its rate:
    ``{"name", "rate", "acc", "passed"}``. A drop limit L asks for Acc_pretrain − L; a stability
    minimum S for Acc_pretrain − Acc_retrain / S (SS ≥ S solved for Acc_defect; S ≤ 0 asks for
    nothing); a yield minimum for its chip spec's threshold. Limits that bound no accuracy at a
    rate (the fault-free Acc_retrain minimum, or a kind this page does not know) are left out:
    the verdict table lists them all."""
    fig = report["figures"]
    acc_pretrain, acc_retrain = fig.get("acc_pretrain"), fig.get("acc_retrain")
    by_rate = {r["rate"]: r for r in fig["rates"]}
    marks = []
    for check in report["verdict"]["checks"]:
        name, rate, limit = check["name"], check["rate"], check["limit"]
        if rate is None or limit is None:
            continue
        acc = None
        if name in ("min_acc_defect_pct", "min_acc_defect_lower_ci_pct", "min_percentile_acc_pct"):
            acc = limit
        elif name == "max_acc_drop_pct" and acc_pretrain is not None:
            acc = acc_pretrain - limit
        elif name == "min_stability" and acc_pretrain is not None and acc_retrain is not None and limit > 0:
            acc = acc_pretrain - acc_retrain / limit
        elif name == "min_yield_pct" and rate in by_rate:
            acc = chip_threshold(report, by_rate[rate])
        if acc is not None:
            marks.append({"name": name, "rate": rate, "acc": acc, "passed": check["passed"]})
    return marks


# --- figures ------------------------------------------------------------------------------------

_RC = {"svg.hashsalt": "ftdeploy", "svg.fonttype": "none", "font.size": 9}
_PASS_COLOUR, _FAIL_COLOUR, _SPEC_COLOUR = "#222222", "#cf222e", "#8250df"
_CHIP_COLOUR, _MEAN_COLOUR = "#6e7781", "#0969da"


def _chip_size(n: int) -> float:
    """Marker area of one chip's point: larger when few chips, so three chips are still seen."""
    return 22.0 if n <= 10 else 14.0 if n <= 50 else 9.0


def _jitter(n: int) -> list[float]:
    """Offsets in [-0.5, 0.5) for n points, spread evenly without a random generator (a golden
    ratio sequence), so the same report draws the same picture."""
    return [((i * 0.6180339887) % 1.0) - 0.5 for i in range(n)]


def _set_rate_axis(ax, rates: list[float]) -> None:
    """Rates span decades: a log axis when all are positive, symlog when 0 is among them (linear
    up to the smallest positive rate), linear for a single rate."""
    from matplotlib.ticker import NullLocator

    if not rates:
        return
    positive = sorted(r for r in rates if r > 0)
    if len(set(rates)) == 1:
        pad = max(abs(rates[0]), 0.01)
        ax.set_xlim(rates[0] - pad, rates[0] + pad)
    elif len(positive) == len(rates):
        ax.set_xscale("log")
    else:
        ax.set_xscale("symlog", linthresh=positive[0] if positive else 1.0, linscale=0.5)
    ax.set_xticks(rates, [f"{r:g}" for r in rates])
    ax.xaxis.set_minor_locator(NullLocator())  # only the rates measured are ticked


def _jittered_rates(ax, rate: float, n: int, rates: list[float]) -> list[float]:
    """n x positions around ``rate``, jittered in the axis' own (log, symlog or linear) space by
    at most a sixth of the narrowest gap between rates either side, so the chips of one rate never
    reach the next."""
    import numpy as np

    scale = ax.xaxis.get_transform()
    scaled = sorted(scale.transform(np.asarray(rates, dtype=float).reshape(-1, 1))[:, 0])
    gaps = [b - a for a, b in itertools.pairwise(scaled) if b > a]
    width = min(gaps) / 3 if gaps else 0.3 * (ax.get_xlim()[1] - ax.get_xlim()[0])
    at = scale.transform([[rate]])[0, 0]
    points = np.array([[at + width * j] for j in _jitter(n)]) if n else np.zeros((0, 1))
    return list(scale.inverted().transform(points)[:, 0])


def plot_acc_defect(report: dict) -> str:
    """Figure 1 as inline SVG: Acc_defect against the rate (mean, 95 % CI band, every chip),
    Acc_retrain and Acc_pretrain as lines, and each acceptance limit as the accuracy it asks for."""
    import matplotlib
    import matplotlib.style
    from matplotlib.figure import Figure

    fig_data = report["figures"]
    rows = fig_data["rates"]
    rates = [r["rate"] for r in rows]
    with matplotlib.style.context("default"), matplotlib.rc_context(_RC):
        fig = Figure(figsize=(8.0, 4.6))
        ax = fig.add_subplot()
        _set_rate_axis(ax, rates)
        for r in rows:
            accs = r["chip_accuracies"]
            ax.scatter(_jittered_rates(ax, r["rate"], len(accs), rates), accs, s=_chip_size(len(accs)), color=_CHIP_COLOUR, alpha=0.45,
                       linewidths=0, label="one chip", zorder=2)  # fmt: skip
        nan = float("nan")
        low = [r["acc_defect_ci95"][0] if r.get("acc_defect_ci95") else nan for r in rows]
        high = [r["acc_defect_ci95"][1] if r.get("acc_defect_ci95") else nan for r in rows]
        if any(not math.isnan(v) for v in low):
            ax.fill_between(rates, low, high, color=_MEAN_COLOUR, alpha=0.18, linewidth=0, label="95 % CI of the mean", zorder=1)
        ax.plot(rates, [r["acc_defect_mean"] for r in rows], "o-", color=_MEAN_COLOUR, markersize=4, label="mean Acc_defect", zorder=3)
        if fig_data.get("acc_retrain") is not None:
            ax.axhline(fig_data["acc_retrain"], color="#1a7f37", linestyle="--", linewidth=1, label="Acc_retrain (fault-free)")
        if fig_data.get("acc_pretrain") is not None:
            ax.axhline(fig_data["acc_pretrain"], color="#9a6700", linestyle=":", linewidth=1.2, label="Acc_pretrain")
        retrain_min = [c for c in report["verdict"]["checks"] if c["name"] == "min_acc_retrain_pct" and c["limit"] is not None]
        for check in retrain_min:
            ax.axhline(check["limit"], color=_PASS_COLOUR if check["passed"] else _FAIL_COLOUR, linestyle="-.", linewidth=0.8,
                       label="min_acc_retrain_pct (Acc_retrain ≥)")  # fmt: skip
        _draw_limits(ax, report)
        ax.set_xlabel("P_sa (stuck-at fault rate)")
        ax.set_ylabel("accuracy (%)")
        ax.grid(True, axis="y", alpha=0.3)
        _legend(fig, ax)
        return _svg(fig, "fig1-")


def _draw_limits(ax, report: dict) -> None:
    """Each limit a marker at its rate and accuracy, red where it failed."""
    for mark in limit_accuracies(report):
        label, marker = _LIMIT_STYLE[mark["name"]]
        colour = _PASS_COLOUR if mark["passed"] else _FAIL_COLOUR
        ax.plot([mark["rate"]], [mark["acc"]], linestyle="none", marker=marker, markersize=10 if marker != "_" else 16,
                markeredgewidth=1.6, color=colour, markerfacecolor="none" if marker in "^vsD" else colour,
                label=label, zorder=4)  # fmt: skip
    thresholds = [(r["rate"], chip_threshold(report, r)) for r in report["figures"]["rates"]]
    drawn = {(m["rate"], m["name"]) for m in limit_accuracies(report)}
    for rate, threshold in thresholds:  # a chip spec without a yield limit is still worth seeing
        if threshold is not None and (rate, "min_yield_pct") not in drawn:
            ax.plot([rate], [threshold], linestyle="none", marker="_", markersize=16, markeredgewidth=1.6,
                    color=_SPEC_COLOUR, label="chip spec (each chip ≥)", zorder=4)  # fmt: skip


def _legend(fig, ax, top: float = 0.95) -> None:
    """One legend entry per kind (the chips and limits repeat per rate), below the axes; ``top``
    leaves room above them for what is written there."""
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    rows = (len(unique) + 1) // 2
    if unique:
        fig.legend(unique.values(), unique.keys(), loc="lower center", ncols=2, fontsize=8, frameon=False)
    fig.subplots_adjust(bottom=0.13 + 0.045 * rows, top=top)


def plot_chip_distribution(report: dict) -> str:
    """Figure 2 as inline SVG: every chip's accuracy at each rate (box and points), the chip-level
    spec as a line with its yield written above, the percentiles and the worst chips marked."""
    import matplotlib
    import matplotlib.style
    from matplotlib.figure import Figure

    rows = report["figures"]["rates"]
    positions = list(range(1, len(rows) + 1))
    with matplotlib.style.context("default"), matplotlib.rc_context(_RC):
        fig = Figure(figsize=(8.0, 4.6))
        ax = fig.add_subplot()
        if rows:
            ax.boxplot([r["chip_accuracies"] for r in rows], positions=positions, widths=0.45, showfliers=False,
                       medianprops={"color": _MEAN_COLOUR}, zorder=1)  # fmt: skip
        for pos, r in zip(positions, rows):
            accs = r["chip_accuracies"]
            ax.scatter([pos + 0.5 * j for j in _jitter(len(accs))], accs, s=_chip_size(len(accs)), color=_CHIP_COLOUR, alpha=0.45, linewidths=0,
                       label="one chip", zorder=2)  # fmt: skip
            _draw_chip_spec(ax, report, pos, r)
            _draw_percentiles(ax, pos, r)
            worst = [w["acc"] for w in r.get("worst_chips") or []]
            if worst:
                ax.scatter([pos] * len(worst), worst, marker="x", s=28, color=_FAIL_COLOUR, linewidths=1.2,
                           label="worst chips (listed below)", zorder=4)  # fmt: skip
        ax.set_xticks(positions, [_rate_tick(r) for r in rows])
        ax.set_xlim(0.4, len(rows) + 0.6)
        ax.set_xlabel("P_sa (stuck-at fault rate); chips measured")
        ax.set_ylabel("accuracy of one chip (%)")
        ax.grid(True, axis="y", alpha=0.3)
        _legend(fig, ax, top=0.86 if any(r.get("yield") for r in rows) else 0.95)
        return _svg(fig, "fig2-")


def _rate_tick(rate: dict) -> str:
    stopped = rate.get("stopped")
    return f"{rate['rate']:g}\n{len(rate['chip_accuracies'])} chips{' (stopped)' if stopped else ''}"


def _draw_chip_spec(ax, report: dict, pos: int, rate: dict) -> None:
    threshold = chip_threshold(report, rate)
    if threshold is None:
        return
    ax.hlines(threshold, pos - 0.42, pos + 0.42, color=_SPEC_COLOUR, linestyle="--", linewidth=1.4,
              label="chip spec (each chip ≥)", zorder=3)  # fmt: skip
    measured = rate.get("yield")
    if measured:
        text = f"yield {fmt_pct(measured.get('yield_pct'))} %\n({measured.get('meeting')} of {measured.get('chips')})"
        if measured.get("lower_bound_pct") is not None:
            text += f"\n≥ {measured['lower_bound_pct']:.2f} % at {_level(measured.get('confidence'))}"
        ax.text(pos, 1.01, text, transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=7, color=_SPEC_COLOUR)


def _draw_percentiles(ax, pos: int, rate: dict) -> None:
    for key, acc in sorted((rate.get("percentiles") or {}).items(), key=lambda kv: float(kv[0])):
        if acc is None:
            continue
        ax.plot([pos + 0.3], [acc], linestyle="none", marker="<", markersize=5, color="#bc4c00", label="percentiles", zorder=4)
        ax.text(pos + 0.34, acc, f"p{key}", va="center", ha="left", fontsize=7, color="#bc4c00")


def _level(confidence: float | None) -> str:
    return "n/a" if confidence is None else f"{confidence * 100:g} %"


def _svg(fig, prefix: str) -> str:
    """The figure as an ``<svg>`` element to inline: no XML prolog, no metadata (it names the
    renderer and a URL), and every id prefixed, so two figures on one page never share an id.
    ``svg.hashsalt`` fixes matplotlib's generated ids: the same figure gives the same text."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    text = buffer.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r"\s*<metadata>.*?</metadata>", "", text, flags=re.DOTALL)
    text = re.sub(r'\bid="([^"]+)"', rf'id="{prefix}\1"', text)
    text = re.sub(r'href="#([^"]+)"', rf'href="#{prefix}\1"', text)
    text = re.sub(r"url\(#([^)]+)\)", rf"url(#{prefix}\1)", text)
    return text.replace("<svg ", '<svg role="img" ', 1).strip()


# --- the page -----------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 2rem auto;
       max-width: 62rem; padding: 0 1rem; color: #1f2328; line-height: 1.45; }
h1 { font-size: 1.5rem; margin-bottom: .3rem; } h2 { font-size: 1.15rem; margin-top: 2rem; border-bottom: 1px solid #d0d7de; }
.verdict { display: inline-block; font-size: 1.6rem; font-weight: 700; padding: .2rem .9rem; border-radius: .4rem; color: #fff; }
.verdict.pass { background: #1a7f37; color: #fff; } .verdict.fail { background: #cf222e; color: #fff; }
.overall { font-weight: 600; font-size: 1.05rem; }
table { border-collapse: collapse; margin: .5rem 0; font-size: .9rem; }
th, td { border: 1px solid #d0d7de; padding: .25rem .5rem; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
span.pass { color: #1a7f37; font-weight: 700; } span.fail { color: #cf222e; font-weight: 700; }
tr.fail td { background: #ffebe9; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .85rem; }
pre { background: #f6f8fa; padding: .6rem; overflow-x: auto; }
figure { margin: 1.5rem 0; } figure svg { width: 100%; height: auto; }
figcaption { font-size: .9rem; color: #424a53; }
.chips { word-break: break-word; font-variant-numeric: tabular-nums; }
"""


def render_html(report: dict) -> str:
    """report.html from report.json's dict: one self-contained HTML5 page (inline CSS and SVG, no
    scripts, nothing fetched). A pure function, no I/O, no clock: the same report gives the same
    text."""
    model = report["model"]
    passed = report["verdict"]["passed"]
    title = f"Sign-off: {Path(model['file']).name} — {'PASSED' if passed else 'FAILED'}"
    body = [
        _header(report),
        _section("Inputs", _inputs_table(report)),
        _section("Figures (accuracy, %)", _figures_intro(report) + _rates_table(report)),
        _figure(1, plot_acc_defect(report), _figure1_caption(report)),
        _figure(2, plot_chip_distribution(report), _figure2_caption(report)),
        _section("Verdict", _verdict(report)),
        _worst_chips(report),
        _notes(report),
        _per_chip(report),
    ]
    return _page(title, body)


def _page(title: str, body: list[str]) -> str:
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        *[part for part in body if part],
        "</body>",
        "</html>",
        "",
    ])  # fmt: skip


def _section(heading: str, content: str) -> str:
    return f"<section>\n<h2>{_e(heading)}</h2>\n{content}\n</section>"


def _header(report: dict, kind: str = "Sign-off", overall: str | None = None, inputs: str = "") -> str:
    """The page's heading (``kind``: what the report is), its verdict, the overall line (a
    sign-off's by default) and what it measured (``inputs``: more of that line, HTML)."""
    model, profile = report["model"], report["profile"]
    passed = report["verdict"]["passed"]
    return (f"<header>\n<h1>{_e(kind)}: {_e(Path(model['file']).name)}</h1>\n"
            f'<p><span class="verdict {"pass" if passed else "fail"}">{"PASSED" if passed else "FAILED"}</span></p>\n'
            f'<p class="overall">{_e(overall if overall is not None else overall_line(report))}</p>\n'
            f"<p>model <code>{_e(model['file'])}</code> · profile <b>{_e(profile['name'])}</b> · "
            f"target <b>{_e(profile['target'])}</b>{inputs}</p>\n</header>")  # fmt: skip


def _table(header: list[str], rows: list[list[str]], row_classes: list[str] | None = None) -> str:
    """A table from cells that are already HTML (escaped by the caller)."""
    head = "<tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>"
    classes = row_classes or [""] * len(rows)
    body = [(f'<tr class="{c}">' if c else "<tr>") + "".join(row) + "</tr>" for row, c in zip(rows, classes)]
    return "<table>\n" + "\n".join([head, *body]) + "\n</table>"


def _td(text: str, num: bool = False) -> str:
    return f'<td class="num">{text}</td>' if num else f"<td>{text}</td>"


def _inputs_table(report: dict) -> str:
    model, profile, data, signoff = report["model"], report["profile"], report["data"], report["signoff"]
    fingerprint = data.get("fingerprint")
    subset = f" (stratified subset, seed {_e(data['split_seed'])})" if data["images"] < data["val_images"] else ""
    every = "images (every image)" if data.get("all_images") else "validation images"
    extends = "".join(f", extends <code>{_e(b['file'])}</code> (sha256 <code>{_e(b['sha256'][:16])}…</code>)"
                      for b in profile.get("extends", []))  # fmt: skip
    rows = [
        ("model file", f"<code>{_e(model['file'])}</code> (sha256 <code>{_e(model['sha256'])}</code>)"),
        ("content hash", f"<code>{_e(model['content_sha256'])}</code>"),
        ("model", f"{_e(model['model'])}, {model['layers']} crossbar layers, {model['cells']:,} cells; "
                  f"method {_e(model['method'])} (schedule {_e(schedule_text(model['schedule']))})"),
        ("mapping", _e(model["mapping"])),
        ("profile", f"{_e(profile['name'])} (<code>{_e(profile['file'])}</code>, sha256 <code>{_e(profile['sha256'][:16])}…</code>){extends}"),
        ("target", f"{_e(profile['target'])} (<code>{_e(profile['target_file'])}</code>, sha256 <code>{_e(profile['target_sha256'][:16])}…</code>)"),
        ("data", f"{_e(data['spec'])}: {data['images']} of {data['val_images']} {every}{subset}"),
        ("image set", f"sha256 <code>{_e(fingerprint)}</code>" if fingerprint else "not recorded"),
        ("chips", f"{_e(chips_per_rate(signoff))}, seed {signoff['seed']}, stuck-off : stuck-on = "
                  f"{signoff['split'][0]:g} : {signoff['split'][1]:g}"),
        ("faults", _e(signoff.get("faults", "stuck-at"))),
    ]  # fmt: skip
    if signoff.get("confidence") is not None:
        rows.append(("confidence", f"{_level(signoff['confidence'])} (yield bounds and early stopping)"))
    if signoff.get("chip_spec"):
        rows.append(("chip spec", _e(_chip_spec_text(signoff["chip_spec"]))))
    rows.append(("tool", f"ftdeploy {_e(report['tool']['version'])}, onnxruntime {_e(report['tool']['onnxruntime'])}"))
    return _table(["input", ""], [[_td(_e(k)), _td(v)] for k, v in rows])


def _chip_spec_text(spec: dict) -> str:
    parts = []
    if spec.get("min_acc_pct") is not None:
        parts.append(f"accuracy ≥ {spec['min_acc_pct']:.2f} %")
    if spec.get("max_drop_pct") is not None:
        parts.append(f"drop from Acc_pretrain ≤ {spec['max_drop_pct']:.2f} pts")
    return "every chip: " + " and ".join(parts) if parts else "none"


def _figures_intro(report: dict) -> str:
    fig = report["figures"]
    return ("<ul>\n"
            f"<li>Acc_pretrain: <b>{fmt_pct(fig.get('acc_pretrain'))}</b> — {_e(fig.get('acc_pretrain_source', 'n/a'))}</li>\n"
            f"<li>Acc_retrain: <b>{fmt_pct(fig.get('acc_retrain'))}</b> — "
            f"{_e(fig.get('acc_retrain_source', 'fault-free ONNX model on the evaluation images'))}</li>\n"
            + (f"<li>Acc_defect — {_e(fig['acc_defect_source'])}</li>\n" if fig.get("acc_defect_source") else "")
            + "</ul>\n")  # fmt: skip


def _ss(rate: dict) -> str:
    """The stability score; +inf where the chips lose nothing, n/a without an Acc_pretrain."""
    if rate.get("stability") is not None:
        return f"{rate['stability']:.2f}"
    return "n/a" if rate.get("acc_drop") is None else "+inf"


def _rates_table(report: dict) -> str:
    rows_in = report["figures"]["rates"]
    has_yield = any(r.get("yield") for r in rows_in)
    has_pct = any(r.get("percentiles") for r in rows_in)
    has_stop = any(r.get("stopped") for r in rows_in)
    header = ["P_sa", "stuck-off", "stuck-on", "chips", "Acc_defect", "std", "95 % CI", "drop (pts)", "SS"]
    header += ["yield"] * has_yield + ["percentiles"] * has_pct + ["why it stopped"] * has_stop
    rows = []
    for r in rows_in:
        ci = r.get("acc_defect_ci95")
        row = [_td(f"{r['rate']:g}", True), _td(f"{r['stuck_off']:.3g}", True), _td(f"{r['stuck_on']:.3g}", True),
               _td(str(len(r["chip_accuracies"])), True), _td(fmt_pct(r["acc_defect_mean"]), True), _td(fmt_pct(r.get("acc_defect_std")), True),
               _td("n/a (1 chip)" if ci is None else f"[{ci[0]:.2f}, {ci[1]:.2f}]", True), _td(fmt_pct(r["acc_drop"]), True),
               _td(_ss(r), True)]  # fmt: skip
        if has_yield:
            row.append(_td(_yield_text(r.get("yield"))))
        if has_pct:
            row.append(_td(_e(", ".join(f"p{k} {fmt_pct(v)}" for k, v in sorted((r.get("percentiles") or {}).items(), key=lambda kv: float(kv[0]))))))
        if has_stop:
            stop = r.get("stopped")
            row.append(_td(_e(f"after {stop.get('chips')} of at most {stop.get('cap')} chips: {stop.get('reason', '')}") if stop else "—"))
        rows.append(row)
    note = ("<p>SS = Acc_retrain / (Acc_pretrain − Acc_defect); +inf when Acc_defect ≥ Acc_pretrain (null in report.json), "
            f"where any min_stability limit counts as met. CI: {_e(report['signoff'].get('ci', 'n/a'))}.</p>")  # fmt: skip
    return _table(header, rows) + "\n" + note


def _yield_text(measured: dict | None) -> str:
    if not measured:
        return "—"
    text = (f"{fmt_pct(measured.get('yield_pct'))} % ({measured.get('meeting')} of {measured.get('chips')} chips meet "
            f"{measured.get('spec', 'the chip spec')})")  # fmt: skip
    if measured.get("lower_bound_pct") is not None:
        text += f"; ≥ {measured['lower_bound_pct']:.2f} % at {_level(measured.get('confidence'))} confidence"
    return _e(text)


def _figure(number: int, svg: str, caption: str) -> str:
    return f"<figure>\n{svg}\n<figcaption><b>Figure {number}.</b> {caption}</figcaption>\n</figure>"


def _figure1_caption(report: dict) -> str:
    return _e("Acc_defect against the stuck-at rate: the mean over chips (line), its 95 % confidence interval (band), "
              "every chip (points), Acc_retrain and Acc_pretrain (horizontal lines), and each acceptance limit as "
              "the accuracy it asks for at its rate (markers; red where it failed). "
              + image_set_caption(report))  # fmt: skip


def _figure2_caption(report: dict) -> str:
    spec = "; the chip-level spec as a dashed line with its yield above" if any(chip_threshold(report, r) is not None for r in report["figures"]["rates"]) else ""
    return _e(f"Accuracy of every chip at each rate (box: quartiles and median; points: chips){spec}. "
              + image_set_caption(report))  # fmt: skip


def _verdict(report: dict) -> str:
    checks = report["verdict"]["checks"]
    parts = ["<pre>" + _e("\n".join(verdict_lines(report))) + "</pre>"]
    if checks:
        rows = []
        for c in checks:
            reason = c["reason"] + (f" ({c['note']})" if c.get("note") else "")
            rows.append([_td(f"<code>{_e(c['name'])}</code>"), _td(_e(_rate(c["rate"])), True), _td(_e(fmt_limit(c["value"])), True),
                         _td(_e(f"{c['comparison']} {fmt_limit(c['limit'])}")), _td(_status(c["passed"])), _td(_e(reason))])  # fmt: skip
        parts.append(_table(["limit", "P_sa", "measured", "limit", "result", "reason"], rows,
                            ["pass" if c["passed"] else "fail" for c in checks]))  # fmt: skip
    return "\n".join(parts)


def _worst_chips(report: dict) -> str:
    rows = [[_td(_e(_rate(w.get("rate", r["rate"]))), True), _td(_e(w.get("seed", "—")), True), _td(_e(w.get("index", "—")), True),
             _td(fmt_pct(w.get("acc")), True)]
            for r in report["figures"]["rates"] for w in r.get("worst_chips") or []]  # fmt: skip
    if not rows:
        return ""
    intro = "<p>The chips that did worst at each rate, worst first: a chip is reproduced from its seed and index.</p>\n"
    return _section("Worst chips", intro + _table(["P_sa", "chip seed", "chip index", "accuracy (%)"], rows))


def _notes(report: dict) -> str:
    if not report.get("notes"):
        return ""
    return _section("Notes", "<ul>\n" + "\n".join(f"<li>{_e(n)}</li>" for n in report["notes"]) + "\n</ul>")


def _per_chip(report: dict) -> str:
    rows = [[_td(f"{r['rate']:g}", True), _td(str(len(r["chip_accuracies"])), True),
             f'<td class="chips">{", ".join(f"{a:.2f}" for a in r["chip_accuracies"])}</td>']
            for r in report["figures"]["rates"]]  # fmt: skip
    table = _table(["P_sa", "chips", "accuracy of each chip (%)"], rows)
    return _section("Per-chip accuracy (%)", f"<details>\n<summary>every chip's accuracy, by rate</summary>\n{table}\n</details>")


# --- a lot of measured chips ----------------------------------------------------------------------


def render_lot_html(report: dict) -> str:
    """report.html of a lot (:func:`ftdeploy.lot.verify_lot`): the lot's verdict and yield, a
    figure of every chip's accuracy against the chip spec (in each figure the lot measured: with
    ``--program`` unprogrammed and programmed, with field faults without and with them), the chip
    table with the failing chips marked, and the verdict lines. Pure, like :func:`render_html`."""
    model, passed = report["model"], report["verdict"]["passed"]
    title = f"Measured chips: {Path(model['file']).name} — {'PASSED' if passed else 'FAILED'}"
    body = [
        _header(report, "Measured chips", lot_line(report), f" · fault maps <code>{_e(report['lot']['fault_maps'])}</code>"),
        _section("Inputs", _markdown_rows_table(lot_input_rows(report))),
        _section("Figures (accuracy, %)", _lot_figures(report)),
        _figure(1, plot_lot_chips(report), _e(f"Accuracy of every chip (points; red: below the chip spec), in each figure "
                                              f"the lot measured, against the chip spec (dashed line). {image_set_text(report['data'])}.")),
        _section("Chips", _lot_chip_table(report)),
        _section("Verdict", "<pre>" + _e("\n".join(lot_lines(report))) + "</pre>"),
        _notes(report),
    ]  # fmt: skip
    return _page(title, body)


def _markdown_rows_table(rows: list[str]) -> str:
    """A two-column table from markdown rows ``| name | value |`` (``code`` spans kept as code):
    one definition of a lot's inputs, shared with report.md."""
    cells = []
    for row in rows:
        name, value = (part.strip() for part in row.strip().strip("|").split("|", 1))
        cells.append([_td(_e(name)), _td(re.sub(r"`([^`]*)`", r"<code>\1</code>", _e(value)))])
    return _table(["input", ""], cells)


def _lot_figures(report: dict) -> str:
    fig, signoff, lot = report["figures"], report["signoff"], report["lot"]
    items = [f"Acc_pretrain: <b>{fmt_pct(fig['acc_pretrain'])}</b> — from {_e(fig['acc_pretrain_source'])}",
             f"Acc_retrain: <b>{fmt_pct(fig['acc_retrain'])}</b> — {_e(fig['acc_retrain_source'])}",
             f"Chip spec: {_e(signoff['chip_spec_description'])}: a chip meets it with accuracy ≥ <b>{signoff['threshold_pct']:.2f}</b>"]
    cols = columns(lot)
    for key, label in cols:
        y = lot["yield" + _suffix(key)]
        what = f"chips {label}" if label else "chips"
        judged = " (judged: as shipped)" if not key and len(cols) > 1 else ""
        items.append(f"Yield, {_e(what)}{judged}: {y['meeting']}/{y['chips']} = <b>{y['yield_pct']:.1f} %</b>, exact one-sided "
                     f"bounds (Clopper-Pearson) at {_level(y.get('confidence', lot['yield']['confidence']))} confidence: "
                     f"≥ {y['lower_bound_pct']:.1f} %, ≤ {y['upper_bound_pct']:.1f} %")  # fmt: skip
    return "<ul>\n" + "\n".join(f"<li>{item}</li>" for item in items) + "\n</ul>"


def _suffix(key: str) -> str:
    """What a lot column's key adds to ``accuracy``, ``meets_spec`` and ``yield`` (the judged
    column, key "", adds nothing)."""
    return f"_{key}" if key else ""


def plot_lot_chips(report: dict) -> str:
    """Every chip's accuracy in each figure the lot measured (box and points, failing chips in
    red), the chip spec's threshold as a dashed line, each figure's yield above it."""
    import matplotlib
    import matplotlib.style
    from matplotlib.figure import Figure

    lot, threshold = report["lot"], report["signoff"]["threshold_pct"]
    cols = columns(lot)
    positions = list(range(1, len(cols) + 1))
    with matplotlib.style.context("default"), matplotlib.rc_context(_RC):
        fig = Figure(figsize=(8.0, 4.2))
        ax = fig.add_subplot()
        for pos, (key, label) in zip(positions, cols):
            suffix = _suffix(key)
            accs = [c["accuracy" + suffix] for c in lot["chips"]]
            ax.boxplot([accs], positions=[pos], widths=0.45, showfliers=False, medianprops={"color": _MEAN_COLOUR}, zorder=1)
            xs = [pos + 0.5 * j for j in _jitter(len(accs))]
            colours = [_CHIP_COLOUR if c["meets_spec" + suffix] else _FAIL_COLOUR for c in lot["chips"]]
            ax.scatter(xs, accs, s=_chip_size(len(accs)), c=colours, alpha=0.6, linewidths=0, zorder=2)
            y = lot[f"yield{suffix}"]
            ax.text(pos, 1.01, f"yield {y['yield_pct']:.1f} %\n({y['meeting']} of {y['chips']})", transform=ax.get_xaxis_transform(),
                    ha="center", va="bottom", fontsize=7, color=_SPEC_COLOUR)  # fmt: skip
        ax.axhline(threshold, color=_SPEC_COLOUR, linestyle="--", linewidth=1.4, label=f"chip spec (each chip ≥ {threshold:.2f})", zorder=3)
        ax.set_xticks(positions, [(label or "measured").replace(", ", ",\n").replace(" + ", "\n+ ") for _, label in cols])
        ax.set_xlim(0.4, len(cols) + 0.6)
        ax.set_ylabel("accuracy of one chip (%)")
        ax.grid(True, axis="y", alpha=0.3)
        _legend(fig, ax, top=0.86)
        return _svg(fig, "lot-")


def _lot_chip_table(report: dict) -> str:
    """report.md's chip table, failing chips marked, with each chip's verdict line."""
    lot, threshold = report["lot"], report["signoff"]["threshold_pct"]
    cols, field = columns(lot), "field_rate" in lot
    header = ["chip", "map", "sha256", "stuck-off", "stuck-on", "in the model (off / on)", "accuracy (%)", "result"]
    header += [f"{label} (%)" for _, label in cols[:-1]] + ["field faults (off / on)"] * field
    rows, classes = [], []
    for c in lot["chips"]:
        row = [_td(_e(c["id"])), _td(f"<code>{_e(Path(c['file']).name)}</code>"), _td(f"<code>{_e(c['sha256'][:16])}…</code>"),
               _td(f"{c['stuck_off']:,}", True), _td(f"{c['stuck_on']:,}", True),
               _td(f"{c['stuck_off_in_model']:,} / {c['stuck_on_in_model']:,}", True), _td(f"{c['accuracy']:.2f}", True),
               _td(_status(c["meets_spec"]))]  # fmt: skip
        row += [_td(f"{c['accuracy_' + key]:.2f} " + _status(c["meets_spec_" + key]), True) for key, _ in cols[:-1]]
        if field:
            row.append(_td(f"{c['field_stuck_off_in_model']:,} / {c['field_stuck_on_in_model']:,}", True))
        rows.append(row)
        classes.append("" if c["meets_spec"] else "fail")
    failing = sum(not c["meets_spec"] for c in lot["chips"])
    intro = f"<p>{failing} of {len(lot['chips'])} chips below the chip spec ({threshold:.2f} %), marked.</p>\n" if failing else ""
    return intro + _table(header, rows, classes)
