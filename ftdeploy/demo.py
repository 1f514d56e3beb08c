"""``ftdeploy demo``: the whole product in a few minutes on two CPU cores, on the embedded data.

Pretrain a small CNN, retrain it fault-tolerantly (one-shot and progressive), export the models
to conductance-mapped ONNX, sign each off with ONNX Runtime on simulated chips, and print them
side by side. On a target with BatchNorm in the periphery the pretrained model is also shown with
its channel ranges equalised (``ftdeploy equalize``): what the mapping alone buys, without
retraining.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

from .data import load_data
from .equalize import equalize_checkpoint, equalizes
from .export import export_onnx
from .profiles import ResolvedProfile
from .report import write_report
from .resolve import pretraining_config, train_config
from .training.loop import train
from .verify import verify_onnx

#: The demo's models, in table order; "equalized" only where the target can equalise.
MODELS = ("baseline", "equalized", "one-shot", "progressive")
RETRAINED = ("one-shot", "progressive")
LEGEND = {"equalized": "the baseline with its channel ranges equalised (ftdeploy equalize), not retrained"}


def run_demo(resolved: ResolvedProfile, out: Path, device: str | None = None, log: Callable[[str], None] = print) -> dict:
    """Run every stage with the profile's training settings on ``device`` (default: auto);
    return {model: report} (the ONNX Runtime sign-off reports)."""
    data = load_data(None)
    log(f"data: {data.description}")
    runs = {}
    pre_cfg = pretraining_config(resolved.profile, {"device": device})
    log(f"[1/4] pretraining {pre_cfg.model} for {pre_cfg.epochs} epochs")
    pre = train(pre_cfg, data, resolved.target, out / "baseline", profile_name=resolved.profile.name)
    own = True  # every checkpoint below was built here from the chosen profile's model: no file named it
    runs["baseline"] = pre
    if equalizes(resolved.target):
        runs["equalized"] = equalize_checkpoint(pre, resolved.target, data, allow_model_import=own)
    for i, method in enumerate(RETRAINED, start=2):
        cfg = train_config(resolved.profile, dict(method=method, eval_chips=0, device=device))  # no per-epoch chips: the sign-off measures
        log(f"[{i}/4] {method} fault-tolerant retraining at P_sa^T = {cfg.target_rate:g} for {cfg.epochs} epochs")
        runs[method] = train(cfg, data, resolved.target, out / method, init=pre, profile_name=resolved.profile.name,
                            allow_model_import=own)  # fmt: skip
    log(f"[4/4] export to ONNX and sign-off on {resolved.profile.signoff.chips} chips per rate with ONNX Runtime")
    reports = {}
    for name in (m for m in MODELS if m in runs):  # the baseline first: every model's Acc_pretrain is its accuracy
        onnx_path = out / f"{name}.onnx"
        export_onnx(runs[name], resolved, onnx_path, allow_model_import=own)
        reports[name] = verify_onnx(onnx_path, resolved, None, reference=out / "baseline.onnx")
        write_report(reports[name], out / "reports" / name)
    return reports


def _fmt(v: float | None) -> str:
    return "inf" if v is None or math.isinf(v) else f"{v:.2f}"


def comparison_rows(reports: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the side-by-side table: clean accuracy, then Acc_defect and SS per rate."""
    rates = [r["rate"] for r in reports["baseline"]["figures"]["rates"]]
    header = ["model", "clean %"] + [f"Acc_defect@{r:g} %" for r in rates] + [f"SS@{r:g}" for r in rates] + ["sign-off"]
    rows = []
    for name, rep in reports.items():
        fig = rep["figures"]
        rows.append([name, _fmt(fig["acc_retrain"])]
                    + [_fmt(r["acc_defect_mean"]) for r in fig["rates"]]
                    + [_fmt(r["stability"]) for r in fig["rates"]]
                    + ["PASS" if rep["verdict"]["passed"] else "FAIL"])  # fmt: skip
    return header, rows


def ft_beats_baseline(reports: dict) -> dict[str, bool]:
    """For each retrained model: is its mean Acc_defect above the baseline's at every sign-off rate?"""
    base = [r["acc_defect_mean"] for r in reports["baseline"]["figures"]["rates"]]
    return {
        name: all(r["acc_defect_mean"] > b for r, b in zip(reports[name]["figures"]["rates"], base))
        for name in RETRAINED
        if name in reports
    }
