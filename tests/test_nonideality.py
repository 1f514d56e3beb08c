"""The non-ideality registry and its continuous kinds: programming variation, read noise and
drift do what their definitions say, compose in stage order on one chip, are read afresh per
inference where they should be, and reach training through the same mechanism as stuck-at."""

from __future__ import annotations

import math
import typing

import numpy as np
import pytest
import torch
from pydantic import BaseModel, TypeAdapter, ValidationError

from ftdeploy.faults import faulty_weight
from ftdeploy.mapping import make_mapping
from ftdeploy.models import create_model
from ftdeploy.nonideality import (
    NONIDEALITIES,
    STUCK_ON,
    CellRange,
    Drift,
    FaultModel,
    FaultSpec,
    NonIdeality,
    ProgrammingVariation,
    ReadNoise,
    StuckAt,
    chip_rng,
    seconds,
)
from ftdeploy.population import Chip, ChipId
from ftdeploy.profiles import load_target
from ftdeploy.training.config import TrainConfig
from ftdeploy.training.injection import FaultInjector

CELLS = CellRange(max_level=127, g_off_uS=1.0, g_on_uS=100.0)
N = 200_000


def _levels(shape=(2, N)):
    return np.random.default_rng(0).integers(0, 128, size=shape).astype(np.uint8)


def test_every_registered_kind_is_a_profile_entry_with_documented_fields():
    members = typing.get_args(typing.get_args(FaultSpec)[0])
    assert set(members) == set(NONIDEALITIES.values())
    for kind, cls in NONIDEALITIES.items():
        assert issubclass(cls, NonIdeality) and issubclass(cls, BaseModel)
        assert cls.model_fields["kind"].default == kind
        undocumented = [f for f, info in cls.model_fields.items() if f != "kind" and not info.description]
        assert not undocumented, (kind, undocumented)
    entries = TypeAdapter(list[FaultSpec]).validate_python([{"kind": k, **_minimal(k)} for k in NONIDEALITIES])
    assert [type(e) for e in entries] == list(NONIDEALITIES.values())


def _minimal(kind: str) -> dict:
    return {"stuck-at": {"p_sa": 0.01}, "programming-variation": {"sigma_rel": 0.05}, "read-noise": {"sigma_uS": 1.0},
            "drift": {"nu_mean": 0.05, "at": "1 day"}}[kind]  # fmt: skip


@pytest.mark.parametrize("kind", [ProgrammingVariation(sigma_uS=0.0), ReadNoise(sigma_rel=0.0), Drift(nu_mean=0.0, at=10.0),
                                  Drift(nu_mean=0.3, nu_std=0.1, at=1.0)])  # fmt: skip
def test_a_kind_that_changes_nothing_is_left_out(kind):
    assert kind.is_identity and FaultModel([kind]).is_identity


def test_absolute_variation_spreads_each_conductance_by_sigma_in_microsiemens():
    kind = ProgrammingVariation(sigma_uS=2.0)
    levels = _levels()
    out = kind.apply(levels, kind.draw(levels.shape, np.random.default_rng(1)), CELLS)
    deviation_uS = (out - levels) * CELLS.step_uS
    assert out.dtype == np.float32
    assert abs(deviation_uS.mean()) < 0.02 and deviation_uS.std() == pytest.approx(2.0, rel=0.01)


def test_relative_variation_scales_with_the_conductance():
    kind = ProgrammingVariation(sigma_rel=0.1)
    levels = np.full((1, N), 127, np.uint8)  # every cell at g_on = 100 µS
    out = kind.apply(levels, kind.draw(levels.shape, np.random.default_rng(2)), CELLS)
    assert CELLS.to_uS(out).std() == pytest.approx(10.0, rel=0.01)
    low = kind.apply(np.zeros((1, N), np.uint8), kind.draw((1, N), np.random.default_rng(2)), CELLS)
    assert CELLS.to_uS(low).std() == pytest.approx(0.1, rel=0.01), "g_off = 1 µS spreads by 0.1 µS"


def test_lognormal_variation_never_goes_below_zero_conductance_and_has_the_stated_mean():
    kind = ProgrammingVariation(sigma_rel=0.8, distribution="lognormal")
    levels = np.full((1, N), 64, np.uint8)
    out = kind.apply(levels, kind.draw(levels.shape, np.random.default_rng(3)), CELLS)
    assert CELLS.to_uS(out).min() > 0
    keep, add = kind.level_expectation(CELLS)
    assert out.mean() == pytest.approx(keep * 64 + add, rel=0.01)


def test_drift_follows_the_power_law_exactly_without_spread():
    kind = Drift(nu_mean=0.1, t0_s=1.0, at="1 day")
    levels = _levels((2, 1000))
    out = kind.apply(levels, kind.draw(levels.shape, np.random.default_rng(4)), CELLS)
    expected = CELLS.to_uS(levels) * 86400.0**-0.1
    np.testing.assert_allclose(CELLS.to_uS(out), expected, rtol=1e-5)


def test_drift_spread_and_its_expectation():
    kind = Drift(nu_mean=0.05, nu_std=0.02, at="1 year")
    levels = np.full((1, N), 100, np.uint8)
    out = kind.apply(levels, kind.draw(levels.shape, np.random.default_rng(5)), CELLS)
    keep, add = kind.level_expectation(CELLS)
    assert out.mean() == pytest.approx(keep * 100 + add, rel=0.01)
    assert out.max() <= 100 + 1e-4, "a clipped exponent never makes a cell conduct more"


@pytest.mark.parametrize("text, expected", [(3600, 3600.0), ("1 h", 3600.0), ("1 day", 86400.0), ("2 days", 172800.0),
                                            ("1 year", 31557600.0), ("1.5e3 s", 1500.0), ("10min", 600.0)])  # fmt: skip
def test_durations(text, expected):
    assert seconds(text) == expected


def test_reports_write_durations_back_readably():
    assert Drift(nu_mean=0.1, at="1 year").describe() == "drift (nu_mean 0.1, nu_std 0, t0 1 s, read 1 year after programming)"
    assert "read 2 days after" in Drift(nu_mean=0.1, at=172800).describe()
    assert "read 1.5 h after" in Drift(nu_mean=0.1, at="90 min").describe()


@pytest.mark.parametrize("bad", ["one day", "1 fortnight", "", "-1 h"])
def test_bad_durations_are_refused(bad):
    with pytest.raises((ValueError, ValidationError)):
        Drift(nu_mean=0.1, at=bad)


def test_a_stuck_cell_reads_its_stuck_value_whatever_happened_before():
    faults = FaultModel([StuckAt.from_pair(0.0, 0.5), ProgrammingVariation(sigma_rel=0.2),
                         Drift(nu_mean=0.1, nu_std=0.05, at="1 day")])  # fmt: skip
    assert [k.kind for k in faults.kinds] == ["programming-variation", "drift", "stuck-at"]
    levels = _levels((2, 5000))
    draw = faults.draw([levels.shape], np.random.default_rng(6))
    (out,) = faults.program([levels], draw, CELLS)
    stuck = draw[0][2] == STUCK_ON
    assert stuck.any() and (out[stuck] == 127).all()
    assert not np.allclose(out[~stuck], levels[~stuck]), "healthy cells vary and drift"


def test_read_noise_is_fresh_for_every_inference_and_the_rest_is_fixed_per_chip():
    faults = FaultModel([ProgrammingVariation(sigma_uS=1.0), ReadNoise(sigma_uS=0.5)])
    programmed = [_levels((2, 100))]
    reading = Chip(ChipId(0.0, 0, 3), faults).reading(programmed, CELLS)
    first, second = reading.levels()[0], reading.levels()[0]
    assert reading.per_inference and not np.array_equal(first, second)
    again = Chip(ChipId(0.0, 0, 3), faults).reading(programmed, CELLS)
    assert np.array_equal(again.levels()[0], first), "chip k reads the same sequence every time it is measured"
    fixed = Chip(ChipId(0.0, 0, 3), FaultModel([ProgrammingVariation(sigma_uS=1.0)])).reading(programmed, CELLS)
    assert np.array_equal(fixed.levels()[0], fixed.levels()[0])
    # the noise is what it says: 0.5 µS around the chip's programmed conductances
    spread = ((first - reading._held[0]) * CELLS.step_uS).std()
    assert spread == pytest.approx(0.5, rel=0.1)


def test_a_chip_draws_its_kinds_layer_by_layer_from_its_own_stream():
    faults = FaultModel([StuckAt(p_sa=0.1), ProgrammingVariation(sigma_rel=0.05)])
    shapes = [(2, 3, 4), (2, 5)]
    draw = faults.draw(shapes, chip_rng(1, 0.1, 2))
    rng = chip_rng(1, 0.1, 2)
    for layer, shape in zip(draw, shapes):
        assert np.array_equal(layer[0], ProgrammingVariation(sigma_rel=0.05).draw(shape, rng))
        assert np.array_equal(layer[1], StuckAt(p_sa=0.1).draw(shape, rng))


def test_at_rate_sets_only_the_stuck_at_total():
    faults = FaultModel([StuckAt.from_pair(0.001, 0.004), Drift(nu_mean=0.1, at=100.0)])
    moved = faults.at_rate(0.01)
    assert moved.stuck.pair == pytest.approx((0.002, 0.008)), "the measured ratio, not a default split"
    assert moved.find(Drift) == faults.find(Drift)
    assert FaultModel([Drift(nu_mean=0.1, at=100.0)]).at_rate(0.02).stuck.split == (1.75, 9.04)


def test_training_injects_any_kind_with_a_straight_through_gradient():
    """Noise-aware training is the same mechanism: the faulty weight differs from the clean one,
    and the gradient of a weight on a varied (not stuck) cell passes straight through."""
    mapping = make_mapping(load_target("paper-diff8")[0])
    w = torch.randn(8, 4, requires_grad=True)
    faults = FaultModel([ProgrammingVariation(sigma_rel=0.1), ReadNoise(sigma_uS=1.0)])
    out = faulty_weight(w, mapping, faults, generator=torch.Generator().manual_seed(0))
    clean = faulty_weight(w, mapping, FaultModel(), generator=torch.Generator().manual_seed(0))
    assert not torch.equal(out, clean)
    (out * torch.ones_like(out)).sum().backward()
    assert torch.isfinite(w.grad).all() and (w.grad != 0).all()


def test_the_trainer_draws_the_profiles_kinds_at_the_scheduled_stuck_at_rate():
    config = TrainConfig(method="one-shot", target_rate=0.02,
                         faults=[{"kind": "stuck-at", "p_sa": 0.3, "split": [1, 1]}, {"kind": "drift", "nu_mean": 0.1, "at": 1e4}])  # fmt: skip
    assert config.fault_model.stuck.total == 0.0, "the schedule sets the stuck-at rate"
    model = create_model("democnn", width=8).eval()
    injector = FaultInjector(model, load_target("paper-diff8")[0], seed=0, faults=config.fault_model)
    injector.set_rate(0.02)
    assert injector.faults.stuck.pair == pytest.approx((0.01, 0.01)) and injector.faults.find(Drift).nu_mean == 0.1
    drifted = _first_chip(injector)
    clean = _first_chip(FaultInjector(model, load_target("paper-diff8")[0], seed=0))
    assert all(d.abs().sum() < c.abs().sum() for d, c in zip(drifted, clean)), "drift shrinks every layer's conductances"


def _first_chip(injector: FaultInjector) -> list[torch.Tensor]:
    injector.attach()
    try:
        return [w.detach() for w in injector._draw_chip()]
    finally:
        injector.detach()


def test_old_configs_recording_a_split_load_as_a_stuck_at_entry():
    config = TrainConfig.model_validate({"method": "one-shot", "target_rate": 0.05, "split": [1.0, 3.0]})
    assert config.fault_model.stuck.ratio == (1.0, 3.0)


def test_a_kind_given_twice_is_refused():
    with pytest.raises(ValueError, match="each kind may appear once"):
        FaultModel([StuckAt(p_sa=0.01), StuckAt(p_sa=0.02)])


def test_describe_names_what_is_simulated():
    text = FaultModel([StuckAt.from_pair(0.001, 0.004), ReadNoise(sigma_rel=0.02)]).describe()
    assert "stuck-off 0.001" in text and "stuck-on 0.004" in text and "read-noise (sigma_rel 0.02)" in text
    assert math.isclose(StuckAt.from_pair(0.001, 0.004).total, 0.005)
