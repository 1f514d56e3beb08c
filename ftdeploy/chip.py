"""A model as a chip holds it: BatchNorm folded (or left to the periphery), weights quantised to
the target's codes, codes laid onto cell levels. The exporter writes these levels into ONNX; the
PyTorch backend of the chip-population evaluator (:class:`TorchBackend`) swaps in the levels of
any chip, so chip k of a source is the same chip here and in the ONNX Runtime sign-off.
:func:`deployed_accuracy` measures a model so (the trainer's per-epoch check, pruning's).
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from .data import DataBundle, normalize
from .mapping import Mapping, make_mapping, quantize_codes, scale_of
from .models import deployed_layers, fold_batchnorm
from .nonideality import CellRange, ChipDraw, FaultModel
from .population import Backend, SimulatedChips, chip_accuracies
from .profiles import BatchNormPlacement, Target

#: Images per forward pass of the PyTorch backend.
DEFAULT_BATCH = 1000


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

    def load_chip(self, faults: FaultModel, draw: ChipDraw) -> None:
        """Compute as the chip with the drawn states ``draw`` of ``faults`` (per layer, one state
        per chip-level kind)."""
        self.load_levels(faults.program(self.programmed, draw, CellRange.of(self.target)))

    def backend(self, x: torch.Tensor, y: torch.Tensor, mean, std, batch_size: int = DEFAULT_BATCH) -> "TorchBackend":
        """This network on uint8 images ``x`` with labels ``y``, normalised with ``mean``/``std``."""
        return TorchBackend(self, x, y, mean, std, batch_size)

    def accuracy(self, x: torch.Tensor, y: torch.Tensor, mean, std, batch_size: int = DEFAULT_BATCH) -> float:
        """Top-1 accuracy in percent of the programmed chip on uint8 images."""
        return self.backend(x, y, mean, std, batch_size).accuracy()


class TorchBackend(Backend):
    """The PyTorch backend: a :class:`DeployedNetwork` whose weights are swapped per chip, on
    uint8 images normalised batch by batch (on its device)."""

    def __init__(self, net: DeployedNetwork, x: torch.Tensor, y: torch.Tensor, mean, std, batch_size: int = DEFAULT_BATCH):
        self.net = net
        self.x, self.y, self.mean, self.std = x, y, mean, std
        self.batch_size = batch_size
        self.programmed = net.programmed
        self.cells = CellRange.of(net.target)

    @property
    def n_images(self) -> int:
        return len(self.y)

    def _load(self, levels: list[np.ndarray] | None) -> None:
        self.net.load_levels(levels)

    @torch.no_grad()
    def _correct(self, start: int, stop: int) -> int:
        xb = normalize(self.x[start:stop].to(self.net.device), self.mean, self.std)
        pred = self.net.model(xb).argmax(1)
        return int((pred.cpu() == self.y[start:stop]).sum().item())


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
