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
    codes = quantize_codes(weight.detach(), s.detach(), target)
    if states is None and draw == "sparse" and stuck_at_only(faults):
        read, frozen = _read_stuck_sparse(codes, mapping, faults.stuck, generator, weight.dtype)
    else:
        read, frozen = _read_dense(codes, mapping, faults, generator, states, weight.dtype)
    a, b = code_expectation(mapping, faults) if unbiased else (1.0, 0.0)
    passes = None if not block_stuck_grad or frozen is None else ~frozen
    return _ReadBack.apply(weight, s, read, passes, a, b)


class _ReadBack(torch.autograd.Function):
    """``(R − b) / a · s``: the codes ``R`` a chip reads back (no gradient of their own) at the
    scale ``s``, with the gradients of the straight-through quantiser ``q = W/s`` written out:
    a weight whose gradient passes (``passes``; None: every weight) gets ``grad / a``, the
    scale ``grad · (R − b − q·passes) / a``. Autograd through ``W/s``, ``q + (codes − q)``
    and ``· s`` gives the same in several more passes over every weight, forward and backward."""

    @staticmethod
    def forward(ctx, weight, scale, read, passes, a: float, b: float):
        ctx.save_for_backward(weight, scale, read, passes)
        ctx.a, ctx.b = a, b
        return read * scale if (a, b) == (1.0, 0.0) else (read - b) / a * scale

    @staticmethod
    def backward(ctx, grad):
        weight, scale, read, passes = ctx.saved_tensors
        a, b = ctx.a, ctx.b
        grad_weight = grad_scale = None
        if ctx.needs_input_grad[0]:
            grad_weight = grad if passes is None else grad * passes
            if a != 1.0:
                grad_weight = grad_weight / a
        if ctx.needs_input_grad[1]:
            straight = weight / scale if passes is None else weight / scale * passes
            slope = read - straight if (a, b) == (1.0, 0.0) else (read - b - straight) / a
            grad_scale = (grad * slope).sum_to_size(scale.shape)
        return grad_weight, grad_scale, None, None, None, None


def stuck_at_only(faults: FaultModel) -> bool:
    """True when stuck-at is the fault model's only kind that changes cells: the sparse draw can
    stand for it. Variation, drift and read noise move every cell, so they need a draw per cell
    anyway and the dense path serves them."""
    return all(isinstance(kind, StuckAt) for kind in faults.active)


def _read_dense(codes, mapping, faults, generator, states, dtype):
    """(the codes a chip drawn cell by cell reads back, as ``dtype``; which weights have a frozen
    cell, None where no kind freezes cells)."""
    levels = mapping.encode(codes)
    read, frozen = faults.sample_torch(levels, CellRange.of(mapping.target), generator, states)
    return mapping.decode(read).to(dtype), None if frozen is None else frozen.any(0)


def _read_stuck_sparse(codes, mapping, stuck, generator, dtype):
    """What :func:`_read_dense` gives for a stuck-at chip, computed on the weights with a stuck
    cell alone: their codes are encoded, faulted and decoded; every other weight reads its code."""
    flat = codes.reshape(-1)
    read = flat.to(dtype)
    if stuck is None or stuck.is_identity:
        return read.view(codes.shape), None
    frozen = torch.zeros(flat.shape, dtype=torch.bool, device=flat.device)
    n = flat.numel()
    positions, stuck_on = stuck.draw_stuck_torch(mapping.cells_per_weight * n, flat.device, generator)
    cell, index = positions // n, positions % n  # levels are laid out (cells, weights)
    hit, slot = torch.unique(index, return_inverse=True)
    levels = mapping.encode(flat.index_select(0, hit))
    state = stuck.state_of_stuck(cell * hit.numel() + slot, stuck_on, tuple(levels.shape), flat.device)
    faulted = mapping.decode(stuck.apply(levels, state, CellRange.of(mapping.target))).to(dtype)
    return read.index_put_((hit,), faulted).view(codes.shape), frozen.index_fill_(0, hit, True).view(codes.shape)


def quantized_weight(weight: torch.Tensor, mapping: Mapping) -> torch.Tensor:
    """Fault-free deployed weight (codes × scale), with a straight-through gradient."""
    s = scale_of(weight, mapping.target)
    codes = quantize_codes(weight.detach(), s.detach(), mapping.target).to(weight.dtype)
    u = weight / s
    return (u + (codes - u).detach()) * s
