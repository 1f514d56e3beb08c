"""The stuck-at fault model through the non-ideality registry: identity at rate 0, numpy == torch == DeployedNetwork, the chip
random streams, sampled frequencies, what a stuck cell reads, and gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import make_target
from ftdeploy.chip import DeployedNetwork
from ftdeploy.faults import code_expectation, faulty_weight as _faulty_weight, quantized_weight
from ftdeploy.mapping import MAPPINGS, make_mapping, quantize_codes, scale_of
from ftdeploy.nonideality import CHEN2015_SPLIT, HEALTHY, STUCK_OFF, STUCK_ON, CellRange, FaultModel, StuckAt, chip_rng
from ftdeploy.population import SimulatedChips, chip_accuracies
from ftdeploy.profiles import load_target


# One kind at a time, in the terms of the fault model itself: a state per layer, applied and decoded.
def faulty_codes(mapping, levels, state, kind):
    return mapping.decode(kind.apply(levels, state, CellRange.of(mapping.target)))


def draw_chip_states(kind, shapes, rng):
    return [states[0] for states in FaultModel([kind]).draw(shapes, rng)]


def faulty_weight(w, mapping, kind, state=None, **kw):
    return _faulty_weight(w, mapping, FaultModel([kind]), states=None if state is None else [state], **kw)


def net_chip_accuracies(net, kind, rate, chips, seed, x, y, mean, std):
    return chip_accuracies(net.backend(x, y, mean, std), SimulatedChips(FaultModel([kind]), rate, seed, chips))

#: (target name, scale) pairs: every shipped mapping with per-layer and per-channel scale.
#: (test_target_lists_cover_every_mapping keeps "every" true when a mapping is added.)
ONE_TARGET_PER_MAPPING = ("paper-diff8", "paper-diff8-inverted", "offset-8", "mlc2-bitsliced")
TARGET_SCALES = [(n, s) for n in ONE_TARGET_PER_MAPPING for s in ("layer", "channel")]

#: A gradient that goes through ``× s`` and then ``÷ s`` (the straight-through path of
#: ``(w/s + c)·s``) is rounded twice in float32, so it equals the upstream gradient to 2 ulp,
#: not bit for bit.
STE_RTOL = 1e-6
#: The scale-path gradient sums ~20 float32 products; compare it to a float64 hand sum.
SCALE_GRAD_RTOL = 1e-5


def _target(name: str, scale: str):
    target, _ = load_target(name)
    return target.model_copy(update={"scale": scale}) if target.scale.value != scale else target


def _weight(shape=(6, 5), seed=0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _images(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8)


MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


# --- rate 0 is the identity -----------------------------------------------------------------


def test_rate_zero_samples_no_stuck_cell():
    clean = StuckAt.from_pair(0.0, 0.0)
    assert clean.is_identity and not StuckAt.from_pair(1e-12, 0.0).is_identity
    assert (clean.draw((1000, 7), np.random.default_rng(0)) == HEALTHY).all()
    assert (clean.draw_torch((1000, 7), "cpu", torch.Generator().manual_seed(0)) == HEALTHY).all()
    # u is in [0, 1): u == 0 must not count as stuck-off at rate 0
    assert (clean.state_from_uniform(np.zeros(5)) == HEALTHY).all()


def test_target_lists_cover_every_mapping():
    """The parametrised fault-model tests run on one shipped target per registered mapping."""
    assert sorted(load_target(n)[0].mapping for n in ONE_TARGET_PER_MAPPING) == sorted(MAPPINGS)


@pytest.mark.parametrize("name,scale", TARGET_SCALES)
def test_rate_zero_gives_the_clean_weights_exactly(name, scale):
    target = _target(name, scale)
    mapping = make_mapping(target)
    clean = StuckAt.from_pair(0.0, 0.0)
    for seed in range(3):
        w = _weight((8, 3, 3, 3), seed)
        s = scale_of(w, target)
        codes = quantize_codes(w, s, target)
        levels = mapping.encode(codes)
        state = clean.draw_torch(tuple(levels.shape), "cpu", torch.Generator().manual_seed(seed))
        assert torch.equal(clean.apply(levels, state, CellRange.of(mapping.target)), levels)
        assert torch.equal(faulty_codes(mapping, levels, state, clean), codes.to(torch.float32))
        levels_np = levels.numpy()
        assert np.array_equal(faulty_codes(mapping, levels_np, state.numpy(), clean), codes.numpy().astype(np.float32))
        deployed = codes.to(torch.float32) * s  # as DeployedNetwork.clear() and the ONNX Mul compute it
        assert torch.equal(faulty_weight(w, mapping, clean).detach(), deployed)
        assert torch.equal(faulty_weight(w, mapping, clean, state=state).detach(), deployed)
        assert torch.equal(quantized_weight(w, mapping).detach(), deployed)


def test_chip_accuracies_at_rate_zero_equal_fault_free_accuracy(tiny_net):
    x = _images()
    net = DeployedNetwork(tiny_net, load_target("paper-diff8")[0])
    with torch.no_grad():
        y = net.model(_normalized(x)).argmax(1)
    clean = net.accuracy(x, y, MEAN, STD)
    assert clean == 100.0  # labels are the deployed net's own predictions
    assert net_chip_accuracies(net, StuckAt.from_pair(0.0, 0.0), 0.0, 4, 0, x, y, MEAN, STD) == [clean] * 4
    # a rate too small to hit any of the ~500 cells takes the full chip path and still matches
    tiny = StuckAt.from_pair(1e-12, 1e-12)
    assert net_chip_accuracies(net, tiny, 2e-12, 3, 0, x, y, MEAN, STD) == [clean] * 3
    # faults do bite at a high rate, and the fault-free weights come back afterwards
    before = [layer.module.weight.clone() for layer in net.layers]
    faulty = net_chip_accuracies(net, StuckAt.from_pair(0.1, 0.2), 0.3, 3, 0, x, y, MEAN, STD)
    assert max(faulty) < clean
    for layer, w in zip(net.layers, before):
        assert torch.equal(layer.module.weight, w)
    assert net.accuracy(x, y, MEAN, STD) == clean


def _normalized(x):
    from ftdeploy.data import normalize

    return normalize(x, MEAN, STD)


# --- one fault model, three code paths ------------------------------------------------------


@pytest.mark.parametrize("name,scale", TARGET_SCALES)
def test_numpy_torch_and_deployed_network_agree_bit_for_bit(name, scale, tiny_net):
    target = _target(name, scale)
    net = DeployedNetwork(tiny_net, target)
    mapping = net.mapping
    nonideality = StuckAt.from_total(0.2, CHEN2015_SPLIT)
    originals = dict(tiny_net.named_modules())
    rate, seed = 0.2, 7
    for chip in range(2):
        states = draw_chip_states(nonideality, net.cell_shapes, chip_rng(seed, rate, chip))
        assert [s.shape for s in states] == net.cell_shapes and all(s.dtype == np.uint8 for s in states)
        net.load_chip(FaultModel([nonideality]), [[st] for st in states])
        changed = 0
        for layer, state in zip(net.layers, states):
            # the verifier's path: numpy levels -> faulted -> decoded -> times the layer scale
            levels_np = layer.levels.numpy()
            codes_np = mapping.decode(nonideality.apply(levels_np, state, CellRange.of(mapping.target)))
            w_np = codes_np * layer.scale.numpy()
            assert w_np.dtype == np.float32
            # the trainer's path, on the original (unfolded: no BatchNorm here) weight
            w_train = faulty_weight(originals[layer.name].weight, mapping, nonideality, state=torch.from_numpy(state))
            np.testing.assert_array_equal(w_train.detach().numpy(), w_np)
            # the fast evaluator's path
            np.testing.assert_array_equal(layer.module.weight.detach().numpy(), w_np)
            changed += int((w_np != (layer.codes.to(torch.float32) * layer.scale).numpy()).sum())
        assert changed > 0, "no weight changed: the comparison would be vacuous"
    net.clear()


def test_faulty_weight_draws_its_chip_from_the_generator():
    target = load_target("paper-diff8")[0]
    mapping = make_mapping(target)
    nonideality = StuckAt.from_pair(0.05, 0.1)
    w = _weight((16, 16))
    a = faulty_weight(w, mapping, nonideality, generator=torch.Generator().manual_seed(3))
    b = faulty_weight(w, mapping, nonideality, generator=torch.Generator().manual_seed(3))
    c = faulty_weight(w, mapping, nonideality, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    state = nonideality.draw_torch((2, 16, 16), "cpu", torch.Generator().manual_seed(3))
    assert torch.equal(faulty_weight(w, mapping, nonideality, state=state), a)


# --- chip random streams --------------------------------------------------------------------


def test_chip_rng_is_reproducible_and_distinct():
    draw = lambda *key: chip_rng(*key).random(8)  # noqa: E731
    np.testing.assert_array_equal(draw(0, 0.01, 3), draw(0, 0.01, 3))
    keys = [(seed, rate, chip) for seed in (0, 1) for rate in (0.001, 0.002, 0.01, 0.5) for chip in range(5)]
    streams = {tuple(draw(*k)) for k in keys}
    assert len(streams) == len(keys)
    # keyed by the rate's value, not its float spelling
    np.testing.assert_array_equal(draw(0, 0.1 + 0.2, 1), draw(0, 0.3, 1))
    nonideality = StuckAt.from_pair(0.1, 0.1)
    shapes = [(2, 4, 3), (8, 5)]
    a = draw_chip_states(nonideality, shapes, chip_rng(5, 0.2, 9))
    b = draw_chip_states(nonideality, shapes, chip_rng(5, 0.2, 9))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert [x.shape for x in a] == shapes


# --- sampled frequencies ----------------------------------------------------------------------

N_CELLS = 1_000_000
SIGMAS = 6  # seeded, so deterministic; 6 sigma keeps a correct sampler far from the edge


def _within_binomial(count: int, n: int, p: float) -> bool:
    return abs(count - n * p) <= SIGMAS * math.sqrt(n * p * (1 - p)) + 1


@pytest.mark.parametrize("off,on", [(0.01, 0.05), (0.3, 0.0), (0.0, 0.002), (0.25, 0.5)])
@pytest.mark.parametrize("sampler", ["numpy", "torch"])
def test_sampled_frequencies_match_the_rates(off, on, sampler):
    nonideality = StuckAt.from_pair(off, on)
    if sampler == "numpy":
        state = nonideality.draw((1000, 1000), np.random.default_rng(1))
    else:
        state = nonideality.draw_torch((1000, 1000), "cpu", torch.Generator().manual_seed(1)).numpy()
    assert state.dtype == np.uint8 and set(np.unique(state)) <= {HEALTHY, STUCK_OFF, STUCK_ON}
    n_off, n_on = int((state == STUCK_OFF).sum()), int((state == STUCK_ON).sum())
    assert _within_binomial(n_off, N_CELLS, off), (n_off, off)
    assert _within_binomial(n_on, N_CELLS, on), (n_on, on)


def test_chen2015_split():
    nonideality = StuckAt.from_total(0.01, CHEN2015_SPLIT)
    assert CHEN2015_SPLIT == (1.75, 9.04)
    assert nonideality.total == pytest.approx(0.01, rel=1e-12)
    off, on = nonideality.pair
    assert on / off == pytest.approx(9.04 / 1.75, rel=1e-12)
    assert off / nonideality.total == pytest.approx(0.162, abs=5e-4)  # 16.2 % stuck-off
    assert StuckAt(p_sa=0.01).pair == pytest.approx((off, on), rel=1e-12)
    state = StuckAt.from_total(0.1, CHEN2015_SPLIT).draw((N_CELLS,), np.random.default_rng(2))
    n_off, n_on = int((state == STUCK_OFF).sum()), int((state == STUCK_ON).sum())
    n = n_off + n_on
    assert _within_binomial(n, N_CELLS, 0.1)
    assert _within_binomial(n_off, n, 1.75 / 10.79)  # of the faulty cells, 16.2 % stuck-off


def test_stuck_at_rejects_bad_rates():
    for off, on, why in [(-0.1, 0.0, "greater than or equal to 0"), (0.0, -1e-9, "greater than or equal to 0"),
                         (0.6, 0.5, "must be at most 1")]:  # fmt: skip
        with pytest.raises(ValueError, match=why):
            StuckAt.from_pair(off, on)
    StuckAt.from_pair(0.5, 0.5)  # every cell stuck is allowed


# --- what a stuck cell reads ------------------------------------------------------------------


@pytest.mark.parametrize("xp", ["numpy", "torch"])
def test_stuck_off_reads_level_zero_and_stuck_on_the_top_level(xp):
    levels = np.array([[0, 3, 7, 2], [5, 0, 1, 7]])
    state = np.array([[STUCK_OFF, STUCK_ON, HEALTHY, STUCK_ON], [HEALTHY, STUCK_OFF, STUCK_ON, HEALTHY]], np.uint8)
    expected = [[0, 7, 7, 7], [5, 0, 7, 7]]
    if xp == "torch":
        out = StuckAt.from_pair(0.1, 0.1).apply(torch.from_numpy(levels).int(), torch.from_numpy(state), CellRange(7, 1.0, 100.0))
        assert not out.dtype.is_floating_point
        out = out.numpy()
    else:
        out = StuckAt.from_pair(0.1, 0.1).apply(levels, state, CellRange(7, 1.0, 100.0))
    np.testing.assert_array_equal(out, expected)


def _read(mapping, code: int, stuck: dict[str, int]) -> float:
    """The code a chip reads for one weight with the named cells stuck."""
    levels = mapping.encode(np.array([code]))
    state = np.zeros_like(levels, dtype=np.uint8)
    for cell, st in stuck.items():
        state[mapping.cell_names.index(cell)] = st
    return float(faulty_codes(mapping, levels, state, StuckAt.from_pair(0.1, 0.1))[0])


def test_differential_stuck_cell_semantics():
    """paper-diff8 has L == Q == 127: a stuck-on cell reads the full scale, so a zero weight
    becomes +-max|W| (the deployed value of the layer's largest weight, bit for bit)."""
    target = load_target("paper-diff8")[0]
    m = make_mapping(target)
    assert m.max_level == m.max_code == 127
    assert _read(m, 0, {"pos": STUCK_ON}) == 127
    assert _read(m, 0, {"neg": STUCK_ON}) == -127
    assert _read(m, 0, {"pos": STUCK_ON, "neg": STUCK_ON}) == 0
    assert _read(m, 5, {"neg": STUCK_ON}) == 5 - 127  # the other cell keeps its level
    assert _read(m, -3, {"pos": STUCK_ON}) == 127 - 3
    assert _read(m, 40, {"pos": STUCK_OFF}) == 0
    assert _read(m, 40, {"neg": STUCK_OFF}) == 40  # already at level 0: no change
    assert _read(m, -40, {"pos": STUCK_OFF}) == -40

    w = torch.tensor([[0.0, 0.3], [-0.8, 1.7]])
    state = torch.zeros(2, 2, 2, dtype=torch.uint8)
    state[0, 0, 0] = STUCK_ON  # pos cell of the zero weight
    faulty = faulty_weight(w, m, StuckAt.from_pair(0.1, 0.1), state=state).detach()
    assert faulty[0, 0] == quantized_weight(w, m).detach()[1, 1]  # == 127 * s == deployed max|W|
    assert faulty[0, 0] == pytest.approx(1.7, rel=1e-6)


def test_differential_stuck_on_reads_max_level_not_max_code():
    """With more levels than codes (8-bit cells, 8-bit weights: L = 255, Q = 127) a stuck-on
    cell reads g_on = level L, so it moves the weight by L code steps: about 2·max|W|."""
    m = make_mapping(make_target("differential", bits_per_cell=8, weight_bits=8))
    assert (m.max_level, m.max_code) == (255, 127)
    assert _read(m, 0, {"pos": STUCK_ON}) == 255
    assert _read(m, 127, {"neg": STUCK_ON}) == 127 - 255


def test_inverted_differential_swaps_which_fault_costs_full_scale():
    """paper-diff8-inverted: zero is both cells at level L. A stuck-on cell can only lose the
    weight's own value (|q| at most); a stuck-off cell adds the full scale, as a stuck-on cell
    does on paper-diff8."""
    m = make_mapping(load_target("paper-diff8-inverted")[0])
    np.testing.assert_array_equal(m.encode(np.array([5, -3, 0, 127])), [[127, 124, 127, 127], [122, 127, 127, 0]])
    for code in (-127, -40, -1, 0, 1, 40, 127):
        assert _read(m, code, {"pos": STUCK_ON}) == max(code, 0)  # the negative part is lost
        assert _read(m, code, {"neg": STUCK_ON}) == min(code, 0)
        assert _read(m, code, {"pos": STUCK_OFF}) == max(code, 0) - 127  # the idle side jumps to full scale
        assert _read(m, code, {"neg": STUCK_OFF}) == min(code, 0) + 127
    assert _read(m, 0, {"pos": STUCK_OFF, "neg": STUCK_OFF}) == 0


@pytest.mark.parametrize("rates", [(0.0175, 0.0904), (0.05, 0.05)])
def test_inverted_differential_makes_full_scale_errors_as_rare_as_stuck_off_cells(rates):
    """Over many weights, the share of codes a chip moves by more than half the full scale is
    set by the stuck-on rate on paper-diff8 and by the stuck-off rate on its inverted twin."""
    ni = StuckAt.from_pair(*rates)
    codes = np.random.default_rng(0).integers(-20, 21, size=200_000)  # small weights, as trained ones are
    share = {}
    for name in ("paper-diff8", "paper-diff8-inverted"):
        m = make_mapping(load_target(name)[0])
        levels = m.encode(codes)
        state = ni.draw(levels.shape, np.random.default_rng(1))
        share[name] = float(np.mean(np.abs(faulty_codes(m, levels, state, ni) - codes) > 63))
    # exactly one of the two cells at that fault (both so cancel): 2·p·(1 − p), here to within 3 %
    for name, p in (("paper-diff8", ni.stuck_on), ("paper-diff8-inverted", ni.stuck_off)):
        assert share[name] == pytest.approx(2 * p * (1 - p), rel=0.03), name


def test_offset_stuck_cell_semantics():
    """offset-8: one cell holds q + Q (Q = 127, L = 255), a fault-free reference supplies -Q.
    Stuck-off reads -Q; stuck-on reads L - Q = Q + 1, one step beyond any programmed code."""
    m = make_mapping(load_target("offset-8")[0])
    for code in (-127, -1, 0, 55, 127):
        assert _read(m, code, {"cell": STUCK_OFF}) == -127
        assert _read(m, code, {"cell": STUCK_ON}) == 128


def test_bitsliced_stuck_cell_semantics():
    """mlc2-bitsliced: base-4 digits, L = 3. A stuck cell costs (L - digit)·4**j code steps,
    so the top slice can push a weight beyond +-Q (3·64 = 192 > 127)."""
    m = make_mapping(load_target("mlc2-bitsliced")[0])
    assert m.max_level == 3
    assert _read(m, 0, {"pos0": STUCK_ON}) == 3
    assert _read(m, 0, {"pos3": STUCK_ON}) == 192
    assert _read(m, 0, {"neg2": STUCK_ON}) == -48
    assert _read(m, 100, {"pos3": STUCK_OFF}) == 100 - 64  # 100 = 64 + 2*16 + 4
    assert _read(m, 100, {"pos1": STUCK_ON}) == 100 + (3 - 1) * 4
    assert _read(m, -100, {"pos3": STUCK_ON}) == 192 - 100
    assert _read(m, 127, {f"pos{j}": STUCK_ON for j in range(4)}) == 255


# --- gradients --------------------------------------------------------------------------------


def _grad(w0, mapping, state, block, upstream):
    w = w0.clone().requires_grad_(True)
    (faulty_weight(w, mapping, StuckAt.from_pair(0.1, 0.1), state=state, block_stuck_grad=block) * upstream).sum().backward()
    return w.grad


def _setup(scale="layer"):
    target = make_target("differential", 7, 8, scale=scale)
    mapping = make_mapping(target)
    w = _weight((4, 5), seed=1).clamp(-1.5, 1.5)
    w[0, 0] = 3.0  # the layer's (and row 0's) unique peak
    upstream = torch.rand(4, 5, generator=torch.Generator().manual_seed(2)) + 0.5
    healthy = torch.zeros(2, 4, 5, dtype=torch.uint8)
    return mapping, w, upstream, healthy


def test_healthy_weights_get_the_straight_through_gradient():
    mapping, w, upstream, healthy = _setup()
    g = _grad(w, mapping, healthy, True, upstream)
    mask = torch.ones_like(w, dtype=torch.bool)
    mask[0, 0] = False  # the peak also gets the scale path
    torch.testing.assert_close(g[mask], upstream[mask], rtol=STE_RTOL, atol=0)


def test_stuck_weights_get_no_gradient_when_blocked():
    mapping, w, upstream, state = _setup()
    state[0, 2, 3] = STUCK_ON  # a stuck-on pos cell
    assert w[1, 1] < 0 and w[3, 0] < 0
    state[0, 1, 1] = STUCK_OFF  # pos cell of a negative weight: already level 0, value unchanged
    state[1, 3, 0] = STUCK_OFF  # neg cell of a negative weight: the weight reads 0
    fw = faulty_weight(w, mapping, StuckAt.from_pair(0.1, 0.1), state=state).detach()
    clean = quantized_weight(w, mapping).detach()
    assert fw[1, 1] == clean[1, 1] and fw[3, 0] == 0
    g = _grad(w, mapping, state, True, upstream)
    assert g[2, 3] == 0 and g[1, 1] == 0 and g[3, 0] == 0
    healthy = torch.ones_like(w, dtype=torch.bool)
    healthy[2, 3] = healthy[1, 1] = healthy[3, 0] = healthy[0, 0] = False
    torch.testing.assert_close(g[healthy], upstream[healthy], rtol=STE_RTOL, atol=0)
    # unblocked, the stuck weights train straight through like the others
    g_free = _grad(w, mapping, state, False, upstream)
    for i, j in [(2, 3), (1, 1), (3, 0)]:
        assert g_free[i, j] == pytest.approx(upstream[i, j].item(), rel=STE_RTOL)


@pytest.mark.parametrize("scale", ["layer", "channel"])
def test_stuck_on_cell_sends_gradient_to_the_peak_through_the_scale(scale):
    """faulty = (q + delta)·s with s = max|W|/Q not detached: a stuck-on cell's delta
    (L - level code steps) adds upstream·delta/Q to the peak's gradient, pushing it down."""
    mapping, w, upstream, healthy = _setup(scale)
    stuck = healthy.clone()
    stuck[0, 0, 3] = STUCK_ON  # pos cell of w[0, 3], in the peak's row
    q = quantize_codes(w, scale_of(w, mapping.target), mapping.target)
    delta = mapping.max_level - int(mapping.encode(q)[0, 0, 3])
    assert delta > 0
    g_clean = _grad(w, mapping, healthy, False, upstream)
    g_stuck = _grad(w, mapping, stuck, False, upstream)
    diff = g_stuck - g_clean
    expected = upstream[0, 3].item() * delta / mapping.max_code
    assert diff[0, 0].item() == pytest.approx(expected, rel=SCALE_GRAD_RTOL)
    assert diff[0, 0] > 0  # gradient descent shrinks the positive peak
    others = torch.ones_like(w, dtype=torch.bool)
    others[0, 0] = False
    assert (diff[others] == 0).all()

    # a stuck-on cell in another row reaches the layer peak per layer, but not per channel
    other_row = healthy.clone()
    other_row[0, 2, 1] = STUCK_ON
    diff2 = _grad(w, mapping, other_row, False, upstream) - g_clean
    if scale == "layer":
        assert diff2[0, 0] > 0
        assert (diff2[others] == 0).all()
    else:
        row2_peak = int(w[2].abs().argmax())
        assert diff2[0, 0] == 0
        assert diff2[2, row2_peak] != 0


def test_scale_gradient_matches_the_hand_derivation():
    """Full peak gradient with one blocked stuck-on weight: direct STE term plus
    sign(w_peak)/Q · [Σ_healthy g·(code - w/s + delta) + Σ_stuck g·(code + delta)]."""
    mapping, w, upstream, state = _setup()
    state[0, 2, 3] = STUCK_ON
    g = _grad(w, mapping, state, True, upstream)
    s = (w.abs().max() / 127).double()
    codes = torch.round(w.double() / s)
    faulty = faulty_codes(mapping, mapping.encode(codes.int()), state, StuckAt.from_pair(0.1, 0.1)).double()
    delta = faulty - codes
    per_weight = codes - w.double() / s + delta
    per_weight[2, 3] = codes[2, 3] + delta[2, 3]  # blocked: only its value scales with s
    expected = upstream[0, 0].double() + (upstream.double() * per_weight).sum() / 127
    assert g[0, 0].item() == pytest.approx(expected.item(), rel=SCALE_GRAD_RTOL)


@pytest.mark.parametrize("placement", ["fold", "periphery"])
def test_cells_hold_the_weights_the_target_places_batchnorm_for(placement):
    """fold: the chip's cells hold W·γ/σ (BatchNorm folded away); periphery: the cells hold the
    conv weight W and BatchNorm stays, as a fixed per-channel scale and shift after the crossbar.
    Both compute the same function of the input up to quantisation."""
    from ftdeploy.models import create_model

    torch.manual_seed(0)
    model = create_model("democnn", width=8).eval()
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data = torch.rand(m.weight.shape, generator=g) * 3 + 0.2
            m.running_var = torch.rand(m.running_var.shape, generator=g) + 0.1
    target = load_target("paper-diff8")[0].model_copy(update={"batchnorm": placement})
    net = DeployedNetwork(model, target)
    conv = dict(model.named_modules())["0"]
    bn = dict(model.named_modules())["1"]
    layer = next(layer for layer in net.layers if layer.name == "0")
    if placement == "fold":
        held = conv.weight * (bn.weight * torch.rsqrt(bn.running_var + bn.eps)).view(-1, 1, 1, 1)
    else:
        held = conv.weight
    half_step = layer.scale / 2 + 1e-7
    assert torch.all((layer.codes * layer.scale - held).abs() <= half_step)
    x = _normalized(_images(16))
    with torch.no_grad():
        torch.testing.assert_close(net.model(x), model(x), atol=0.15, rtol=0.05)


# --- the chip population's average weight ---------------------------------------------------------


@pytest.mark.parametrize("name", ONE_TARGET_PER_MAPPING)
@pytest.mark.parametrize("rates", [(0.0, 0.0), (0.01, 0.04), (0.2, 0.1)])
def test_code_expectation_is_the_exact_average_over_every_cell_state(name, rates):
    """Enumerate every combination of cell states of one weight (3^cells, each with its
    probability) and average what the chip reads: that is a·q + b, for every code."""
    import itertools

    mapping = make_mapping(_target(name, "layer"))
    ni = StuckAt.from_pair(*rates)
    a, b = code_expectation(mapping, FaultModel([ni]))
    p = {HEALTHY: 1 - ni.total, STUCK_OFF: ni.stuck_off, STUCK_ON: ni.stuck_on}
    codes = np.array([-mapping.max_code, -37, -1, 0, 1, 64, mapping.max_code])
    levels = mapping.encode(codes)
    expected = np.zeros(len(codes))
    for combo in itertools.product((HEALTHY, STUCK_OFF, STUCK_ON), repeat=mapping.cells_per_weight):
        state = np.broadcast_to(np.array(combo, dtype=np.uint8)[:, None], levels.shape)
        expected += math.prod(p[c] for c in combo) * faulty_codes(mapping, levels, state, ni)
    np.testing.assert_allclose(a * codes + b, expected, rtol=1e-6, atol=1e-4)  # float32 reads
    if ni.is_identity:
        assert (a, b) == (1.0, 0.0)


def test_differential_pair_chips_hold_the_weights_shrunk_by_one_minus_p():
    mapping = make_mapping(_target("paper-diff8", "layer"))
    assert code_expectation(mapping, FaultModel.stuck_at(0.05, CHEN2015_SPLIT)) == pytest.approx((0.95, 0.0))


@pytest.mark.parametrize("name", ["paper-diff8", "offset-8"])
def test_unbiased_faulty_weight_maps_the_chip_back_through_its_expectation(name):
    """unbiased: (q' − b)/a · s on the same chip; at rate 0 exactly the clean weight."""
    mapping = make_mapping(_target(name, "layer"))
    w = _weight((8, 9), seed=4)
    ni = StuckAt.from_pair(0.05, 0.1)
    state = ni.draw_torch((mapping.cells_per_weight, *w.shape), "cpu", torch.Generator().manual_seed(5))
    a, b = code_expectation(mapping, FaultModel([ni]))
    s = scale_of(w, mapping.target)
    raw = faulty_weight(w, mapping, ni, state=state)
    torch.testing.assert_close(faulty_weight(w, mapping, ni, state=state, unbiased=True), (raw / s - b) / a * s)
    none = StuckAt.from_pair(0.0, 0.0)
    clean = faulty_weight(w, mapping, none, state=torch.zeros_like(state), unbiased=True)
    assert torch.equal(clean, quantized_weight(w, mapping))


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("blocked", [False, True])
def test_the_read_back_step_has_the_gradients_of_the_straight_through_quantiser(unbiased, blocked):
    """faults._ReadBack writes out the gradients autograd gives through ``q = W/s``,
    ``q + (codes − q)``, the frozen weights detached, and ``(· − b)/a · s``: the same to float
    rounding, for a scale per output channel (broadcast, its gradient summed per channel)."""
    from ftdeploy.faults import _ReadBack

    gen = torch.Generator().manual_seed(0)
    w0, upstream = torch.randn(6, 5, generator=gen), torch.randn(6, 5, generator=gen)
    s0 = w0.abs().amax(1, keepdim=True) / 127
    read = torch.round(w0 / s0) + torch.randint(-3, 4, (6, 5), generator=gen).float()
    frozen = torch.rand(6, 5, generator=gen) < 0.3
    a, b = (0.9, 0.4) if unbiased else (1.0, 0.0)
    grads = []
    for fused in (True, False):
        w, s = w0.clone().requires_grad_(), s0.clone().requires_grad_()
        if fused:
            out = _ReadBack.apply(w, s, read, ~frozen if blocked else None, a, b)
        else:
            u = w / s
            q = u + (read - u).detach()
            if blocked:
                q = torch.where(frozen, q.detach(), q)
            out = (q - b) / a * s
        (out * upstream).sum().backward()
        grads.append((out.detach(), w.grad, s.grad))
    for fused, composite in zip(*grads):  # the scale's gradient sums terms that cancel: rounding relative to its terms
        torch.testing.assert_close(fused, composite, rtol=1e-5, atol=1e-5 * float((upstream * read).abs().sum()))
    assert (grads[0][1][frozen] == 0).all() == blocked
