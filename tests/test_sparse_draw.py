"""Training's sparse stuck-at draw: the stuck cells alone, drawn with the distribution of the
dense draw, and faulting the weights exactly as the dense path does for the same cells."""

from __future__ import annotations

import math

import pytest
import torch

from ftdeploy.faults import faulty_weight
from ftdeploy.mapping import MAPPINGS, make_mapping
from ftdeploy.nonideality import FaultModel, ProgrammingVariation, StuckAt
from ftdeploy.nonideality.stuck_at import bernoulli_positions
from ftdeploy.profiles import load_target

#: One shipped target per mapping (differential, inverted pair, offset column, bit-sliced).
TARGETS = ["paper-diff8", "paper-diff8-inverted", "offset-8", "mlc2-bitsliced"]
SIGMAS = 5  # seeded draws, so deterministic; 5 sigma leaves a correct sampler far from the edge


def _within_binomial(count: int, n: int, p: float) -> bool:
    return abs(count - n * p) <= SIGMAS * math.sqrt(n * p * (1 - p)) + 1


def _dense_states(stuck: StuckAt, cells: int, shape, seed: int):
    """The state a sparse draw seeded ``seed`` gives (cells, *shape), as the dense path takes it."""
    count = cells * math.prod(shape)
    positions, on = stuck.draw_stuck_torch(count, "cpu", torch.Generator().manual_seed(seed))
    return StuckAt.state_of_stuck(positions, on, (cells, *shape), "cpu")


def test_the_targets_cover_every_mapping():
    assert {load_target(name)[0].mapping for name in TARGETS} == set(MAPPINGS)


@pytest.mark.parametrize("name", TARGETS)
@pytest.mark.parametrize("scale", ["layer", "channel"])
@pytest.mark.parametrize("block", [True, False])
@pytest.mark.parametrize("unbiased", [False, True])
def test_sparse_draw_gives_the_dense_values_and_gradients_for_the_same_stuck_cells(name, scale, block, unbiased):
    target = load_target(name)[0].model_copy(update={"scale": scale})
    mapping = make_mapping(target)
    stuck = StuckAt.from_pair(0.05, 0.15)  # high enough that some weights have several stuck cells
    faults = FaultModel([stuck])
    w = torch.randn(12, 4, 3, 3, generator=torch.Generator().manual_seed(1), requires_grad=True)
    upstream = torch.randn(w.shape, generator=torch.Generator().manual_seed(2))

    def run(**how):
        out = faulty_weight(w, mapping, faults, block_stuck_grad=block, unbiased=unbiased, **how)
        (out * upstream).sum().backward()
        grad, w.grad = w.grad, None
        return out.detach(), grad

    sparse, sparse_grad = run(generator=torch.Generator().manual_seed(5), draw="sparse")
    state = _dense_states(stuck, mapping.cells_per_weight, w.shape, 5)
    dense, dense_grad = run(states=[state])
    assert torch.equal(sparse, dense) and torch.equal(sparse_grad, dense_grad)
    clean = faulty_weight(w, mapping, FaultModel()).detach()
    assert (state != 0).any() and not torch.equal(sparse, clean), "the chip must have stuck cells that change weights"
    if block:
        hit = (state != 0).any(0)
        assert (sparse_grad[hit] == 0).all() and (sparse_grad[~hit] != 0).any()


def test_sparse_draw_at_rate_zero_is_the_quantised_weight():
    mapping = make_mapping(load_target("paper-diff8")[0])
    w = torch.randn(8, 8, generator=torch.Generator().manual_seed(0))
    clean = faulty_weight(w, mapping, FaultModel())
    for faults in (FaultModel.stuck_at(0.0), FaultModel()):
        assert torch.equal(faulty_weight(w, mapping, faults, generator=torch.Generator(), draw="sparse"), clean)


def test_with_kinds_other_than_stuck_at_the_draw_is_dense():
    """Variation changes every cell, so the sparse draw cannot stand for it: the same generator
    gives the dense chip. With stuck-at alone the two draws give other chips (the test can fail)."""
    mapping = make_mapping(load_target("paper-diff8")[0])
    w = torch.randn(16, 16, generator=torch.Generator().manual_seed(0))

    def both(faults):
        return [faulty_weight(w, mapping, faults, generator=torch.Generator().manual_seed(3), draw=draw)
                for draw in ("sparse", "dense")]  # fmt: skip

    varied = FaultModel([StuckAt.from_total(0.1), ProgrammingVariation(sigma_rel=0.05)])
    assert torch.equal(*both(varied))
    assert not torch.equal(*both(FaultModel.stuck_at(0.1)))


@pytest.mark.parametrize("off,on", [(0.01, 0.05), (0.3, 0.0), (0.0, 0.002), (0.25, 0.5)])
def test_sparse_draw_frequencies_match_the_rates_at_uniform_positions(off, on):
    n = 1_000_000
    positions, stuck_on = StuckAt.from_pair(off, on).draw_stuck_torch(n, "cpu", torch.Generator().manual_seed(1))
    assert positions.dtype == torch.int64 and bool((positions.diff() > 0).all()), "ascending, no cell twice"
    assert 0 <= int(positions[0]) and int(positions[-1]) < n
    n_on = int(stuck_on.sum())
    assert _within_binomial(len(positions) - n_on, n, off) and _within_binomial(n_on, n, on)
    # uniform over the cells: every tenth of the range (each cell of a 10-cell mapping) as often
    counts = torch.bincount(positions * 10 // n, minlength=10)
    assert all(_within_binomial(int(c), n // 10, off + on) for c in counts), counts
    # and no preference for one kind of fault anywhere: stuck-on as common in either half
    halves = [stuck_on[positions < n // 2], stuck_on[positions >= n // 2]]
    assert all(_within_binomial(int(h.sum()), n // 2, on) for h in halves)


def test_each_cell_is_stuck_independently_of_its_neighbour():
    """Gaps between stuck cells are Geometric(p): the cell after a stuck one is stuck with
    probability p, as any other (a draw that spread positions evenly would fail this)."""
    p, n = 0.2, 1_000_000
    positions = bernoulli_positions(n, p, "cpu", torch.Generator().manual_seed(4))
    gaps = positions.diff()
    assert _within_binomial(int((gaps == 1).sum()), len(gaps), p)
    assert _within_binomial(int((gaps == 2).sum()), len(gaps), p * (1 - p))


def test_positions_drawn_in_small_chunks_are_the_same_distribution():
    """The walk continues past a chunk that falls short of the end (rare at the default size)."""
    p, n = 0.05, 200_000
    positions = bernoulli_positions(n, p, "cpu", torch.Generator().manual_seed(2), chunk=100)
    assert bool((positions.diff() > 0).all()) and int(positions[-1]) < n
    assert _within_binomial(len(positions), n, p) and int(positions[-1]) > n - 200
    halves = [int((positions < n // 2).sum()), int((positions >= n // 2).sum())]
    assert all(_within_binomial(h, n // 2, p) for h in halves)


def test_rate_zero_draws_no_cell_and_rate_one_every_cell():
    g = torch.Generator().manual_seed(0)
    positions, on = StuckAt.from_total(0.0).draw_stuck_torch(1000, "cpu", g)
    assert positions.numel() == 0 and on.numel() == 0
    positions, on = StuckAt.from_pair(0.25, 0.75).draw_stuck_torch(100_000, "cpu", g)
    assert torch.equal(positions, torch.arange(100_000))
    assert _within_binomial(int(on.sum()), 100_000, 0.75)
    positions, on = StuckAt.from_pair(0.0, 1.0).draw_stuck_torch(1000, "cpu", g)
    assert len(positions) == 1000 and bool(on.all())
    positions, _ = StuckAt.from_total(0.5).draw_stuck_torch(0, "cpu", g)
    assert positions.numel() == 0


def test_a_seeded_generator_draws_the_same_cells_and_another_seed_others():
    stuck = StuckAt.from_total(0.02)

    def draw(seed):
        return stuck.draw_stuck_torch(500_000, "cpu", torch.Generator().manual_seed(seed))

    (a, a_on), (b, b_on), (c, _) = draw(7), draw(7), draw(8)
    assert torch.equal(a, b) and torch.equal(a_on, b_on)
    assert not torch.equal(a[: min(len(a), len(c))], c[: min(len(a), len(c))])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sparse_draw_on_cuda_matches_the_dense_path_there():
    mapping = make_mapping(load_target("mlc2-bitsliced")[0])
    stuck = StuckAt.from_pair(0.02, 0.08)
    w = torch.randn(64, 32, 3, 3, device="cuda", generator=torch.Generator("cuda").manual_seed(0), requires_grad=True)
    out = faulty_weight(w, mapping, FaultModel([stuck]), generator=torch.Generator("cuda").manual_seed(3), draw="sparse")
    positions, on = stuck.draw_stuck_torch(mapping.cells_per_weight * w.numel(), "cuda", torch.Generator("cuda").manual_seed(3))
    assert _within_binomial(len(positions), mapping.cells_per_weight * w.numel(), 0.1)
    state = StuckAt.state_of_stuck(positions, on, (mapping.cells_per_weight, *w.shape), "cuda")
    assert torch.equal(out, faulty_weight(w, mapping, FaultModel([stuck]), states=[state]))
