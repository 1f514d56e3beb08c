"""Per-chip accuracies into figures and verdicts: the one place that computes the statistics of a
chip population and judges them against a profile's acceptance limits. Sign-off, the sweep's
screen and the Python API all read their figures from here.

Figures (accuracy in %):
  Acc_defect    mean over a rate's chips, with sample std and a 95 % Student-t CI
  drop          Acc_pretrain − Acc_defect, percentage points
  SS            Acc_retrain / (Acc_pretrain − Acc_defect); +inf when Acc_defect >= Acc_pretrain
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field

from .errors import ConfigError
from .nonideality import StuckAt

#: Two-sided 95 % Student-t quantiles t(0.975, df). Exact for df <= 30; between table rows the
#: quantile is interpolated linearly in 1/df (error < 1e-4 against scipy); df -> inf: normal.
_T975 = {
    1: 12.706205, 2: 4.302653, 3: 3.182446, 4: 2.776445, 5: 2.570582, 6: 2.446912, 7: 2.364624,
    8: 2.306004, 9: 2.262157, 10: 2.228139, 11: 2.200985, 12: 2.178813, 13: 2.160369, 14: 2.144787,
    15: 2.131450, 16: 2.119905, 17: 2.109816, 18: 2.100922, 19: 2.093024, 20: 2.085963, 21: 2.079614,
    22: 2.073873, 23: 2.068658, 24: 2.063899, 25: 2.059539, 26: 2.055529, 27: 2.051831, 28: 2.048407,
    29: 2.045230, 30: 2.042272, 40: 2.021075, 50: 2.008559, 60: 2.000298, 80: 1.990063, 100: 1.983972,
    120: 1.979930, 200: 1.971896, 500: 1.964720, 1000: 1.962339,
}  # fmt: skip
_Z975 = 1.959964

NO_DEGRADATION = "no degradation: Acc_defect >= Acc_pretrain"


def t_quantile_975(df: int) -> float:
    """t(0.975, df) of Student's t distribution, for a two-sided 95 % confidence interval."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, found {df}")
    if df in _T975:
        return _T975[df]
    rows = sorted(_T975)
    below = max(r for r in rows if r < df)
    above = next((r for r in rows if r > df), None)
    # Interpolate linearly in 1/df, where t is nearly linear; past the table, towards the normal.
    x0, t0 = 1.0 / below, _T975[below]
    x1, t1 = (1.0 / above, _T975[above]) if above else (0.0, _Z975)
    return t0 + (x0 - 1.0 / df) / (x0 - x1) * (t1 - t0)


def stability_score(acc_retrain: float, acc_pretrain: float, acc_defect: float) -> float:
    """SS = Acc_retrain / (Acc_pretrain − Acc_defect); +inf when the chips lose nothing."""
    drop = acc_pretrain - acc_defect
    return math.inf if drop <= 0 else acc_retrain / drop


def summarize_chips(accs: list[float]) -> dict:
    """Mean, sample std and 95 % Student-t CI of per-chip accuracies (std and CI need 2 chips)."""
    n = len(accs)
    mean = statistics.fmean(accs)
    if n < 2:
        return {"mean": mean, "std": None, "ci95": None}
    std = statistics.stdev(accs)
    half = t_quantile_975(n - 1) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "ci95": [mean - half, mean + half]}


@dataclass
class Check:
    """One acceptance limit: the measured value next to its limit, the outcome and why."""

    name: str
    rate: float | None  # None: a fault-free limit
    value: float | None  # None only for an undefined (infinite) stability score
    limit: float
    comparison: str  # ">=" or "<=": what must hold for PASSED
    passed: bool
    reason: str
    note: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Verdict:
    """Every check of a sign-off; passed when all pass (and when no limit is set)."""

    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_dict(self) -> dict:
        failed = sum(not c.passed for c in self.checks)
        if not self.checks:
            summary = "no acceptance limits set"
        elif failed:
            summary = f"{failed} of {len(self.checks)} limits failed"
        else:
            summary = f"{len(self.checks)} of {len(self.checks)} limits met"
        return {"passed": self.passed, "summary": summary, "checks": [c.to_dict() for c in self.checks]}


def _at_least(name, rate, value, limit, what) -> Check:
    ok = value >= limit
    reason = f"{what} {value:.2f} {'meets' if ok else 'is below'} the minimum {limit:.2f}"
    return Check(name, rate, value, limit, ">=", ok, reason)


def _at_most(name, rate, value, limit, what) -> Check:
    ok = value <= limit
    reason = f"{what} {value:.2f} {'is within' if ok else 'exceeds'} the maximum {limit:.2f}"
    return Check(name, rate, value, limit, "<=", ok, reason)


def judge(figures: dict, resolved) -> Verdict:
    """Apply the profile's limits (signoff.min_acc_retrain_pct and each acceptance entry) to
    figures as :func:`verify_onnx` reports them."""
    signoff = resolved.profile.signoff
    verdict = Verdict()
    if signoff.min_acc_retrain_pct is not None:
        verdict.checks.append(_at_least("min_acc_retrain_pct", None, figures["acc_retrain"], signoff.min_acc_retrain_pct, "Acc_retrain"))  # fmt: skip
    by_rate = {r["rate"]: r for r in figures["rates"]}
    for lim in signoff.acceptance:
        r = by_rate[lim.rate]
        for name, limit in lim.limits().items():
            verdict.checks.append(_check_one(name, lim.rate, limit, r))
    return verdict


def _check_one(name: str, rate: float, limit: float, r: dict) -> Check:
    if name == "min_acc_defect_pct":
        return _at_least(name, rate, r["acc_defect_mean"], limit, "mean Acc_defect")
    if name == "min_acc_defect_lower_ci_pct":
        return _at_least(name, rate, r["acc_defect_ci95"][0], limit, "lower 95 % CI bound of Acc_defect")
    if name == "max_acc_drop_pct":
        return _at_most(name, rate, r["acc_drop"], limit, "Acc_pretrain − Acc_defect")
    if name == "min_stability":
        if r["stability"] is None:  # +inf: the chips lose nothing, any minimum is met
            return Check(name, rate, None, limit, ">=", True, f"stability score is +inf ({NO_DEGRADATION})", NO_DEGRADATION)
        return _at_least(name, rate, r["stability"], limit, "stability score")
    raise ConfigError(f"acceptance: unknown limit {name!r}")



def rate_figures(rate: float, stuck: StuckAt, accs: list[float], acc_pretrain: float, acc_retrain: float) -> dict:
    """One test rate's figures as a report gives them and :func:`judge` reads them, from the
    accuracy (%) of every chip; ``stuck`` is the stuck-at population simulated at that rate."""
    stats = summarize_chips(accs)
    ss = stability_score(acc_retrain, acc_pretrain, stats["mean"])
    stuck_off, stuck_on = stuck.pair
    return {
        "rate": rate,
        "stuck_off": stuck_off,
        "stuck_on": stuck_on,
        "chips": len(accs),
        "acc_defect_mean": stats["mean"],
        "acc_defect_std": stats["std"],
        "acc_defect_ci95": stats["ci95"],
        "acc_drop": acc_pretrain - stats["mean"],
        "stability": None if math.isinf(ss) else ss,
        "stability_note": NO_DEGRADATION if math.isinf(ss) else None,
        "chip_accuracies": accs,
    }


