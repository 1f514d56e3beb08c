"""Sequential sign-off: chips are drawn in batches, and a sign-off rate stops as soon as the chips
drawn so far decide every acceptance limit at that rate, at the profile's confidence.

How it runs
-----------
At each sign-off rate chips are drawn ``signoff.batch_chips`` at a time: chips 0..b−1, then
b..2b−1, and so on, never more than ``signoff.chips`` (the *cap*). After each batch (a *look*)
every limit at that rate is examined on all the chips drawn so far and comes out

* **pass**: a one-sided confidence bound shows the limit holds;
* **fail**: the opposite bound shows it does not;
* **undecided**: neither.

The rate stops at the first look at which every one of its limits is decided, or at the cap.
Either way its verdict is the fixed-count verdict (:func:`ftdeploy.figures.judge`) on the chips
actually drawn, so a report's verdict always follows from the figures it prints: the rule only
chooses how many chips that is. A limit decided at the stopping look is judged the same way by
``judge`` on those chips (shown for each kind below); a limit still undecided at the cap is
judged as a fixed-count sign-off of that many chips would judge it. Chip k is the same chip
however many are drawn, so a sequential sign-off measures a prefix of the fixed-count one's
chips, and the same seed gives the same chips, the same stops and the same report.

A rate with no limits only gives figures for information; it is measured on the first batch.

Error control
-------------
Looking K = ceil(cap / batch) times gives K chances to be fooled by a lucky or unlucky batch.
Every bound is therefore taken at the per-look confidence c_K = 1 − (1 − c)/K, c =
``signoff.confidence`` (Bonferroni). If a limit truly holds, wrongly deciding *fail* needs the
upper bound to fall on the wrong side at some look; each look has a chance of at most (1 − c)/K,
so all K together at most 1 − c, however the looks depend on one another (they share chips).
Likewise for wrongly deciding *pass*. The guarantee is per limit, as the fixed count's yield
bound is: with several limits at a rate, each is wrongly decided with a chance of at most
1 − c. Bonferroni is conservative, since overlapping looks are
strongly correlated; group-sequential boundaries (Pocock, O'Brien-Fleming) would stop a little
sooner but rest on a normal approximation of the looks' joint law, which the exact binomial
bounds used for yields and percentiles do not share. Bonferroni needs no such assumption and
treats every kind alike. Limits are examined afresh at every look (a decision is never carried
over from an earlier look), so the decisions that stop a rate are all made on its final chips.

Per limit kind (n chips, mean m and sample standard deviation s of their accuracies, and
h = t(c', n − 1) · s / √n the half-width of a one-sided Student-t bound at confidence c')

=============================  ==============================================================
min_acc_defect_pct L           pass when m − h ≥ L, fail when m + h < L (c' = c_K).
max_acc_drop_pct D             the drop Acc_pretrain − m at the low end of the mean,
                               Acc_pretrain − (m − h) ≤ D: pass; at the high end > D: fail.
min_stability S                the stability score at m − h ≥ S: pass; at m + h < S: fail.
min_acc_defect_lower_ci_pct L  as min_acc_defect_pct at c' = max(c_K, 0.975): see below.
min_yield_pct Y                exact one-sided Clopper-Pearson bounds of the share of chips
                               meeting the chip spec at c_K: lower ≥ Y pass, upper < Y fail.
min_percentile_acc_pct L (p)   the p-th percentile chip is at least L exactly when the share of
                               chips with accuracy ≥ L is at least 1 − p/100: decided as a
                               yield of chips meeting "accuracy ≥ L" against 100 − p %.
=============================  ==============================================================

Acc_pretrain and Acc_retrain are measured once on the fault-free models, so they are fixed
numbers here: a drop or stability limit is a limit on the mean in disguise, and lower accuracy is
always the pessimistic end. Fault-free limits (min_acc_retrain_pct, chance_margin_pct) need no
chips and play no part.

min_acc_defect_lower_ci_pct asks that the lower end of the report's two-sided 95 % t interval
clear L, which is a one-sided 97.5 % lower bound of the mean clearing L; that figure rises
towards the mean as chips are added, so what the limit asks in the end is "the mean is at
least L, shown at 97.5 %". It is therefore decided as a mean limit at the stricter of that
confidence and c_K: pass then implies the report's interval clears L on the same chips, and
fail (even the optimistic bound is below L) means more chips would not get the interval there.
Where the true mean is just above L the rule stays undecided and the cap's interval decides,
as it does without the rule.

A share close to 100 % takes many chips to show even when every chip meets it: with all n
chips meeting, the exact lower bound is (1 − c_K)^(1/n), so a 95 % yield (or a 5th-percentile
limit) can pass no sooner than 104 chips at c_K = 0.995 (10 looks at 95 %). With a smaller cap
such a limit only ever decides fail early; a passing one runs to the cap and is judged there.

Mean limits wait for :data:`MIN_CHIPS_FOR_MEAN` chips: the t bound treats the mean as normal,
which a handful of chips from a skewed accuracy distribution does not justify. Chips that all
read the same accuracy (no faults at that rate) have no spread, so their mean is known exactly
and decides at once.

Why a decided limit agrees with ``judge`` on the same chips: a mean limit's figure (the mean,
the drop, the stability score) is monotone in the mean, and the pessimistic bound is no better
than the mean itself (h ≥ 0, around the report's own mean), so the point figure passes
whenever its bound does, and fails whenever the optimistic bound does. The 97.5 % bound is no
higher than the report's interval's lower end because t(c', n − 1) ≥ t(0.975, n − 1) (where
the two are equal, the report's own figure is checked too, so rounding cannot split them). The
yield's lower bound at c_K ≥ c is no higher than the report's at c, and its upper bound no
lower than the point share. The percentile's decision needs the share of chips at or above L
strictly above (pass) or below (fail) 1 − p/100, which the exact bounds give with a whole chip
to spare.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from .figures import stability_score, summarize_chips, yield_bounds

#: Fewest chips a limit on the mean is decided on.
MIN_CHIPS_FOR_MEAN = 5
#: One-sided confidence of the lower end of the report's two-sided 95 % interval.
CI_LOWER_END_CONFIDENCE = 0.975
#: Limits decided with Student-t bounds on the mean; yields and percentiles take binomial bounds.
MEAN_LIMITS = ("min_acc_defect_pct", "min_acc_defect_lower_ci_pct", "max_acc_drop_pct", "min_stability")


class Outcome(str, Enum):
    """What the chips drawn so far say about one limit."""

    PASS = "pass"
    FAIL = "fail"
    UNDECIDED = "undecided"


@dataclass(frozen=True)
class Limit:
    """One acceptance limit at one rate, as numbers: its field name, its value, and the percentile
    of a min_percentile_acc_pct limit."""

    name: str
    value: float
    percentile: float | None = None

    def label(self) -> str:
        return f"{self.name} (p{self.percentile:g})" if self.percentile is not None else self.name


@dataclass(frozen=True)
class CleanFigures:
    """The fault-free numbers a limit may compare against: Acc_pretrain (None: not measured on
    these images), Acc_retrain, and the lowest accuracy a chip may have and meet the chip spec
    (None: no spec, or one that needs the missing Acc_pretrain)."""

    acc_pretrain: float | None
    acc_retrain: float
    spec_threshold: float | None = None


@dataclass(frozen=True)
class Plan:
    """How many chips each look has drawn at one rate, and at what confidence it decides.
    ``sequential`` False: one look at the cap, no decisions (the fixed count)."""

    cap: int
    batch: int
    confidence: float
    sequential: bool = True

    def __post_init__(self):
        if self.cap < 1 or self.batch < 1:
            raise ValueError(f"cap and batch must be at least 1, found {self.cap} and {self.batch}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be between 0 and 1, found {self.confidence}")

    @property
    def looks(self) -> list[int]:
        """Chips drawn by each look: b, 2b, ..., then the cap."""
        if not self.sequential:
            return [self.cap]
        return [*range(self.batch, self.cap, self.batch), self.cap]

    @property
    def look_confidence(self) -> float:
        """c_K = 1 − (1 − c)/K: the confidence of every bound at every look (Bonferroni)."""
        return 1.0 - (1.0 - self.confidence) / len(self.looks)

    def to_dict(self) -> dict:
        if not self.sequential:
            return {"sequential": False, "cap": self.cap}
        return {"sequential": True, "batch_chips": self.batch, "cap": self.cap, "looks": self.looks,
                "confidence": self.confidence, "look_confidence": self.look_confidence,
                "correction": f"Bonferroni over {len(self.looks)} looks: every bound at 1 − (1 − {self.confidence:g})/"
                              f"{len(self.looks)} = {self.look_confidence:.6g}",
                "rule": "after each batch, every limit at the rate is decided (pass/fail) by one-sided confidence "
                        "bounds on all chips drawn so far; the rate stops when all are decided, or at the cap; "
                        "the verdict is judged on the chips drawn"}  # fmt: skip


# --- one limit --------------------------------------------------------------------------------


def decide(limit: Limit, accs: Sequence[float], clean: CleanFigures, confidence: float) -> Outcome:
    """What ``accs`` (the accuracy of each chip drawn so far, %) say about ``limit`` with every
    bound at one-sided ``confidence`` (the per-look confidence of a :class:`Plan`)."""
    if limit.name in MEAN_LIMITS:
        return _decide_mean(limit, accs, clean, confidence)
    if limit.name == "min_yield_pct":
        if clean.spec_threshold is None:
            return Outcome.UNDECIDED
        return _decide_share(_count_at_least(accs, clean.spec_threshold), len(accs), limit.value, confidence)
    if limit.name == "min_percentile_acc_pct":
        return _decide_share(_count_at_least(accs, limit.value), len(accs), 100.0 - limit.percentile, confidence)
    raise ValueError(f"no sequential rule for limit {limit.name!r}")


def _decide_mean(limit: Limit, accs: Sequence[float], clean: CleanFigures, confidence: float) -> Outcome:
    if len(accs) < MIN_CHIPS_FOR_MEAN:
        return Outcome.UNDECIDED
    if limit.name == "min_acc_defect_lower_ci_pct":
        confidence = max(confidence, CI_LOWER_END_CONFIDENCE)
    low, high = mean_bounds(accs, confidence)
    holds = _mean_limit_test(limit, clean)
    if holds is None:
        return Outcome.UNDECIDED
    if holds(low):  # even the pessimistic end of the mean meets it
        if limit.name == "min_acc_defect_lower_ci_pct" and not holds(summarize_chips(accs)["ci95"][0]):
            # At 97.5 % exactly, the bound and the report's interval differ only in how their
            # standard deviations were rounded: the report's own figure has the last word.
            return Outcome.UNDECIDED
        return Outcome.PASS
    if not holds(high):  # even the optimistic end misses it
        return Outcome.FAIL
    return Outcome.UNDECIDED


def _mean_limit_test(limit: Limit, clean: CleanFigures) -> Callable[[float], bool] | None:
    """Whether a mean accuracy meets ``limit``, computed as :func:`ftdeploy.figures.judge`
    computes the limit's figure from the mean (so the comparison is the same, rounding
    included); None where the figure needs an Acc_pretrain there is none of."""
    if limit.name in ("min_acc_defect_pct", "min_acc_defect_lower_ci_pct"):
        return lambda mean: mean >= limit.value
    if clean.acc_pretrain is None:
        return None
    if limit.name == "max_acc_drop_pct":
        return lambda mean: clean.acc_pretrain - mean <= limit.value
    if limit.name == "min_stability":  # +inf (no loss) meets any minimum
        return lambda mean: stability_score(clean.acc_retrain, clean.acc_pretrain, mean) >= limit.value
    raise ValueError(f"{limit.name!r} is not a limit on the mean")


def mean_bounds(accs: Sequence[float], confidence: float) -> tuple[float, float]:
    """One-sided Student-t lower and upper bounds of the population's mean accuracy from
    ``accs`` (2 or more), each at ``confidence``. The mean is the report's, to the last bit; the
    sample standard deviation is computed in floating point (the report's exact-arithmetic one
    costs a hundred times more, and this runs at every look)."""
    n = len(accs)
    mean = statistics.fmean(accs)
    std = math.sqrt(math.fsum((a - mean) ** 2 for a in accs) / (n - 1))
    half = t_quantile(confidence, n - 1) * std / math.sqrt(n)
    return mean - half, mean + half


@functools.lru_cache(maxsize=4096)
def t_quantile(confidence: float, df: int) -> float:
    """t(confidence, df) of Student's t distribution."""
    from scipy import stats

    return float(stats.t.ppf(confidence, df))


def _count_at_least(accs: Sequence[float], threshold: float) -> int:
    return sum(a >= threshold for a in accs)  # as figures.chip_yield counts chips meeting the spec


def _decide_share(meeting: int, chips: int, limit_pct: float, confidence: float) -> Outcome:
    """Pass when the share of chips meeting is at least ``limit_pct`` % at ``confidence``, fail
    when it is below it there (exact one-sided Clopper-Pearson bounds)."""
    low, high = share_bounds(meeting, chips, confidence)
    if low >= limit_pct:
        return Outcome.PASS
    if high < limit_pct:
        return Outcome.FAIL
    return Outcome.UNDECIDED


@functools.lru_cache(maxsize=65536)
def share_bounds(meeting: int, chips: int, confidence: float) -> tuple[float, float]:
    """:func:`ftdeploy.figures.yield_bounds`, remembered: the looks of every rate ask for the same
    few (meeting, chips) pairs, and each costs a root search."""
    return yield_bounds(meeting, chips, confidence)


# --- one rate ---------------------------------------------------------------------------------


@dataclass
class Stop:
    """Where a rate stopped: chips drawn, the cap, looks taken, why, and the decision on each limit
    at the last look."""

    chips: int
    cap: int
    looks: int
    reason: str
    decisions: list[tuple[Limit, Outcome]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"chips": self.chips, "cap": self.cap, "looks": self.looks, "reason": self.reason,
                "limits": [{"name": lim.name, "limit": lim.value, **({"percentile": lim.percentile} if lim.percentile is not None else {}),
                            "decision": outcome.value} for lim, outcome in self.decisions]}  # fmt: skip


def run_rate(plan: Plan, limits: Sequence[Limit], clean: CleanFigures,
             measure: Callable[[int, int], list[float]]) -> tuple[list[float], Stop]:  # fmt: skip
    """Draw one rate's chips look by look until its limits are decided or the cap is reached.
    ``measure(start, stop)`` returns the accuracies (%) of chips start..stop−1. Returns every
    accuracy drawn, in chip order, and where and why it stopped."""
    accs: list[float] = []
    pct = f"{100 * plan.confidence:g} % confidence"
    for look, drawn in enumerate(plan.looks, start=1):
        accs += measure(len(accs), drawn)
        if not plan.sequential:
            return accs, Stop(drawn, plan.cap, look, f"fixed count of {drawn} chips (sequential sign-off off)")
        if not limits:
            return accs, Stop(drawn, plan.cap, look, f"no limits at this rate: figures for information, on the first batch of {drawn} chips")
        decisions = [(lim, decide(lim, accs, clean, plan.look_confidence)) for lim in limits]
        open_ = [lim.label() for lim, outcome in decisions if outcome is Outcome.UNDECIDED]
        if not open_:
            said = ", ".join(f"{lim.label()} {outcome.value}" for lim, outcome in decisions)
            return accs, Stop(drawn, plan.cap, look, f"every limit decided at {pct} on {drawn} of {plan.cap} chips ({said})", decisions)
    reason = f"cap reached, undecided at {pct} ({', '.join(open_)}); judged on {len(accs)} chips"
    return accs, Stop(len(accs), plan.cap, len(plan.looks), reason, decisions)


def limits_at(signoff, rate) -> list[Limit]:
    """The acceptance limits a profile's ``signoff`` sets at one of its sign-off ``rate``s."""
    mine = [lim for lim in signoff.acceptance if signoff.rate_for(lim) == rate]
    return [Limit(name, value, lim.percentile if name == "min_percentile_acc_pct" else None)
            for lim in mine for name, value in lim.limits().items()]  # fmt: skip
