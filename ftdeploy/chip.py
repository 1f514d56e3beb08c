"""A model as a chip holds it: BatchNorm folded (or left to the periphery), weights quantised to
the target's codes, codes laid onto cell levels. The exporter writes these levels into ONNX; the
PyTorch backend of the chip-population evaluator (:class:`TorchBackend`) swaps in the levels of
any chip, so chip k of a source is the same chip here and in the ONNX Runtime sign-off.
:func:`deployed_accuracy` measures a model so (the trainer's per-epoch check, pruning's).

With ``chip_batch`` K > 1 the backend runs K chips in one forward pass: their weights are
stacked along a chip dimension and the network is mapped over it (``torch.func.vmap`` of
``functional_call``, which turns each convolution into one grouped convolution). The weights are
the one-at-a-time weights bit for bit; the logits may differ in the last bits, because a grouped
convolution sums in another order, so an argmax on a near-exact tie can flip. A pass holds at
most :meth:`TorchBackend.pairs_per_pass` (chip, image) pairs, so memory stays bounded.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn as nn
from torch.func import functional_call, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from .data import DataBundle, normalize
from .mapping import Mapping, make_mapping, quantize_codes, scale_of
from .models import deployed_layers, fold_batchnorm
from .nonideality import CellRange, ChipDraw, FaultModel
from .population import Backend, ChipReading, SimulatedChips, chip_accuracies
from .profiles import BatchNormPlacement, Target

if TYPE_CHECKING:
    from .streaming import StreamedImages

#: Images per forward pass of the PyTorch backend.
DEFAULT_BATCH = 1000


@contextlib.contextmanager
def _attention_mapped_over_chips():
    """Attention in its composite form while a network is mapped over chips: the fused kernels
    (``MultiheadAttention``'s inference fast path, the flash and memory-efficient
    ``scaled_dot_product_attention``) have no vmap rule, so vmap would run them chip by chip in
    a Python loop, warning each time. Their composite form (matmul, softmax) maps over chips in
    one pass and computes the same products."""
    fast_path = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fast_path)


@dataclass
class DeployedLayer:
    name: str
    module: nn.Module  # the folded Conv2d / Linear inside DeployedNetwork.model
    scale: torch.Tensor  # weight per code step, broadcastable to the weight
    codes: torch.Tensor  # int32 codes, weight shape
    levels: torch.Tensor  # int levels, (cells, *weight shape)

    @property
    def cell_shape(self) -> tuple[int, ...]:
        return tuple(self.levels.shape)


class DeployedNetwork:
    """The quantised network of one model on one target, BatchNorm folded into the cells or left
    to the digital periphery as the target says (``Target.batchnorm``)."""

    def __init__(self, model: nn.Module, target: Target, device: str | torch.device = "cpu"):
        self.target = target
        self.mapping: Mapping = make_mapping(target)
        folds = target.batchnorm == BatchNormPlacement.fold
        self.model = (fold_batchnorm(model) if folds else copy.deepcopy(model).eval()).to(device)
        self.device = torch.device(device)
        self.layers: list[DeployedLayer] = []
        with torch.no_grad():
            for name, module in deployed_layers(self.model):
                s = scale_of(module.weight, target)
                codes = quantize_codes(module.weight, s, target)
                self.layers.append(DeployedLayer(name, module, s, codes, self.mapping.encode(codes)))
        self.clear()

    @property
    def cell_shapes(self) -> list[tuple[int, ...]]:
        return [layer.cell_shape for layer in self.layers]

    @functools.cached_property
    def programmed(self) -> list[np.ndarray]:
        """The levels each layer's cells are programmed with, as the exported file holds them
        (fixed once the network is built, so taken off the device once)."""
        return [layer.levels.cpu().numpy() for layer in self.layers]

    def clear(self) -> None:
        """Fault-free chip: every weight exactly codes × scale."""
        self.load_levels(None)

    def load_levels(self, levels: list[np.ndarray] | None) -> None:
        """Compute with a chip's levels (per layer, in layer order; integer or float); None: the
        programmed chip, every weight exactly codes × scale."""
        with torch.no_grad():
            for i, layer in enumerate(self.layers):
                if levels is None:
                    codes = layer.codes.to(torch.float32)
                else:
                    codes = self.mapping.decode(torch.from_numpy(np.ascontiguousarray(levels[i])).to(self.device))
                layer.module.weight.copy_(codes * layer.scale)

    def stacked_weights(self, chips: list[list[np.ndarray]]) -> dict[str, torch.Tensor]:
        """The weights of several chips (each its levels per layer), stacked along a leading chip
        dimension and keyed by parameter name: what :meth:`load_levels` computes for each chip,
        decoded in one go on the device."""
        weights = {}
        for i, layer in enumerate(self.layers):
            # (cells, chips, *weight shape): the mapping decodes along the leading cell axis
            levels = torch.from_numpy(np.stack([np.asarray(chip[i]) for chip in chips], axis=1)).to(self.device)
            weights[f"{layer.name}.weight"] = self.mapping.decode(levels) * layer.scale
        return weights

    def chips_logits(self, weights: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Logits (chips, images, classes) of the chips whose stacked ``weights`` are given, on the
        same normalised images ``x``; every other parameter and buffer is the network's own."""
        def one_chip(w: dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
            return functional_call(self.model, w, (images,))

        with _attention_mapped_over_chips():
            return vmap(one_chip, in_dims=(0, None))(weights, x)

    def activation_bytes(self, image_shape: tuple[int, ...]) -> int:
        """Bytes of float32 activations one image of ``image_shape`` (C, H, W) can hold at once,
        bounded above by the sum of every module's output (inference frees most of them sooner):
        what a pass's memory grows by per (chip, image) pair."""
        sizes: list[int] = []
        hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel() if torch.is_tensor(out) else 0))
                 for m in self.model.modules()]  # fmt: skip
        try:
            with torch.no_grad():
                self.model(torch.zeros(1, *image_shape, device=self.device))
        finally:
            for hook in hooks:
                hook.remove()
        return 4 * sum(sizes)

    def load_chip(self, faults: FaultModel, draw: ChipDraw) -> None:
        """Compute as the chip with the drawn states ``draw`` of ``faults`` (per layer, one state
        per chip-level kind)."""
        self.load_levels(faults.program(self.programmed, draw, CellRange.of(self.target)))

    def backend(self, x: torch.Tensor, y: torch.Tensor, mean, std, batch_size: int = DEFAULT_BATCH,
                chip_batch: int = 1) -> "TorchBackend":  # fmt: skip
        """This network on uint8 images ``x`` with labels ``y``, normalised with ``mean``/``std``,
        ``chip_batch`` chips per forward pass."""
        return TorchBackend(self, x, y, mean, std, batch_size, chip_batch)

    def accuracy(self, x: torch.Tensor, y: torch.Tensor, mean, std, batch_size: int = DEFAULT_BATCH) -> float:
        """Top-1 accuracy in percent of the programmed chip on uint8 images."""
        return self.backend(x, y, mean, std, batch_size).accuracy()


class TorchBackend(Backend):
    """The PyTorch backend: a :class:`DeployedNetwork` whose weights are swapped per chip, on
    uint8 images (held in memory, or streamed from their files) normalised batch by batch (on its
    device); ``chip_batch`` chips per pass."""

    def __init__(self, net: DeployedNetwork, x: "torch.Tensor | StreamedImages", y: torch.Tensor, mean, std, batch_size: int = DEFAULT_BATCH,
                 chip_batch: int = 1):  # fmt: skip
        if chip_batch < 1:
            raise ValueError(f"chip_batch: expected at least 1, found {chip_batch}")
        self.net = net
        self.x, self.y, self.mean, self.std = x, y, mean, std
        self.batch_size = batch_size
        self.chip_batch = chip_batch
        self.programmed = net.programmed
        self.cells = CellRange.of(net.target)

    @property
    def n_images(self) -> int:
        return len(self.y)

    def _load(self, levels: list[np.ndarray] | None) -> None:
        self.net.load_levels(levels)

    def _images(self, start: int, stop: int) -> torch.Tensor:
        """uint8 images ``start:stop``: held in memory, or the next batch of a pass over images
        streamed from their files (:class:`ftdeploy.streaming.StreamedImages`: every pass of
        :meth:`accuracy` and :meth:`accuracies` goes through the batches in order from image 0),
        already on the network's device."""
        if isinstance(self.x, torch.Tensor):
            return self.x[start:stop]
        return self.x.batch(start, stop, self.batch_size, device=self.net.device)

    @torch.no_grad()
    def _correct(self, start: int, stop: int) -> int:
        xb = normalize(self._images(start, stop).to(self.net.device), self.mean, self.std)
        pred = self.net.model(xb).argmax(1)
        return int((pred.cpu() == self.y[start:stop]).sum().item())

    def accuracies(self, readings: list[ChipReading]) -> list[float]:
        """Accuracy (%) of each chip, all of them in each forward pass. Images go in the same
        batches of ``batch_size`` as one chip at a time, and a per-inference chip is read afresh
        for every batch, in the same order, so each chip reads what it reads alone. Each batch
        runs in passes of at most :meth:`pairs_per_pass` (chip, image) pairs, so memory stays
        bounded however many chips are asked for."""
        if len(readings) == 1:
            return [self.accuracy(readings[0])]
        correct = torch.zeros(len(readings), dtype=torch.int64)
        weights = None
        for start in range(0, self.n_images, self.batch_size):
            if weights is None or any(r.per_inference for r in readings):
                weights = self.net.stacked_weights([r.levels() for r in readings])
            correct += self._correct_chips(weights, start, min(start + self.batch_size, self.n_images))
        return [100.0 * int(c) / self.n_images for c in correct]

    def pairs_per_pass(self, chips: int) -> int:
        """(chip, image) pairs one forward pass may hold. On the CPU, one chip's batch: the cores
        are busy at that size already, and memory stays that of one chip. On a GPU, as many as
        half its free memory holds (:meth:`DeployedNetwork.activation_bytes` per pair), between
        one chip's batch and every chip on a whole batch: there the extra pairs are the speed-up."""
        if self.net.device.type != "cuda":
            return self.batch_size
        free, _ = torch.cuda.mem_get_info(self.net.device)
        return pairs_within(free // 2, self._pair_bytes, self.batch_size, chips)

    @functools.cached_property
    def _pair_bytes(self) -> int:
        return self.net.activation_bytes(tuple(self.x.shape[1:]))

    @torch.no_grad()
    def _correct_chips(self, weights: dict[str, torch.Tensor], start: int, stop: int) -> torch.Tensor:
        """Correct top-1 predictions per chip on images ``start:stop``."""
        chips = next(iter(weights.values())).shape[0]
        per_pass = max(1, self.pairs_per_pass(chips) // chips)
        correct = torch.zeros(chips, dtype=torch.int64)
        images = self._images(start, stop)
        for lo in range(start, stop, per_pass):
            hi = min(lo + per_pass, stop)
            xb = normalize(images[lo - start : hi - start].to(self.net.device), self.mean, self.std)
            pred = self.net.chips_logits(weights, xb).argmax(-1).cpu()  # (chips, images)
            correct += (pred == self.y[lo:hi]).sum(1)
        return correct


def pairs_within(budget_bytes: int, pair_bytes: int, batch_size: int, chips: int) -> int:
    """(chip, image) pairs per pass that ``budget_bytes`` holds at ``pair_bytes`` each, at least
    one chip's batch (``batch_size``) and at most ``chips`` chips on a whole batch."""
    return max(batch_size, min(chips * batch_size, budget_bytes // max(1, pair_bytes)))


def deployed_accuracy(model: nn.Module, target: Target, data: DataBundle, device, chips: int = 0, rate: float = 0.0,
                      faults: FaultModel | None = None, seed: int = 0) -> tuple[float, float | None]:  # fmt: skip
    """(fault-free deployed accuracy, mean accuracy of ``chips`` chips of ``faults`` at stuck-at
    ``rate``) on the validation split; no chips, no second figure."""
    backend = DeployedNetwork(model, target, device).backend(data.val_x, data.val_y, data.mean, data.std)
    clean = backend.accuracy()
    if not chips:
        return clean, None
    population = (faults or FaultModel()).at_rate(rate)
    if population.is_identity:
        return clean, None
    accs = chip_accuracies(backend, SimulatedChips(population, rate, seed, chips))
    return clean, sum(accs) / len(accs)
