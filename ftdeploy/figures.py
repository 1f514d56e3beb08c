"""Per-chip accuracies into figures and verdicts: the one place that computes the statistics of a
chip population and judges them against a profile's acceptance limits. Sign-off, the sweep's
screen and the Python API all read their figures from here.

Figures (accuracy in %):
  Acc_defect    mean over a rate's chips, with sample std and a 95 % Student-t CI
  drop          Acc_pretrain − Acc_defect, percentage points
  SS            Acc_retrain / (Acc_pretrain − Acc_defect); +inf when Acc_defect >= Acc_pretrain
  yield         share of chips meeting the chip spec, with exact one-sided Clopper-Pearson bounds
  percentiles   the accuracy of the p-th percentile chip (a measured chip, not an interpolation)
  worst chips   the least accurate chips by id (rate, seed, index)
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field

import numpy as np

from .errors import ConfigError
from .nonideality import StuckAt

NO_DEGRADATION = "no degradation: Acc_defect >= Acc_pretrain"
NO_PRETRAIN = "no Acc_pretrain on these images"

#: Percentiles every rate reports, besides any a limit names.
REPORTED_PERCENTILES = (5.0, 50.0)
#: Chips listed by id as a rate's worst.
WORST_CHIPS = 5


def t_quantile_975(df: int) -> float:
    """t(0.975, df) of Student's t distribution, for a two-sided 95 % confidence interval."""
    from scipy import stats

    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, found {df}")
    return float(stats.t.ppf(0.975, df))


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


def yield_bounds(meeting: int, chips: int, confidence: float) -> tuple[float, float]:
    """Exact one-sided (Clopper-Pearson) lower and upper confidence bounds, in %, of the share of
    chips meeting a spec, from ``meeting`` of ``chips``; each bound holds at ``confidence``."""
    from scipy import stats

    # A two-sided exact interval at 2c - 1 has each of its ends at one-sided confidence c.
    ci = stats.binomtest(meeting, chips).proportion_ci(confidence_level=2 * confidence - 1, method="exact")
    low, high = ci.low, ci.high
    return 100.0 * float(low), 100.0 * float(high)


def chip_yield(accs: list[float], threshold: float, spec: str, confidence: float) -> dict:
    """The share of chips whose accuracy is at least ``threshold`` (%), with its one-sided lower
    Clopper-Pearson bound at ``confidence`` (and the upper one, which decides a failing yield)."""
    meeting = sum(a >= threshold for a in accs)
    low, high = yield_bounds(meeting, len(accs), confidence)
    return {"spec": spec, "threshold_pct": threshold, "meeting": meeting, "chips": len(accs),
            "yield_pct": 100.0 * meeting / len(accs), "lower_bound_pct": low, "upper_bound_pct": high,
            "confidence": confidence}  # fmt: skip


def chip_percentile(accs: list[float], percentile: float) -> float:
    """The accuracy of the ``percentile``-th percentile chip: a measured chip's own accuracy
    (the smallest with at least ``percentile`` % of chips at or below it), not an interpolation."""
    return float(np.percentile(np.asarray(accs, dtype=np.float64), percentile, method="inverted_cdf"))


def worst_chips(accs: list[float], rate: float, seed: int | None, count: int = WORST_CHIPS) -> list[dict]:
    """The ``count`` least accurate chips by id (rate, seed, index), worst first; ties by index."""
    order = sorted(range(len(accs)), key=lambda i: (accs[i], i))[:count]
    return [{"rate": rate, "seed": seed, "index": i, "acc": accs[i]} for i in order]


def judge(figures: dict, resolved) -> Verdict:
    """Apply the profile's limits (chance margin, signoff.min_acc_retrain_pct and each acceptance
    entry) to figures as :func:`verify_onnx` reports them."""
    signoff = resolved.profile.signoff
    verdict = Verdict()
    chance = figures.get("chance_pct")
    if chance is not None and signoff.chance_margin_pct > 0:
        verdict.checks.append(_at_least("chance_margin_pct", None, figures["acc_retrain"] - chance, signoff.chance_margin_pct,
                                        f"Acc_retrain − chance ({chance:.2f} %)"))  # fmt: skip
    if signoff.min_acc_retrain_pct is not None:
        verdict.checks.append(_at_least("min_acc_retrain_pct", None, figures["acc_retrain"], signoff.min_acc_retrain_pct, "Acc_retrain"))  # fmt: skip
    for lim in signoff.acceptance:
        r = _figures_at(figures["rates"], lim.total)
        for name, limit in lim.limits().items():
            verdict.checks.append(_check_one(name, r["rate"], limit, r, lim))
    return verdict


def _figures_at(rates: list[dict], total: float) -> dict:
    """The figures measured at the sign-off rate of this total stuck-at probability."""
    return next(r for r in rates if math.isclose(r["rate"], total, rel_tol=1e-9, abs_tol=1e-15))


def _check_one(name: str, rate: float, limit: float, r: dict, lim) -> Check:
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
    if name == "min_yield_pct":
        y = r["yield"]
        what = (f"yield {y['meeting']}/{y['chips']} chips = {y['yield_pct']:.2f} % ({y['spec']}); "
                f"its {100 * y['confidence']:g} % lower bound")  # fmt: skip
        return _at_least(name, rate, y["lower_bound_pct"], limit, what)
    if name == "min_percentile_acc_pct":
        value = r["percentiles"][_pkey(lim.percentile)]
        return _at_least(name, rate, value, limit, f"accuracy of the {lim.percentile:g}th-percentile chip")
    raise ConfigError(f"acceptance: unknown limit {name!r}")


def _pkey(percentile: float) -> str:
    """A percentile as a JSON key: ``5``, ``2.5``."""
    return f"{percentile:g}"


def rate_figures(rate: float, stuck: StuckAt, accs: list[float], acc_pretrain: float | None, acc_retrain: float, *,
                 seed: int | None = None, signoff=None) -> dict:  # fmt: skip
    """One test rate's figures as a report gives them and :func:`judge` reads them, from the
    accuracy (%) of every chip; ``stuck`` is the stuck-at population simulated at that rate.
    ``acc_pretrain`` None: not measured on these images, so no drop and no stability score.
    ``signoff`` (the profile's :class:`ftdeploy.profiles.SignOff`): the yield against its chip
    spec at its confidence, and the percentiles its limits name besides :data:`REPORTED_PERCENTILES`."""
    percentiles = [lim.percentile for lim in signoff.acceptance if lim.min_percentile_acc_pct is not None] if signoff else []
    stats = summarize_chips(accs)
    stuck_off, stuck_on = stuck.pair
    if acc_pretrain is None:
        drop, ss, ss_note = None, None, NO_PRETRAIN
    else:
        drop, ss = acc_pretrain - stats["mean"], stability_score(acc_retrain, acc_pretrain, stats["mean"])
        ss, ss_note = (None, NO_DEGRADATION) if math.isinf(ss) else (ss, None)
    threshold = signoff.chip_threshold(acc_pretrain) if signoff is not None else None
    chip_yield_ = None if threshold is None else chip_yield(accs, threshold, signoff.chip_spec.describe(), signoff.confidence)
    wanted = sorted({*REPORTED_PERCENTILES, *percentiles})
    return {
        "rate": rate,
        "stuck_off": stuck_off,
        "stuck_on": stuck_on,
        "chips": len(accs),
        "acc_defect_mean": stats["mean"],
        "acc_defect_std": stats["std"],
        "acc_defect_ci95": stats["ci95"],
        "acc_drop": drop,
        "stability": ss,
        "stability_note": ss_note,
        "yield": chip_yield_,
        "percentiles": {_pkey(q): chip_percentile(accs, q) for q in wanted},
        "worst_chips": worst_chips(accs, rate, seed),
        "chip_accuracies": accs,
    }
