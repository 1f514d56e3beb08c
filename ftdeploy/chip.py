"""A model as a chip holds it: BatchNorm folded, weights quantised to the target's codes, codes
laid onto cell levels. The exporter writes these levels into ONNX; the fast evaluator (torch)
swaps in the weights of simulated faulty chips. Both draw chips with :func:`faults.chip_rng`,
so chip k at seed S is the same chip in a sweep and in the ONNX Runtime sign-off.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from .data import normalize
from .faults import NonIdeality, StuckAt, chip_rng, draw_chip_states, faulty_codes
from .mapping import Mapping, make_mapping, quantize_codes, scale_of
from .models import deployed_layers, fold_batchnorm
from .profiles import BatchNormPlacement, Target


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

    def clear(self) -> None:
        """Fault-free chip: every weight exactly codes × scale."""
        with torch.no_grad():
            for layer in self.layers:
                layer.module.weight.copy_(layer.codes.to(torch.float32) * layer.scale)

    def set_chip(self, states: list[np.ndarray], nonideality: NonIdeality) -> None:
        """Load one simulated chip (per-layer cell states, in layer order)."""
        with torch.no_grad():
            for layer, state in zip(self.layers, states):
                st = torch.from_numpy(state).to(self.device)
                codes = faulty_codes(self.mapping, layer.levels, st, nonideality)
                layer.module.weight.copy_(codes * layer.scale)

    @torch.no_grad()
    def accuracy(self, x: torch.Tensor, y: torch.Tensor, mean, std, batch_size: int = 1000) -> float:
        """Top-1 accuracy in percent on uint8 images."""
        correct = 0
        for start in range(0, len(y), batch_size):
            xb = normalize(x[start : start + batch_size].to(self.device), mean, std)
            pred = self.model(xb).argmax(1)
            correct += (pred.cpu() == y[start : start + batch_size]).sum().item()
        return 100.0 * correct / len(y)

    def chip_accuracies(self, nonideality: NonIdeality, rate: float, chips: int, seed: int, x, y, mean, std,
                        on_chip: Callable[[], None] | None = None) -> list[float]:  # fmt: skip
        """Accuracy of ``chips`` simulated chips at one rate; the fault-free weights are restored after.
        ``on_chip`` runs after each chip (a progress bar, or a check that raises to stop early)."""
        if nonideality.is_identity:
            return [self.accuracy(x, y, mean, std)] * chips
        accs = []
        try:
            for chip in range(chips):
                self.set_chip(draw_chip_states(nonideality, self.cell_shapes, chip_rng(seed, rate, chip)), nonideality)
                accs.append(self.accuracy(x, y, mean, std))
                if on_chip:
                    on_chip()
        finally:
            self.clear()
        return accs

    def accuracy_line(self, rates: list[float], split: tuple[float, float], chips: int, x, y, mean, std,
                      seed: int = 0) -> str:  # fmt: skip
        """'clean A  P=r: B ...': fault-free accuracy and the mean over ``chips`` chips per stuck-at
        rate, the one-line summary the probe scripts print."""
        figures = [f"clean {self.accuracy(x, y, mean, std):.2f}"]
        for rate in rates:
            accs = self.chip_accuracies(StuckAt.from_total(rate, split), rate, chips, seed, x, y, mean, std)
            figures.append(f"P={rate:g}: {sum(accs) / len(accs):.2f}")
        return "  ".join(figures)
