"""Weights as a faulty chip computes with them, in torch and differentiable: what fault-tolerant
training injects. A weight is quantised to codes, laid onto cells by the mapping, the chip's
non-idealities (:mod:`ftdeploy.nonideality`) act on the cells, and the cells are read back. A
fault-free chip gives the quantised weight exactly."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .choices import FaultDraw
from .mapping import Mapping, quantize_codes, scale_of
from .nonideality import CellRange, FaultModel, StuckAt


def code_expectation(mapping: Mapping, faults: FaultModel) -> tuple[float, float]:
    """(a, b): a weight's code read back, averaged over chips, is ``a · programmed code + b``.

    Every mapping decodes linearly (``q = Σ c_k·level_k + offset``) and a cell's expected level is
    affine in its programmed level, so the expectation is affine in the code:
    ``a = keep``, ``b = add·Σ c_k + offset·(1 − keep)``. For stuck-at faults on a differential
    pair (or bit-sliced cells, Σ c_k = 0) that is ``(1 − P_sa)·q``: on average a faulty chip holds
    the weights shrunk by ``1 − P_sa``, because a stuck-on cell on either column is as likely and
    cancels out while a stuck-off cell only ever loses the programmed value."""
    keep, add = faults.level_expectation(CellRange.of(mapping.target))
    return keep, add * sum(mapping.coefficients) + mapping.offset * (1.0 - keep)


def faulty_weight(
    weight: torch.Tensor,
    mapping: Mapping,
    faults: FaultModel,
    states: Sequence[torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    block_stuck_grad: bool = True,
    scale: torch.Tensor | None = None,
    unbiased: bool = False,
    draw: FaultDraw = "dense",
) -> torch.Tensor:
    """Differentiable weight as a faulty chip computes with it (training and fast evaluation).

    The weight is quantised to codes at the layer's scale ``s = max|W|/Q`` (round with a
    straight-through gradient), laid onto cells, faulted, read back. Gradients:
      - healthy weights: straight through the quantiser, as in quantisation-aware training;
      - the scale ``s`` is *not* detached, so a stuck-on cell (worth ``L`` levels of ``s``)
        pushes the layer's largest weight down: training learns to shrink the full-scale value
        a stuck-on cell injects, instead of only working around it;
      - a weight with a stuck cell gets no gradient when ``block_stuck_grad`` (its cell does
        not respond to programming on this chip, so a gradient there is noise);
      - continuous kinds (variation, drift, noise) pass the gradient straight through, as
        noise-aware training does.
    ``unbiased`` maps the chip's codes back through :func:`code_expectation`, ``(q' − b) / a``, so
    that the weight averaged over chips is the fault-free one, as inverted dropout divides by the
    keep probability (training only: a real chip does not do this).
    ``states`` gives the chip, one state (cells, *weight.shape) per kind of ``faults`` in stage
    order; without it one is drawn, by ``draw``: ``dense`` draws every cell's state, ``sparse``
    only the stuck cells (:meth:`StuckAt.draw_stuck_torch`). Both give the same distribution of
    chips, and for the same stuck cells the same values and gradients, but not the same chip
    from the same generator (the sparse draw takes as many numbers as its stuck cells need, so
    how far it moves the generator depends on the rate; the dense draw takes one per cell even
    at rate 0). ``scale``
    (broadcastable to ``weight``) replaces ``scale_of(weight)``: the trainer passes it when it
    faults all layers at once as one flat vector.
    """
    target = mapping.target
    s = scale_of(weight, target) if scale is None else scale
    u = weight / s
    codes = quantize_codes(weight.detach(), s.detach(), target)
    q = u + (codes.to(u.dtype) - u).detach()  # value: integer codes; gradient: identity
    if states is None and draw == "sparse" and stuck_at_only(faults):
        read = _read_stuck_sparse(q, codes, mapping, faults.stuck, generator, block_stuck_grad)
    else:
        read = _read_dense(q, codes, mapping, faults, generator, states, block_stuck_grad)
    if unbiased:
        a, b = code_expectation(mapping, faults)
        return (read - b) / a * s
    return read * s


def stuck_at_only(faults: FaultModel) -> bool:
    """True when stuck-at is the fault model's only kind that changes cells: the sparse draw can
    stand for it. Variation, drift and read noise move every cell, so they need a draw per cell
    anyway and the dense path serves them."""
    return all(isinstance(kind, StuckAt) for kind in faults.active)


def _read_dense(q, codes, mapping, faults, generator, states, block_stuck_grad):
    """The codes (as ``q``, with its gradient) a chip drawn cell by cell reads back."""
    levels = mapping.encode(codes)
    read, frozen = faults.sample_torch(levels, CellRange.of(mapping.target), generator, states)
    delta = (mapping.decode(read) - codes.to(torch.float32)).to(q.dtype)
    if block_stuck_grad and frozen is not None:
        q = torch.where(frozen.any(0), q.detach(), q)
    return q + delta


def _read_stuck_sparse(q, codes, mapping, stuck, generator, block_stuck_grad):
    """What :func:`_read_dense` gives for a stuck-at chip, computed on the weights with a stuck
    cell alone: their codes are encoded, faulted and decoded; every other weight reads its code
    (its delta would be an exact 0)."""
    if stuck is None or stuck.is_identity:
        return q
    flat = codes.reshape(-1)
    n = flat.numel()
    positions, stuck_on = stuck.draw_stuck_torch(mapping.cells_per_weight * n, flat.device, generator)
    cell, index = positions // n, positions % n  # levels are laid out (cells, weights)
    hit, slot = torch.unique(index, return_inverse=True)
    hit_codes = flat.index_select(0, hit)
    levels = mapping.encode(hit_codes)
    state = stuck.state_of_stuck(cell * hit.numel() + slot, stuck_on, tuple(levels.shape), flat.device)
    read = stuck.apply(levels, state, CellRange.of(mapping.target))
    delta = (mapping.decode(read) - hit_codes.to(torch.float32)).to(q.dtype)
    q_flat = q.reshape(-1)
    hit_q = q_flat.detach() if block_stuck_grad else q_flat
    # Out of place: the stuck weights' own gradient is replaced (none when blocked), the others keep theirs.
    return q_flat.index_put((hit,), hit_q.index_select(0, hit) + delta).reshape(q.shape)


def quantized_weight(weight: torch.Tensor, mapping: Mapping) -> torch.Tensor:
    """Fault-free deployed weight (codes × scale), with a straight-through gradient."""
    s = scale_of(weight, mapping.target)
    codes = quantize_codes(weight.detach(), s.detach(), mapping.target).to(weight.dtype)
    u = weight / s
    return (u + (codes - u).detach()) * s
