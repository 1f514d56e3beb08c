"""Paired comparison of two models a sweep measured on the same simulated chips.

Two rows of a sweep table each carry a 95 % CI over their chips, and two CIs that overlap do not
say the models are level: a sweep draws the same chips (fault maps, seed) for every model, so
much of each CI is the chips' own spread, shared by both. The difference chip by chip removes it.
For every test rate this prints both means, the mean per-chip difference A − B with its 95 %
Student-t CI, and on how many chips A was ahead.

    python studies/cifar10-paper/scripts/compare_models.py studies/cifar10-paper/results/c10c/weight-clip-2/results/progressive-0.05.json \\
        studies/cifar10-paper/results/c10c/dense/results/progressive-0.05.json

Both files must come from sweeps on the same target, chips, seed, test rates and images
(their ``measured`` fields, the checkpoint aside); otherwise chip i is not the same chip.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ftdeploy.figures import summarize_chips


class NotComparable(Exception):
    """The two results files were not measured on the same chips and images."""


def load_result(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise NotComparable(f"{path}: not a readable sweep results file ({exc})") from None


def same_chips(a: dict, b: dict) -> None:
    """Refuse two results whose chips differ: every measured field but the checkpoint must agree."""
    ma, mb = ({k: v for k, v in r.get("measured", {}).items() if k != "checkpoint_sha256"} for r in (a, b))
    if not ma:
        raise NotComparable(f"{a.get('label', 'A')}: no 'measured' field; not a sweep results file")
    differing = sorted(k for k in ma.keys() | mb.keys() if ma.get(k) != mb.get(k))
    if differing:
        raise NotComparable(f"measured on other chips or images: {', '.join(differing)} {'differs' if len(differing) == 1 else 'differ'}")


def paired_rows(a: dict, b: dict) -> list[dict]:
    """Per test rate: both means, the per-chip difference's mean and CI, and chips A led on."""
    rows = []
    for rate, test in a["tests"].items():
        diffs = [x - y for x, y in zip(test["chips"], b["tests"][rate]["chips"], strict=True)]
        diff = summarize_chips(diffs)
        rows.append({"rate": rate, "a": test["mean"], "b": b["tests"][rate]["mean"], "diff": diff["mean"],
                     "ci95": diff["ci95"], "ahead": sum(d > 0 for d in diffs), "chips": len(diffs)})  # fmt: skip
    return rows


def render(a: dict, b: dict, rows: list[dict]) -> str:
    lines = [f"A: {a['label']} (clean {a['acc_clean']:.2f})", f"B: {b['label']} (clean {b['acc_clean']:.2f})",
             "| P | A | B | A − B (95 % CI, paired) | chips A ahead |", "|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        ci = "n/a" if r["ci95"] is None else f"{r['ci95'][0]:+.2f} … {r['ci95'][1]:+.2f}"
        lines.append(f"| {r['rate']} | {r['a']:.2f} | {r['b']:.2f} | {r['diff']:+.2f} ({ci}) | {r['ahead']} / {r['chips']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", type=Path, help="results/NAME.json of model A (a sweep folder's)")
    ap.add_argument("b", type=Path, help="results/NAME.json of model B, measured on the same chips")
    args = ap.parse_args(argv)
    try:
        a, b = load_result(args.a), load_result(args.b)
        same_chips(a, b)
        print(render(a, b, paired_rows(a, b)))
    except NotComparable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
