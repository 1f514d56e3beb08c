"""Fault injection while training: every forward pass of the model runs on a freshly drawn
random faulty chip (:class:`FaultInjector`), on what the target's cells hold."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.utils.parametrize as parametrize

from ..choices import FaultDraw
from ..faults import faulty_weight
from ..mapping import Mapping, ScaleGranularity, make_mapping, scale_from_peak
from ..models import conv_bn_pairs, deployed_layers
from ..nonideality import FaultModel
from ..profiles import BatchNormPlacement, Target


class _FaultyWeight(nn.Module):
    """Parametrisation of one deployed layer's weight: its slice of the injector's faulty chip."""

    def __init__(self, injector: "FaultInjector", index: int):
        super().__init__()
        self.injector = injector
        self.index = index

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.injector.faulty(self.index)


class FaultInjector:
    """Attach to a model: every forward then runs on a freshly drawn random faulty chip.

    All deployed layers are faulted at once, as one flat vector: a handful of kernels per step
    instead of dozens per layer, which is what keeps a fault-injected epoch close to a plain one
    (bench/bench_train_overhead.py). Per layer this computes exactly
    ``faults.faulty_weight(W·k) / k``: with frozen BN on a target that folds it, ``k = γ/σ``
    folds BatchNorm so faults hit the weight the chip stores, and dividing by ``k`` again lets
    the frozen BN that follows restore it; layers without BN, targets that apply BN in the
    periphery, and ``bn_mode="train"`` use ``k = 1``. ``fault_draw``: how each chip is drawn
    (``faulty_weight``'s ``draw``): sparse, the stuck cells alone, unless the fault model has
    kinds other than stuck-at."""

    def __init__(self, model: nn.Module, target: Target, bn_mode: str = "frozen", block_stuck_grad: bool = True,
                 seed: int = 0, device: torch.device | str = "cpu", learn_scale: bool = True, unbiased: bool = False,
                 prune_masks: dict[str, torch.Tensor] | None = None, faults: FaultModel | None = None,
                 fault_draw: FaultDraw = "sparse"):  # fmt: skip
        self.model = model
        self.mapping: Mapping = make_mapping(target)
        self.bn_mode = bn_mode
        self.block = block_stuck_grad
        self.learn_scale = learn_scale
        self.unbiased = unbiased
        self.fault_draw = fault_draw
        # The population training draws from; set_rate moves its stuck-at rate along the schedule.
        self.population = (faults or FaultModel()).at_rate(0.0)
        self.faults = self.population
        self.generator = torch.Generator(device=device).manual_seed(seed)
        # Faults hit what the cells hold: the BN-folded weight on a folding target (frozen BN
        # only: a training-mode BN has no fixed fold), the conv weight itself otherwise.
        folds = bn_mode == "frozen" and target.batchnorm == BatchNormPlacement.fold
        pairs = conv_bn_pairs(model) if folds else {}
        modules = dict(model.named_modules())
        layers = deployed_layers(model)
        self._layers = [(m, modules[pairs[n]] if n in pairs else None) for n, m in layers]
        # Without a BN to fold, k is 1 everywhere: W·k and /k would be exact no-ops, each a pass
        # over every weight (and a gather) forward and backward, so they are skipped.
        self._folds = any(bn is not None for _, bn in self._layers)
        self._shapes = [tuple(m.weight.shape) for m, _ in self._layers]
        self._numels = [m.weight.numel() for m, _ in self._layers]
        outs = [shape[0] for shape in self._shapes]
        dev = torch.device(device)
        # Which output channel (over all layers) and which scale group each flat element is in.
        self._channel_of = torch.cat([torch.arange(o, device=dev).repeat_interleave(n // o) + sum(outs[:i])
                                      for i, (o, n) in enumerate(zip(outs, self._numels))])  # fmt: skip
        layer_of = torch.cat([torch.full((n,), i, device=dev) for i, n in enumerate(self._numels)])
        per_channel = target.scale is ScaleGranularity.channel
        self._per_channel = per_channel
        self._group_of = self._channel_of if per_channel else layer_of
        self._groups = sum(outs) if per_channel else len(self._layers)
        # What clip_to_sigmas takes each group's spread over: every weight, or a pruned model's
        # surviving ones (its zeros are no part of the distribution the clip bounds; counted, at
        # 70 % sparsity they would halve the spread and a 2 σ clip would cut the surviving
        # weights at 1.1 of their own σ).
        self._kept = torch.cat([prune_masks[n].to(dev).reshape(-1) for n, _ in layers]) if prune_masks else None
        self._spread_sizes = torch.bincount(self._group_of, weights=None if self._kept is None else self._kept.double(),
                                            minlength=self._groups)  # fmt: skip
        self._hook = None
        self._cache: list[torch.Tensor] | None = None

    def set_rate(self, p_sa: float) -> None:
        """Draw the coming steps' chips at stuck-at rate ``p_sa`` (every other kind as given)."""
        self.faults = self.population.at_rate(p_sa)

    def attach(self) -> None:
        for i, (module, _) in enumerate(self._layers):
            parametrize.register_parametrization(module, "weight", _FaultyWeight(self, i), unsafe=True)
        # A new chip for every forward pass of the whole model.
        self._hook = self.model.register_forward_pre_hook(lambda *_: self._invalidate())

    def detach(self) -> None:
        if self._hook is not None:
            self._hook.remove()
        for module, _ in self._layers:
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)

    def _invalidate(self) -> None:
        self._cache = None

    def faulty(self, index: int) -> torch.Tensor:
        if self._cache is None:
            self._cache = self._draw_chip()
        return self._cache[index]

    def _fold_factors(self, device) -> torch.Tensor:
        """Per output channel k = γ/sqrt(var+eps) of the following frozen BN, 1 without one."""
        parts = []
        for (module, bn), shape in zip(self._layers, self._shapes):
            if bn is None:
                parts.append(torch.ones(shape[0], device=device))
            else:
                parts.append(bn.weight * torch.rsqrt(bn.running_var + bn.eps))
        k = torch.cat(parts)
        return torch.where(k.abs() < 1e-12, torch.full_like(k, 1e-12), k)  # keep the unfold finite

    def _held(self) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """The master weights, as one flat vector, and ``k`` per element (None where no layer
        folds a BN: k = 1). What the cells hold is ``flat·k``."""
        originals = [m.parametrizations.weight.original for m, _ in self._layers]
        flat = torch.cat([w.reshape(-1) for w in originals])
        if not self._folds:
            return originals, flat, None
        k = self._fold_factors(flat.device).index_select(0, self._channel_of)  # backward: index_add, not index_put
        return originals, flat, k

    @torch.no_grad()
    def clip_to_sigmas(self, sigmas: float) -> None:
        """Clamp every master weight so that what its cells hold lies within ± ``sigmas``
        (sample) standard deviations of its scale group (of its surviving weights, for a pruned
        model): the peak a stuck-on cell adds is then at most that far out. Weights inside the
        bound are left bit for bit as they are."""
        originals, flat, k = self._held()
        folded = flat if k is None else flat * k
        counted = folded if self._kept is None else folded * self._kept
        count = self._spread_sizes.to(folded.dtype)
        total = torch.zeros(self._groups, device=folded.device, dtype=folded.dtype).index_add_(0, self._group_of, counted)
        squares = torch.zeros_like(total).index_add_(0, self._group_of, counted * counted)
        variance = (squares - total * total / count) / (count - 1).clamp(min=1)
        bound = (sigmas * variance.clamp(min=0).sqrt()).index_select(0, self._group_of)
        inside = folded.clamp(-bound, bound)
        clipped = torch.where(folded.abs() > bound, inside if k is None else inside / k, flat)
        for w, part in zip(originals, clipped.split(self._numels)):
            w.copy_(part.view_as(w))

    # Each scale group's peak max|W·k|, computed two ways with the same values and gradients: one
    # scatter over the flat vector on a GPU (a single kernel, where launches are what a small
    # network's step costs), a max over each layer's own view on a CPU (there scatter_reduce's
    # backward is the slow part: about three times the per-layer form on ResNet-18).
    def _peaks_flat(self, folded: torch.Tensor) -> torch.Tensor:
        return torch.zeros(self._groups, device=folded.device, dtype=folded.dtype).scatter_reduce(
            0, self._group_of, folded.abs(), reduce="amax", include_self=False
        )

    def _peaks_by_layer(self, folded: torch.Tensor) -> torch.Tensor:
        parts = folded.abs().split(self._numels)
        if self._per_channel:
            return torch.cat([part.view(shape[0], -1).amax(1) for part, shape in zip(parts, self._shapes)])
        return torch.stack([part.amax() for part in parts])

    def _draw_chip(self) -> list[torch.Tensor]:
        _, flat, k = self._held()
        folded = flat if k is None else flat * k
        peak = self._peaks_flat(folded) if folded.is_cuda else self._peaks_by_layer(folded)
        scale = scale_from_peak(peak, self.mapping.target).index_select(0, self._group_of)
        if not self.learn_scale:
            scale = scale.detach()
        faulty = faulty_weight(folded, self.mapping, self.faults, generator=self.generator,
                               block_stuck_grad=self.block, scale=scale, unbiased=self.unbiased, draw=self.fault_draw)  # fmt: skip
        if k is not None:
            faulty = faulty / k
        return [part.view(shape) for part, shape in zip(faulty.split(self._numels), self._shapes)]


def freeze_batchnorm(model: nn.Module) -> None:
    """BN layers to eval mode: statistics fixed as on the chip, γ/β still trainable."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
