"""Sequential sign-off's rule (ftdeploy.sequential): each kind's decision, its agreement with the
fixed-count verdict on the same chips, how a rate stops, and its error rate by simulation: over
thousands of synthetic chip populations whose truth is known, wrong early decisions stay within
1 − confidence, and populations far from a limit stop well before the cap."""

from __future__ import annotations

import math
import statistics
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats

from ftdeploy.figures import chip_percentile, judge, rate_figures, yield_bounds
from ftdeploy.nonideality import StuckAt
from ftdeploy.profiles import SignOff
from ftdeploy.sequential import (
    MIN_CHIPS_FOR_MEAN,
    CleanFigures,
    Limit,
    Outcome,
    Plan,
    decide,
    limits_at,
    mean_bounds,
    run_rate,
    share_bounds,
)

PASS, FAIL, UNDECIDED = Outcome.PASS, Outcome.FAIL, Outcome.UNDECIDED
CLEAN = CleanFigures(acc_pretrain=80.0, acc_retrain=78.0)
FIVE = [70.0, 71.0, 72.0, 73.0, 74.0]  # mean 72, std 1.5811


def _half(accs, confidence):
    return stats.t.ppf(confidence, len(accs) - 1) * statistics.stdev(accs) / math.sqrt(len(accs))


# --- the plan -----------------------------------------------------------------------------------


def test_looks_are_batches_up_to_the_cap_and_share_the_error_among_them():
    plan = Plan(cap=100, batch=10, confidence=0.95)
    assert plan.looks == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert plan.look_confidence == pytest.approx(0.995)
    assert Plan(cap=25, batch=10, confidence=0.9).looks == [10, 20, 25]
    assert Plan(cap=25, batch=10, confidence=0.9).look_confidence == pytest.approx(1 - 0.1 / 3)
    assert Plan(cap=3, batch=10, confidence=0.95).looks == [3], "a cap within the first batch is one look"
    assert Plan(cap=3, batch=10, confidence=0.95).look_confidence == pytest.approx(0.95)
    assert Plan(cap=100, batch=10, confidence=0.95, sequential=False).looks == [100]
    with pytest.raises(ValueError):
        Plan(cap=10, batch=0, confidence=0.95)


# --- each kind's decision -----------------------------------------------------------------------


def test_mean_limit_passes_fails_or_waits_on_t_bounds():
    h = _half(FIVE, 0.95)
    assert mean_bounds(FIVE, 0.95) == pytest.approx((72 - h, 72 + h))
    assert decide(Limit("min_acc_defect_pct", 72 - h - 0.01), FIVE, CLEAN, 0.95) is PASS
    assert decide(Limit("min_acc_defect_pct", 72 - h + 0.01), FIVE, CLEAN, 0.95) is UNDECIDED
    assert decide(Limit("min_acc_defect_pct", 72.0), FIVE, CLEAN, 0.95) is UNDECIDED
    assert decide(Limit("min_acc_defect_pct", 72 + h - 0.01), FIVE, CLEAN, 0.95) is UNDECIDED
    assert decide(Limit("min_acc_defect_pct", 72 + h + 0.01), FIVE, CLEAN, 0.95) is FAIL
    # a stricter look confidence widens the bounds: what 0.95 decided, 0.999 does not
    assert decide(Limit("min_acc_defect_pct", 72 - h - 0.01), FIVE, CLEAN, 0.999) is UNDECIDED


def test_mean_limits_wait_for_enough_chips():
    assert decide(Limit("min_acc_defect_pct", 0.0), FIVE[: MIN_CHIPS_FOR_MEAN - 1], CLEAN, 0.95) is UNDECIDED
    assert decide(Limit("min_acc_defect_pct", 0.0), FIVE[:MIN_CHIPS_FOR_MEAN], CLEAN, 0.95) is PASS


def test_identical_chips_decide_at_once_on_their_exact_mean():
    same = [64.0] * MIN_CHIPS_FOR_MEAN
    assert decide(Limit("min_acc_defect_pct", 64.0), same, CLEAN, 0.999) is PASS
    assert decide(Limit("min_acc_defect_pct", 64.01), same, CLEAN, 0.999) is FAIL


def test_drop_limit_is_a_mean_limit_against_acc_pretrain():
    h = _half(FIVE, 0.95)  # drop at the low end 80 − (72 − h), at the high end 80 − (72 + h)
    assert decide(Limit("max_acc_drop_pct", 8 + h + 0.01), FIVE, CLEAN, 0.95) is PASS
    assert decide(Limit("max_acc_drop_pct", 8.0), FIVE, CLEAN, 0.95) is UNDECIDED
    assert decide(Limit("max_acc_drop_pct", 8 - h - 0.01), FIVE, CLEAN, 0.95) is FAIL
    assert decide(Limit("max_acc_drop_pct", 100.0), FIVE, CleanFigures(None, 78.0), 0.95) is UNDECIDED, "no Acc_pretrain"


def test_stability_limit_is_a_mean_limit_through_the_score():
    h = _half(FIVE, 0.95)
    worst, best = 78.0 / (8 + h), 78.0 / (8 - h)
    assert decide(Limit("min_stability", worst - 0.01), FIVE, CLEAN, 0.95) is PASS
    assert decide(Limit("min_stability", 78.0 / 8), FIVE, CLEAN, 0.95) is UNDECIDED
    assert decide(Limit("min_stability", best + 0.01), FIVE, CLEAN, 0.95) is FAIL
    lossless = CleanFigures(acc_pretrain=60.0, acc_retrain=78.0)  # chips above Acc_pretrain: +inf meets any minimum
    assert decide(Limit("min_stability", 1e9), FIVE, lossless, 0.95) is PASS


def test_ci_lower_end_limit_is_a_mean_limit_at_97_5_percent_at_least():
    """Below 0.975 the 0.975 bound decides (the limit's own confidence); above it, the look's."""
    h975 = _half(FIVE, 0.975)
    assert decide(Limit("min_acc_defect_lower_ci_pct", 72 - h975 - 0.01), FIVE, CLEAN, 0.9) is PASS
    between = 72 - (h975 + _half(FIVE, 0.9)) / 2  # a plain mean limit at 0.9 passes here
    assert decide(Limit("min_acc_defect_pct", between), FIVE, CLEAN, 0.9) is PASS
    assert decide(Limit("min_acc_defect_lower_ci_pct", between), FIVE, CLEAN, 0.9) is UNDECIDED
    assert decide(Limit("min_acc_defect_lower_ci_pct", 72 + h975 + 0.01), FIVE, CLEAN, 0.9) is FAIL
    h999 = _half(FIVE, 0.999)
    assert decide(Limit("min_acc_defect_lower_ci_pct", 72 - h999 + 0.01), FIVE, CLEAN, 0.999) is UNDECIDED


def test_yield_limit_on_exact_binomial_bounds():
    spec = CleanFigures(80.0, 78.0, spec_threshold=60.0)
    ten_meet, none_meet = [65.0] * 10, [55.0] * 10
    low = 100 * 0.005 ** (1 / 10)  # Clopper-Pearson lower bound of 10 of 10 at 0.995
    assert decide(Limit("min_yield_pct", low - 0.01), ten_meet, spec, 0.995) is PASS
    assert decide(Limit("min_yield_pct", low + 0.01), ten_meet, spec, 0.995) is UNDECIDED
    assert decide(Limit("min_yield_pct", 100 - low + 0.01), none_meet, spec, 0.995) is FAIL
    assert decide(Limit("min_yield_pct", 100 - low - 0.01), none_meet, spec, 0.995) is UNDECIDED
    assert decide(Limit("min_yield_pct", 1.0), [60.0] * 10, spec, 0.995) is PASS, "a chip at the threshold meets the spec"
    assert decide(Limit("min_yield_pct", 1.0), ten_meet, CLEAN, 0.995) is UNDECIDED, "no spec threshold: nothing to count"


def test_percentile_limit_is_a_share_of_chips_at_or_above_it():
    """The 10th-percentile chip is at least L when at least 90 % of chips are: 20 chips all above
    cannot show that at 0.995 (bound 76.7 %), 60 can (91.5 %); all below shows the opposite."""
    p10 = Limit("min_percentile_acc_pct", 50.0, percentile=10.0)
    assert decide(p10, [55.0] * 20, CLEAN, 0.995) is UNDECIDED
    assert decide(p10, [55.0] * 60, CLEAN, 0.995) is PASS
    assert decide(p10, [45.0] * 20, CLEAN, 0.995) is FAIL
    assert decide(p10, [50.0] * 60, CLEAN, 0.995) is PASS, "a chip at L counts as at or above it"


def test_fault_free_limits_have_no_sequential_rule():
    with pytest.raises(ValueError, match="no sequential rule"):
        decide(Limit("min_acc_retrain_pct", 50.0), FIVE, CLEAN, 0.95)


# --- agreement with the fixed-count verdict on the same chips ----------------------------------


def _signoff(limit: Limit, confidence: float, spec_threshold: float | None) -> SignOff:
    entry = {"rate": 0.01, limit.name: limit.value}
    if limit.percentile is not None:
        entry["percentile"] = limit.percentile
    spec = None if spec_threshold is None else {"min_acc_pct": spec_threshold}
    return SignOff(rates=[0.01], chips=100, confidence=confidence, chip_spec=spec, acceptance=[entry])


def _judged(limit: Limit, accs: list[float], clean: CleanFigures, confidence: float) -> bool:
    """The fixed-count verdict (figures.judge) on ``accs`` for this one limit."""
    signoff = _signoff(limit, confidence, clean.spec_threshold)
    rate = rate_figures(0.01, StuckAt.from_total(0.01), accs, clean.acc_pretrain, clean.acc_retrain, signoff=signoff)
    figures = {"acc_pretrain": clean.acc_pretrain, "acc_retrain": clean.acc_retrain, "rates": [rate]}
    (check,) = judge(figures, SimpleNamespace(profile=SimpleNamespace(signoff=signoff))).checks
    return check.passed


def _populations(rng):
    """Chip accuracies of several shapes: normal, skewed and discrete (200 images), and all alike."""
    yield rng.normal(72.0, 3.0, 100)
    yield 100 * rng.binomial(200, rng.beta(18, 6, 100)) / 200
    yield np.round(rng.normal(62.0, 1.0, 100), 1)
    yield np.full(100, 61.5)


def _limits_near(population: np.ndarray, offset: float, clean: CleanFigures) -> list[Limit]:
    """One limit of each kind, ``offset`` from the population's own figure for it (in points,
    or tens of points of a share)."""
    mu = float(np.mean(population)) + offset
    share = 100 * float(np.mean(population >= clean.spec_threshold)) + 10 * offset
    return [Limit("min_acc_defect_pct", mu), Limit("min_acc_defect_lower_ci_pct", mu),
            Limit("max_acc_drop_pct", clean.acc_pretrain - mu),
            Limit("min_stability", clean.acc_retrain / max(clean.acc_pretrain - mu, 1e-3)),
            Limit("min_yield_pct", min(max(share, 0.0), 100.0)),
            Limit("min_percentile_acc_pct", float(np.percentile(population, 10)) + offset, percentile=10.0)]  # fmt: skip


@pytest.mark.parametrize("confidence", [0.9, 0.95])
def test_a_decided_limit_is_judged_the_same_on_the_same_chips(confidence):
    """At every look, a limit decided pass is passed by figures.judge on those very chips and one
    decided fail is failed, for the profile's confidence and a look's stricter one; limits sit
    near each population's figures so both happen, and on their exact edge (offset 0), where
    rounding would show."""
    rng = np.random.default_rng(7)
    seen = {PASS: 0, FAIL: 0}
    for population in _populations(rng):
        clean = CleanFigures(80.0, 78.0, spec_threshold=float(np.percentile(population, 20)))
        for offset in (-3.0, -1.0, -0.3, 0.0, 0.3, 1.0, 3.0):
            for limit in _limits_near(population, offset, clean):
                for n in (5, 10, 30, 60, 100):
                    accs = population[:n].tolist()
                    for look_confidence in (confidence, 1 - (1 - confidence) / 10):
                        outcome = decide(limit, accs, clean, look_confidence)
                        if outcome is not UNDECIDED:
                            seen[outcome] += 1
                            assert _judged(limit, accs, clean, confidence) is (outcome is PASS), (limit, n, look_confidence, outcome)
    assert seen[PASS] > 50 and seen[FAIL] > 50, seen


@pytest.mark.parametrize("percentile", [2.5, 5.0, 10.0, 50.0])
def test_percentile_decisions_agree_with_the_percentile_chip_at_every_count(percentile):
    """For each chip count, the fewest chips at or above L that decide pass give a percentile
    chip at or above L, the most that decide fail one below it (decisions and the chip are both
    monotone in that count, so the edges stand for every count)."""
    limit = Limit("min_percentile_acc_pct", 50.0, percentile=percentile)
    decided = set()
    for n in (5, 10, 20, 21, 40, 59, 60, 100, 101, 240):
        for confidence in (0.95, 0.995):
            outcomes = [decide(limit, [50.0] * m + [49.0] * (n - m), CLEAN, confidence) for m in range(n + 1)]
            passing = [m for m, o in enumerate(outcomes) if o is PASS]
            failing = [m for m, o in enumerate(outcomes) if o is FAIL]
            if passing:
                m = min(passing)
                assert chip_percentile([50.0] * m + [49.0] * (n - m), percentile) >= 50.0, (n, m, confidence)
            if failing:
                m = max(failing)
                assert chip_percentile([50.0] * m + [49.0] * (n - m), percentile) < 50.0, (n, m, confidence)
            decided |= {o for o in outcomes if o is not UNDECIDED}
    assert decided == {PASS, FAIL}


def test_yield_bound_is_no_higher_at_a_stricter_confidence():
    """A yield decided pass at a look's confidence passes judge's bound at the profile's."""
    for n in (5, 10, 37, 100):
        for m in range(n + 1):
            assert share_bounds(m, n, 0.995)[0] <= yield_bounds(m, n, 0.95)[0]
            assert share_bounds(m, n, 0.995)[1] >= 100 * m / n >= yield_bounds(m, n, 0.95)[0]


# --- one rate -----------------------------------------------------------------------------------


class _Chips:
    """A measure function over a fixed population that records which chips were asked for."""

    def __init__(self, accs):
        self.accs, self.asked = list(accs), []

    def __call__(self, start: int, stop: int) -> list[float]:
        self.asked.append((start, stop))
        return self.accs[start:stop]


def test_a_rate_stops_at_the_first_look_that_decides_every_limit():
    chips = _Chips(np.random.default_rng(0).normal(72.0, 3.0, 100))
    limits = [Limit("min_acc_defect_pct", 60.0), Limit("max_acc_drop_pct", 30.0)]
    accs, stop = run_rate(Plan(100, 10, 0.95), limits, CLEAN, chips)
    assert chips.asked == [(0, 10)] and accs == chips.accs[:10]
    assert (stop.chips, stop.cap, stop.looks) == (10, 100, 1)
    assert [o for _, o in stop.decisions] == [PASS, PASS]
    assert stop.reason == "every limit decided at 95 % confidence on 10 of 100 chips (min_acc_defect_pct pass, max_acc_drop_pct pass)"


def test_a_rate_draws_batch_by_batch_until_decided():
    population = np.random.default_rng(1).normal(72.0, 3.0, 100)
    chips = _Chips(population)
    accs, stop = run_rate(Plan(100, 10, 0.95), [Limit("min_acc_defect_pct", 71.0)], CLEAN, chips)
    assert 10 < stop.chips < 100 and chips.asked == [(k, k + 10) for k in range(0, stop.chips, 10)], "consecutive batches"
    assert accs == population[: stop.chips].tolist() and stop.decisions[0][1] is PASS
    assert decide(Limit("min_acc_defect_pct", 71.0), population[: stop.chips - 10].tolist(), CLEAN, 0.995) is UNDECIDED


def test_a_rate_undecided_at_the_cap_says_so():
    chips = _Chips(np.random.default_rng(2).normal(72.0, 3.0, 30))
    limit = Limit("min_acc_defect_pct", float(np.mean(chips.accs)))
    accs, stop = run_rate(Plan(30, 10, 0.95), [limit, Limit("min_acc_defect_pct", 10.0)], CLEAN, chips)
    assert len(accs) == stop.chips == 30 and stop.looks == 3
    assert stop.reason == "cap reached, undecided at 95 % confidence (min_acc_defect_pct); judged on 30 chips"
    assert [o for _, o in stop.decisions] == [UNDECIDED, PASS]


def test_a_rate_without_limits_draws_one_batch_and_a_fixed_count_every_chip():
    chips = _Chips(range(100))
    accs, stop = run_rate(Plan(100, 10, 0.95), [], CLEAN, chips)
    assert len(accs) == 10 and "no limits at this rate" in stop.reason
    chips = _Chips(range(100))
    accs, stop = run_rate(Plan(100, 10, 0.95, sequential=False), [Limit("min_acc_defect_pct", 0.0)], CLEAN, chips)
    assert chips.asked == [(0, 100)] and stop.chips == 100 and stop.decisions == []
    assert stop.reason == "fixed count of 100 chips (sequential sign-off off)"


def test_same_chips_give_the_same_stop():
    population = np.random.default_rng(3).normal(72.0, 3.0, 100)
    limits = [Limit("min_acc_defect_pct", 71.0), Limit("min_percentile_acc_pct", 60.0, 5.0)]
    runs = [run_rate(Plan(100, 10, 0.95), limits, CLEAN, _Chips(population)) for _ in range(2)]
    assert runs[0][0] == runs[1][0] and runs[0][1].to_dict() == runs[1][1].to_dict()


def test_limits_at_a_rate_come_from_its_acceptance_entries():
    signoff = SignOff(rates=[0.005, [0.001, 0.009]], chip_spec={"min_acc_pct": 50.0}, acceptance=[
        {"rate": 0.01, "min_acc_defect_pct": 60.0, "min_percentile_acc_pct": 55.0, "percentile": 2.5},
        {"rate": 0.01, "min_yield_pct": 90.0}])  # fmt: skip
    assert limits_at(signoff, 0.005) == []
    assert limits_at(signoff, (0.001, 0.009)) == [Limit("min_acc_defect_pct", 60.0), Limit("min_percentile_acc_pct", 55.0, 2.5),
                                                  Limit("min_yield_pct", 90.0)]  # fmt: skip


# --- error rate by simulation -------------------------------------------------------------------

CONFIDENCE = 0.95
CAP, BATCH = 100, 10
RUNS = 1000
#: Offsets of the truth from the limit in standard errors of the cap's estimate; > 0: it passes.
NEAR = (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0)
ALPHA = 1 - CONFIDENCE


def _tolerance(runs: int) -> float:
    """1 − confidence plus three Monte-Carlo standard errors of a share estimated from ``runs``."""
    return ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / runs)


def _simulate(limit: Limit, draw, truth_passes: bool, clean=CLEAN, runs=RUNS, plan=Plan(CAP, BATCH, CONFIDENCE), seed=0):
    """Run one rate on ``runs`` populations of ``draw(rng, CAP)``; return the share of wrong
    decisions (pass where the truth fails, fail where it passes) and the mean chips drawn."""
    rng = np.random.default_rng(seed)
    wrong, drawn = 0, 0
    for _ in range(runs):
        population = draw(rng, plan.cap).tolist()
        _, stop = run_rate(plan, [limit], clean, lambda a, b: population[a:b])
        outcome = stop.decisions[0][1]
        wrong += outcome is (FAIL if truth_passes else PASS)
        drawn += stop.chips
    return wrong / runs, drawn / runs


def _normal(mu=72.0, sigma=3.0):
    return lambda rng, n: rng.normal(mu, sigma, n)


#: A skewed, discrete population: each chip's share of 200 images right is Beta(18, 6) distributed.
BETA_A, BETA_B, IMAGES = 18.0, 6.0, 200
BB_MEAN = 100 * BETA_A / (BETA_A + BETA_B)
_p_var = BETA_A * BETA_B / ((BETA_A + BETA_B) ** 2 * (BETA_A + BETA_B + 1))
BB_STD = 100 * math.sqrt(_p_var + (BETA_A * BETA_B / (BETA_A + BETA_B) ** 2 - _p_var) / IMAGES)


def _beta_binomial(rng, n):
    return 100 * rng.binomial(IMAGES, rng.beta(BETA_A, BETA_B, n)) / IMAGES


def _mean_cases():
    """(limit kind, offset, limit, draw, truth passes) for the limits on the mean: the mean of a
    normal and of a skewed discrete population, and the CI's lower end. (Drop and stability
    limits decide exactly as the mean limit they amount to: see the test after this one.)"""
    se = 3.0 / math.sqrt(CAP)
    for d in NEAR:
        yield "min_acc_defect_pct normal", d, Limit("min_acc_defect_pct", 72.0 - d * se), _normal(), d >= 0
        bb_se = BB_STD / math.sqrt(CAP)
        yield "min_acc_defect_pct beta-binomial", d, Limit("min_acc_defect_pct", BB_MEAN - d * bb_se), _beta_binomial, d >= 0
        yield "min_acc_defect_lower_ci_pct", d, Limit("min_acc_defect_lower_ci_pct", 72.0 - d * se), _normal(), d >= 0


def _share_cases():
    """(limit kind, offset, limit, draw, truth passes) for yields (Bernoulli chips: 100 % or 0 %
    against a spec of 50 %) and the 10th percentile of a normal population."""
    for d in NEAR:
        share = 0.8 + d * math.sqrt(0.8 * 0.2 / CAP)
        yield "min_yield_pct", d, Limit("min_yield_pct", 80.0), (lambda rng, n, s=share: 100.0 * (rng.random(n) < s)), d >= 0
        above = 0.9 + d * math.sqrt(0.9 * 0.1 / CAP)  # share of chips at or above the limit
        limit = 72.0 + 3.0 * stats.norm.ppf(1 - above)
        yield "min_percentile_acc_pct", d, Limit("min_percentile_acc_pct", limit, percentile=10.0), _normal(), d >= 0


YIELD_CLEAN = CleanFigures(80.0, 78.0, spec_threshold=50.0)


@pytest.mark.parametrize("cases", [_mean_cases, _share_cases], ids=["mean limits", "share limits"])
def test_wrong_decisions_stay_within_one_minus_confidence(cases):
    """Near the limit (within 2 standard errors of the cap's estimate, where a wrong call is
    likeliest), decisions against the truth happen in at most 1 − c of the runs, give or take
    three Monte-Carlo standard errors, for every kind and population shape."""
    worst = {}
    for seed, (kind, d, limit, draw, truth) in enumerate(cases()):
        wrong, _ = _simulate(limit, draw, truth, clean=YIELD_CLEAN, seed=seed)
        worst[kind, d] = wrong
    assert max(worst.values()) <= _tolerance(RUNS), {k: v for k, v in worst.items() if v > ALPHA}


def test_drop_and_stability_limits_decide_as_the_mean_limits_they_amount_to():
    """Acc_pretrain and Acc_retrain are fixed, so max_acc_drop_pct D is mean ≥ Acc_pretrain − D
    and min_stability S is mean ≥ Acc_pretrain − Acc_retrain/S: the same decisions, chip for chip."""
    rng = np.random.default_rng(11)
    outcomes = set()
    for _ in range(200):
        accs = rng.normal(72.0, 3.0, int(rng.integers(5, 60))).tolist()
        mean_limit = 72.0 + rng.uniform(-2.0, 2.0)
        as_mean = decide(Limit("min_acc_defect_pct", mean_limit), accs, CLEAN, 0.995)
        outcomes.add(as_mean)
        assert decide(Limit("max_acc_drop_pct", 80.0 - mean_limit), accs, CLEAN, 0.995) is as_mean
        assert decide(Limit("min_stability", 78.0 / (80.0 - mean_limit)), accs, CLEAN, 0.995) is as_mean
    assert outcomes == {PASS, FAIL, UNDECIDED}


def test_without_the_correction_the_same_check_sees_too_many_wrong_decisions():
    """The simulation can tell: bounds at 95 % at each of 10 looks (no correction) decide wrongly
    far more often than 5 % when the truth sits on the limit."""
    uncorrected = Plan(CAP, BATCH, confidence=1 - 10 * ALPHA)  # every look at 1 − ALPHA
    assert uncorrected.look_confidence == pytest.approx(CONFIDENCE)
    wrong, _ = _simulate(Limit("min_acc_defect_pct", 72.0), _normal(), True, plan=uncorrected)
    assert wrong > _tolerance(RUNS), wrong
    corrected, _ = _simulate(Limit("min_acc_defect_pct", 72.0), _normal(), True)
    assert corrected <= _tolerance(RUNS) < wrong


@pytest.mark.parametrize("kind", ["min_acc_defect_pct", "min_yield_pct"])
def test_far_from_the_limit_a_rate_stops_early(kind):
    """4 standard errors of the cap's estimate from the limit, either side: well under the cap on
    average and never a wrong decision; 10 standard errors: the first look or two."""
    for d, most in ((4.0, 0.6), (-4.0, 0.6), (10.0, 0.3), (-10.0, 0.3)):
        if kind == "min_acc_defect_pct":
            limit, draw, clean = Limit(kind, 72.0 - d * 3.0 / math.sqrt(CAP)), _normal(), CLEAN
        else:
            share = min(1.0, 0.5 + d * math.sqrt(0.25 / CAP))
            limit, draw, clean = Limit(kind, 50.0), (lambda rng, n, s=share: 100.0 * (rng.random(n) < s)), YIELD_CLEAN
        wrong, drawn = _simulate(limit, draw, d > 0, clean=clean, runs=200)
        assert wrong == 0 and drawn <= most * CAP, (d, wrong, drawn)
