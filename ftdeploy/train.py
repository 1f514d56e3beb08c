"""Pretraining and stochastic fault-tolerant retraining (one-shot and progressive).

The recipe, and why (PAPER-NOTES.md measured the naive alternatives failing):

* **BatchNorm is frozen at its pretrained statistics during retraining, and faults are drawn on
  the folded weights** ``W·γ/σ``, exactly what the chip holds. In training mode BN renormalises
  every batch, silently absorbing the shift a stuck-on cell causes; the deployed chip has BN
  folded with fixed statistics and absorbs nothing, so the model learnt the wrong lesson and
  its running statistics (averaged over random chips) no longer fit the clean chip (our notes:
  70 % clean where the paper keeps 92 %). γ and β stay trainable. On ResNet-20 / CIFAR-10 the
  frozen-BN models are far more robust than the same grid retrained with ``bn="train"``
  (docs/RESULTS-diff8-folded.md, both grids on the same chips). On ``paper-diff8`` training mode
  kept one-shot P_sa^T = 0.05 2.6 points more clean accuracy (progressive 0.7) and lost it 7
  points at P_sa = 0.05 and 25 at 0.1 (progressive 13 and 30; docs/RESULTS.md).
  Retrained for 40 epochs instead of 25, the one-shot model kept 1.4 points less clean accuracy
  and gained robustness at P_sa >= 0.05: length moves it towards the training rate, not back.
* **The stuck-on magnitude follows the weights.** The full scale ``s = max|W|/Q`` is computed
  from the current weights inside the graph, so the loss of a stuck-on cell reaches the layer's
  largest weights and training learns to flatten the weight distribution (a learnt clipping)
  instead of only routing around the faults. Held constant within each step instead
  (``scale_grad: detach``), one-shot P_sa^T = 0.05 on ResNet-20 / CIFAR-10 fell to 31 % clean
  (per-epoch check, 5,000 held-out images) after one epoch and 16 % after two, its loss rising (probe, stopped there: ``ftdeploy train
  --profile chen2015 --from runs/c10p/pretrain/model.pt --data npz:../shared/data/cifar10-train-jpeg.npz
  --method one-shot --target-rate 0.05 --epochs 25 --lr 0.02 --batch-size 256 --scale-grad detach``;
  the default recipe was at 70 % and 68 % at those epochs, docs/RESULTS-plain-recipe.md training curves).
* **Stuck cells get no gradient** (``stuck_grad: block``): on that chip they ignore
  programming, so their gradient is noise. Healthy weights train through a straight-through
  quantiser (quantisation-aware training at the target's weight bits).
* **Gentle optimisation**: a retraining learning rate well below pretraining's, a linear
  warm-up, cosine decay, and gradient-norm clipping. Frozen-BN retraining at high rates diverged
  at lr 0.05 without them (PAPER-NOTES.md). With them, the paper's retraining rate (0.1) still
  diverges with frozen BN, and trains with BN in training mode (docs/RESULTS.md), so it
  is the frozen statistics, which no longer renormalise what the weights do, that cannot take it:
  ResNet-20 / CIFAR-10 fell to chance within two epochs, one-shot P_sa^T = 0.05 and progressive
  alike; at 0.05 one-shot's clean accuracy fell to 18 % after the first epoch and ended 2.5
  points below the default 0.02's (docs/RESULTS.md, retrained at peak learning rate 0.05
  and 0.1).
* **Rate warm-up**: the fault rate ramps linearly from 0 over the first two epochs (one-shot
  included): with frozen BN, the full P_sa^T = 0.05 from the first step made ResNet-20 diverge
  to chance in its first epoch (docs/RESULTS-diff8-folded.md, training curves). With a 2-epoch ramp the same
  full-size retraining trains (docs/RESULTS-diff8-folded.md, dense/one-shot-0.05 against
  dense-no-rate-warmup/one-shot-0.05).
* **Where BatchNorm sits on the chip** (``Target.batchnorm``) decides how hard faults hit before
  any recipe: folded into the cells with a per-layer scale, each stuck-on cell adds the largest
  *folded* weight, and the same pretrained ResNet-20 keeps 45 % at P_sa = 0.005 where BN in the
  periphery keeps 60 %, the paper's collapse (docs/RESULTS-plain-recipe.md). Faults are drawn on what the
  target's cells hold.
* **Progressive**: the epochs are cut into equal blocks, one per ascending candidate rate,
  so the model reaches high rates through lower ones (paper, Algorithm 1).
* **Distillation is optional and off** (``distill``): a weight of the loss can go to matching the
  starting model's clean outputs (Hinton et al. 2015), the remedy noise-injection training for
  analog hardware uses (Zhou et al. 2020), meant to keep the clean accuracy a high training rate
  costs. On ResNet-20 / CIFAR-10 at P_sa^T = 0.05 (weight 0.9, temperature 4, 25 epochs) it
  kept the same clean accuracy as the plain recipe, within a point up to P = 0.05 and a little
  better at 0.1 (docs/RESULTS-plain-recipe.md, recipe ablations), for ~1.5x the epoch time
  (bench/bench_train_overhead.py --distill, CPU).

* **Weight clipping is optional and off** (``weight_clip``): clipping each layer's weights to
  ± K standard deviations after every step hands retraining the flatness it otherwise learns
  (above). On ResNet-20 / CIFAR-10, one-shot P_sa^T = 0.05 at K = 2 led the plain recipe by 3-9
  points at P_sa^T early, by 1-1.5 later, and was level with it within the CIs after 19 of its 25
  epochs (stopped there); progressive P_sa^T = 0.05 at K = 2 ends ahead of the plain one on the
  same chips by 0.3 points at P <= 0.01 and 1.4-2.6 at P >= 0.05, still 2.35 points below
  Acc_pretrain clean (docs/RESULTS.md, weights clipped). With three quarters of the
  steps fault-free (``clean_steps``, unbiased chips) it adds 0.4-0.6 points at P = 0.005-0.01
  and 4.4 at 0.05 on the same chips, which carries progressive P_sa^T = 0.05 within issue 3's
  limits, to where the plain P_sa^T = 0.01 model already sits. One-shot P_sa^T = 0.05 so trained
  meets them too and keeps the robustness above: level with the plain P_sa^T = 0.01 model up to
  P = 0.02 (half a point behind at 0.001), 4.3 / 11.2 points ahead at 0.05 / 0.1; a second
  training seed repeats it within the chips' noise up to P = 0.05. At P_sa^T = 0.01 the recipe
  trains too few faulty steps (behind the plain model from P = 0.01 up). Progressive with the
  rates sharing the epochs trails one-shot at P >= 0.02 (P_sa^T = 0.05) and P >= 0.05 (0.1);
  our reading: with three steps in four fault-free, too few faulty steps are left at the target
  rate. With a block of its own per rate (``progressive_blocks`` each, the paper's Algorithm 1)
  progressive meets the limits at P_sa^T = 0.01 and 0.05 and leads one-shot of the same length
  per rate at P >= 0.02 at all three training rates; but one-shot P_sa^T = 0.05 trained as long
  as the whole progressive run (36 epochs) meets them too, is level with it up to P = 0.02 and
  ahead above: the lead is the extra epochs, not the schedule (docs/RECIPE.md, step 6).
  profiles/chen2015-tuned.yaml carries that recipe; the defaults stay the plain one Table I was
  trained with (docs/RECIPE.md, step 10).

Faults are redrawn at every step; master weights stay clean.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.parametrize as parametrize
import yaml
from pydantic import ConfigDict, Field, model_validator

from .chip import DeployedNetwork
from .data import DataBundle, augment, batches, normalize
from .errors import ConfigError, ModelError
from .faults import faulty_weight
from .files import folder_given, is_onnx_file, reason_line, write_atomic
from .mapping import Mapping, make_mapping, scale_from_peak
from .models import conv_bn_pairs, create_model, deployed_layers
from .nonideality import FaultModel, StuckAt
from .population import SimulatedChips, chip_accuracies
from .profiles import BatchNormPlacement, FaultList, RetrainingRecipe, Target, TrainingDefaults, recipe_last

CHECKPOINT_FORMAT = "ftdeploy-checkpoint/1"
RESUME_FORMAT = "ftdeploy-resume/1"
#: Config fields a resumed run may change: where it runs and how closely each epoch is checked.
RESUME_MAY_DIFFER = frozenset({"device", "eval_chips"})


class TrainConfig(RetrainingRecipe):
    """Everything that determines a training run; saved as config.yaml next to the run. The
    retraining recipe's fields are :class:`~ftdeploy.profiles.RetrainingRecipe`'s."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("resnet20", description="Model registry name, tv:NAME or package.module:factory.")
    method: Literal["pretrain", "one-shot", "progressive"] = Field(
        "progressive", description="pretrain: no faults; one-shot: fixed rate; progressive: ascending rates."
    )
    target_rate: float = Field(0.05, ge=0, le=1, description="P_sa^T: the (last) training stuck-at rate per cell.")
    progressive_rates: list[float] = Field(
        default_factory=lambda: [0.01, 0.02, 0.05], description="Ascending rates of progressive blocks."
    )
    faults: FaultList = Field(
        default_factory=lambda: [StuckAt.from_total(0.0)],
        description="Non-idealities injected while retraining (the profile's faults); the stuck-at entry gives the "
                    "stuck-off : stuck-on ratio, its rate is the schedule's.",
    )  # fmt: skip
    epochs: int = Field(
        20, ge=1,
        description="Epochs of this run (all progressive blocks together), or of each block with progressive_blocks each.",
    )  # fmt: skip
    lr: float = Field(0.02, gt=0, description="Peak learning rate (linear warm-up, then cosine to 0).")
    warmup_epochs: float = Field(1.0, ge=0, description="Epochs of linear learning-rate warm-up.")
    batch_size: int = Field(128, ge=1, description="Images per step.")
    weight_decay: float = Field(5e-4, ge=0, description="SGD weight decay.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD (Nesterov) momentum.")
    grad_clip: float | None = Field(5.0, gt=0, description="Gradient-norm clipping of retraining (None: off).")
    distill_temperature: float = Field(4.0, gt=0, description="Softmax temperature of distillation (distill).")
    seed: int = Field(0, ge=0, description="Seed of initialisation, data order and fault draws.")
    eval_chips: int = Field(3, ge=0, description="Chips at the target rate for the per-epoch fault check.")
    device: str = Field("auto", description="auto (CUDA if present), cpu or cuda[:N].")

    @model_validator(mode="before")
    @classmethod
    def _faults_from_split(cls, data):
        """Configs written before ``faults`` existed record only the stuck-at ``split``."""
        if isinstance(data, dict) and "split" in data and "faults" not in data:
            data = dict(data)
            data["faults"] = [{"kind": "stuck-at", "p_sa": 0.0, "split": list(data.pop("split"))}]
        return data

    @property
    def fault_model(self) -> FaultModel:
        """The training population at stuck-at rate 0 (:meth:`FaultModel.at_rate` sets the step's rate)."""
        return FaultModel(self.faults).at_rate(0.0)

    @property
    def blocks_each(self) -> bool:
        return self.method == "progressive" and self.progressive_blocks == "each"

    @property
    def run_epochs(self) -> int:
        """Epochs the whole run takes."""
        return self.epochs * len(self.progressive_rates) if self.blocks_each else self.epochs

    def rate_at(self, epoch: int) -> float:
        """Training stuck-at rate of an epoch (0-based)."""
        if self.method == "pretrain":
            return 0.0
        if self.method == "one-shot":
            return self.target_rate
        if self.blocks_each:
            return self.progressive_rates[epoch // self.epochs]
        # Equal blocks, any remainder going to the later (higher) rates, and the last epoch
        # always at the target, even when there are fewer epochs than rates.
        n = len(self.progressive_rates)
        block = -(-(epoch + 1) * n // self.epochs) - 1  # ceil((epoch + 1) · n / epochs) − 1
        return self.progressive_rates[max(0, min(block, n - 1))]

    def step_rate(self, epoch_rate: float, step: int, rate_warmup_steps: int) -> float:
        """Training stuck-at rate of a step (0-based, counted over the whole run): 0 on the
        clean steps, else the epoch's rate, ramped in over the first ``rate_warmup_steps``."""
        if math.floor((step + 1) * self.clean_steps) > math.floor(step * self.clean_steps):
            return 0.0
        if step < rate_warmup_steps:
            return epoch_rate * (step + 1) / rate_warmup_steps
        return epoch_rate

    def schedule(self) -> list[float]:
        return [self.rate_at(e) for e in range(self.run_epochs)]


#: Ladder from which progressive training picks its ascending rates.
PROGRESSIVE_LADDER = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)


def default_progressive_rates(target_rate: float, steps: int = 3) -> list[float]:
    """The last ``steps`` ladder rates below ``target_rate``, then the target itself:
    0.05 -> [0.01, 0.02, 0.05], 0.1 -> [0.02, 0.05, 0.1]."""
    below = [r for r in PROGRESSIVE_LADDER if r < target_rate]
    return below[-(steps - 1):] + [target_rate] if steps > 1 else [target_rate]


def progressive_rates_for(target_rate: float, defaults: TrainingDefaults) -> list[float]:
    """The progressive list of a retraining to ``target_rate``: the profile's own list where it
    ends there (a deployment may name its ladder), else :func:`default_progressive_rates`.
    ``train``, ``sweep`` and ``demo`` all use this one rule."""
    own = list(defaults.progressive_rates)
    return own if own and own[-1] == target_rate else default_progressive_rates(target_rate)


#: The ``ftdeploy train`` option of each TrainConfig field it sets (a flag pair for a bool), in
#: one place: a bad value's message names the option the user typed, and the sweep writes each
#: retraining's command line from its config (:func:`train_argv`). The other fields follow the
#: profile (split, weight decay) or TrainConfig's defaults.
TRAIN_OPTIONS = {
    "model": "--model", "method": "--method", "target_rate": "--target-rate", "progressive_rates": "--rates",
    "epochs": "--epochs", "progressive_blocks": "--progressive-blocks", "lr": "--lr", "batch_size": "--batch-size",
    "bn": "--bn", "stuck_grad": "--stuck-grad", "scale_grad": "--scale-grad", "unbias_faults": "--unbias-faults/--raw-faults", "clean_steps": "--clean-steps",
    "weight_clip": "--weight-clip",
    "rate_warmup_epochs": "--rate-warmup", "distill": "--distill", "eval_chips": "--eval-chips", "seed": "--seed",
    "device": "--device",
}  # fmt: skip


def option_name(field: str) -> str:
    """The command-line option a user sets ``field`` with (its on-flag for a bool)."""
    return TRAIN_OPTIONS.get(field, "--" + field.replace("_", "-")).split("/")[0]


def train_argv(config: TrainConfig) -> list[str]:
    """``ftdeploy train`` options that give ``config`` (with the profile that fixes the rest)."""
    argv = []
    for field, option in TRAIN_OPTIONS.items():
        value = getattr(config, field)
        if isinstance(value, bool):
            on, off = option.split("/")
            argv.append(on if value else off)
        elif isinstance(value, list):
            argv += [option, ",".join(repr(v) for v in value)]
        else:
            argv += [option, repr(value) if isinstance(value, float) else str(value)]
    return argv


def make_train_config(**fields) -> TrainConfig:
    """TrainConfig from command-line values; a bad value becomes one ConfigError line per field,
    naming its option."""
    from pydantic import ValidationError

    try:
        return TrainConfig(**fields)
    except ValidationError as err:
        lines = [f"{option_name(str(e['loc'][0]))}: {e['msg']} (found {e.get('input')!r})" for e in err.errors()]
        raise ConfigError("\n".join(lines)) from None


def pick_device(name: str) -> torch.device:
    """The torch device ``name`` (auto: CUDA if present, else the CPU), refused with one line
    when it is not a device name or names a CUDA device this machine does not have."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device: expected auto, cpu or cuda[:N], found {name!r}") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"--device: {name} asked for, but this machine has no usable CUDA device; use cpu or auto")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"--device: {name} asked for, but this machine has {count} CUDA device(s) (cuda:0 to cuda:{count - 1})")
    return device


# --- fault injection ------------------------------------------------------------------------


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
    periphery, and ``bn_mode="train"`` use ``k = 1``."""

    def __init__(self, model: nn.Module, target: Target, bn_mode: str = "frozen", block_stuck_grad: bool = True,
                 seed: int = 0, device: torch.device | str = "cpu", learn_scale: bool = True, unbiased: bool = False,
                 prune_masks: dict[str, torch.Tensor] | None = None, faults: FaultModel | None = None):  # fmt: skip
        from .profiles import ScaleGranularity

        self.model = model
        self.mapping: Mapping = make_mapping(target)
        self.bn_mode = bn_mode
        self.block = block_stuck_grad
        self.learn_scale = learn_scale
        self.unbiased = unbiased
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
        self._shapes = [tuple(m.weight.shape) for m, _ in self._layers]
        self._numels = [m.weight.numel() for m, _ in self._layers]
        outs = [shape[0] for shape in self._shapes]
        dev = torch.device(device)
        # Which output channel (over all layers) and which scale group each flat element is in.
        self._channel_of = torch.cat([torch.arange(o, device=dev).repeat_interleave(n // o) + sum(outs[:i])
                                      for i, (o, n) in enumerate(zip(outs, self._numels))])  # fmt: skip
        layer_of = torch.cat([torch.full((n,), i, device=dev) for i, n in enumerate(self._numels)])
        per_channel = target.scale is ScaleGranularity.channel
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

    def _held(self) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """The master weights, and as one flat vector what the cells hold (``W·k``) with ``k``."""
        originals = [m.parametrizations.weight.original for m, _ in self._layers]
        flat = torch.cat([w.reshape(-1) for w in originals])
        k = self._fold_factors(flat.device).index_select(0, self._channel_of)  # backward: index_add, not index_put
        return originals, flat, k

    @torch.no_grad()
    def clip_to_sigmas(self, sigmas: float) -> None:
        """Clamp every master weight so that what its cells hold lies within ± ``sigmas``
        (sample) standard deviations of its scale group (of its surviving weights, for a pruned
        model): the peak a stuck-on cell adds is then at most that far out. Weights inside the
        bound are left bit for bit as they are."""
        originals, flat, k = self._held()
        folded = flat * k
        counted = folded if self._kept is None else folded * self._kept
        count = self._spread_sizes.to(folded.dtype)
        total = torch.zeros(self._groups, device=folded.device, dtype=folded.dtype).index_add_(0, self._group_of, counted)
        squares = torch.zeros_like(total).index_add_(0, self._group_of, counted * counted)
        variance = (squares - total * total / count) / (count - 1).clamp(min=1)
        bound = (sigmas * variance.clamp(min=0).sqrt()).index_select(0, self._group_of)
        clipped = torch.where(folded.abs() > bound, folded.clamp(-bound, bound) / k, flat)
        for w, part in zip(originals, clipped.split(self._numels)):
            w.copy_(part.view_as(w))

    def _draw_chip(self) -> list[torch.Tensor]:
        _, flat, k = self._held()
        folded = flat * k
        peak = torch.zeros(self._groups, device=flat.device, dtype=flat.dtype).scatter_reduce(
            0, self._group_of, folded.abs(), reduce="amax", include_self=False
        )
        scale = scale_from_peak(peak, self.mapping.target).index_select(0, self._group_of)
        if not self.learn_scale:
            scale = scale.detach()
        faulty = faulty_weight(folded, self.mapping, self.faults, generator=self.generator,
                               block_stuck_grad=self.block, scale=scale, unbiased=self.unbiased) / k  # fmt: skip
        return [part.view(shape) for part, shape in zip(faulty.split(self._numels), self._shapes)]


def clean_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with parametrised weights under their plain names (the master weights)."""
    out = {}
    for key, value in model.state_dict().items():
        out[key.replace("parametrizations.weight.original", "weight")] = value.detach().clone().cpu()
    return out


def freeze_batchnorm(model: nn.Module) -> None:
    """BN layers to eval mode: statistics fixed as on the chip, γ/β still trainable."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


# --- checkpoints ----------------------------------------------------------------------------


def save_atomic(obj, path: Path) -> None:
    """Save a checkpoint via a temporary file and a rename: an interrupted save never leaves a
    torn file, and the previous epoch's checkpoint stays until the new one is complete."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(path, buffer.getvalue(), ModelError)


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise ModelError(folder_given(path, "a checkpoint file", "model.pt"))
    if not path.is_file():
        raise ModelError(f"{path}: checkpoint not found")
    return _load_tensors_file(path, CHECKPOINT_FORMAT, "checkpoint")


def _load_tensors_file(path: Path, expected_format: str, what: str, hint: str = "") -> dict:
    """A dict saved by torch.save, loaded safely (weights_only), with the format we wrote."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle/zip/runtime errors alike for a bad file
        if is_onnx_file(path):
            raise ModelError(f"{path}: an ONNX file, not a {what}: it is already exported; give the checkpoint it was "
                             f"exported from (model.pt), or sign this file off with: ftdeploy verify {path} --profile NAME") from None  # fmt: skip
        # torch's own text alone can be a bare number (a pickle magic-number check): say what raised
        # it; one line of it (weights_only's refusal runs to several).
        raise ModelError(f"{path}: not a loadable {what}: torch.load raised {type(exc).__name__}: {reason_line(exc)}{hint}") from None
    found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
    if found != expected_format:
        raise ModelError(f"{path}: format: expected {expected_format!r}, found {found!r}{hint}")
    return obj


def model_from_checkpoint(ckpt: dict) -> nn.Module:
    model = create_model(ckpt["model"], num_classes=ckpt["num_classes"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise ModelError(f"checkpoint does not fit model {ckpt['model']!r}: {str(exc).splitlines()[0]}") from None
    return model


# --- the loop -------------------------------------------------------------------------------


def _lr_lambda(total_steps: int, warmup_steps: int, period: int | None = None):
    """Linear warm-up, then cosine to 0 at ``total_steps``; with ``period``, restarted every
    ``period`` steps (progressive blocks of their own), the last block ending at 0."""
    if period:
        once, last = _lr_lambda(period, warmup_steps), total_steps // period - 1
        return lambda step: once(step - period * min(step // period, last))

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


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


def _teacher(init: dict, device) -> nn.Module:
    """The starting checkpoint, fault-free and in eval mode: the function a faulty chip should keep."""
    teacher = model_from_checkpoint(init).to(device).eval()
    teacher.requires_grad_(False)
    return teacher


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al. (2015): KL(teacher || student) of the softened distributions, times T² so its
    gradient keeps the scale of cross-entropy whatever the temperature."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits / t, 1),
                    reduction="batchmean", log_target=True) * t * t  # fmt: skip


def with_distillation(loss: torch.Tensor, student_logits: torch.Tensor, teacher_logits: torch.Tensor, weight: float,
                      temperature: float) -> torch.Tensor:  # fmt: skip
    """The retraining loss with ``weight`` of it given to :func:`distillation_loss`."""
    return (1 - weight) * loss + weight * distillation_loss(student_logits, teacher_logits, temperature)


def _masks_of_pruned(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: (m.weight.detach() != 0) for name, m in deployed_layers(model)}


def train(config: TrainConfig, data: DataBundle, target: Target, out_dir: Path, *, init: dict | None = None,
          profile_name: str = "", progress=None, resume: bool = False) -> dict:  # fmt: skip
    """Run one training; write out_dir/model.pt (after every epoch), log.jsonl, summary.csv and
    config.yaml. ``init``: a loaded checkpoint to start from (required for retraining).
    ``resume``: continue the run already in out_dir from its last finished epoch (see
    ``_ResumePoint``); a finished run is returned as it is, an empty folder starts afresh.
    Under torchrun (WORLD_SIZE > 1) each process takes its share of every batch and simulates
    its own random chips; gradients are averaged by DistributedDataParallel and only rank 0
    evaluates and writes. Returns the final checkpoint dict."""
    dist = _Distributed.from_env(config.device)
    if dist.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels
    torch.manual_seed(config.seed)
    model, data = _starting_model(config, data, init)
    # Which weights pruning zeroed: read before a resumed run's weights replace the starting ones.
    prune_masks = _masks_of_pruned(model) if init is not None and init.get("sparsity") else None
    point = _ResumePoint.find(out_dir, config, target) if resume else None
    if point and point.epochs_done >= config.run_epochs:
        return point.checkpoint
    if point:
        model.load_state_dict(point.state_dict)
    model.to(dist.device)
    if dist.is_main and not point:  # a resumed run keeps the config it was started with
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(yaml.safe_dump(recipe_last(config.model_dump(mode="json")), sort_keys=False))
    run = _Run(config, data, target, model, init, dist, prune_masks)
    start_epoch = run.restore(point) if point else 0
    logger = _RunLog(out_dir, config, progress, run.total_steps, point.log_rows if point else [], run.step,
                     point.how if point else "fresh") if dist.is_main else None  # fmt: skip
    ckpt: dict = {}
    try:
        for epoch in range(start_epoch, config.run_epochs):
            t0 = time.perf_counter()
            train_loss, train_acc = run.train_epoch(epoch, logger)
            if dist.is_main:
                state = clean_state_dict(model)  # the master weights, measured and saved
                val_clean, val_faulty = run.evaluate(state)
                logger.epoch(epoch, config.rate_at(epoch), run.opt.param_groups[0]["lr"], train_loss, train_acc,
                             val_clean, val_faulty, time.perf_counter() - t0)  # fmt: skip
                ckpt = run.save(state, out_dir, profile_name, val_clean, epoch + 1, logger.rows)
            dist.barrier()
    finally:
        run.close()
    if not dist.is_main:  # every rank returns what rank 0 saved (e.g. to retrain from it next)
        ckpt = load_checkpoint(out_dir / "model.pt")
    return ckpt


def _starting_model(config: TrainConfig, data: DataBundle, init: dict | None) -> tuple[nn.Module, DataBundle]:
    """The model a run starts from (``init``'s weights, or a fresh one for a pretraining) and the
    data normalised as that model was trained."""
    if init is None:
        if config.method != "pretrain":
            raise ModelError("fault-tolerant retraining needs a pretrained checkpoint (--from)")
        return create_model(config.model, num_classes=data.num_classes), data
    # Keep the parent's input normalisation: the weights were trained for it.
    norm = init.get("normalization") or {}
    if norm:
        data = dataclasses.replace(data, mean=tuple(norm["mean"]), std=tuple(norm["std"]))
    check_model_fits(config.model, init)
    return model_from_checkpoint(init), data


def check_model_fits(model: str, init: dict) -> None:
    """Refuse retraining checkpoint ``init`` as another model than the one it holds."""
    if init["model"] != model:
        raise ModelError(f"--model {model!r} does not match the checkpoint's model {init['model']!r}")


class _Run:
    """One training's moving parts: the model (on a freshly drawn faulty chip at every step when
    retraining), the optimiser and its learning-rate schedule, the random streams, and the step
    the run has reached. :func:`train` builds it, restores an interrupted run into it and steps
    it epoch by epoch."""

    def __init__(self, config: TrainConfig, data: DataBundle, target: Target, model: nn.Module, init: dict | None,
                 dist: "_Distributed", prune_masks: dict[str, torch.Tensor] | None = None):  # fmt: skip
        self.config, self.data, self.target, self.model, self.init, self.dist = config, data, target, model, init, dist
        device = self.device = dist.device
        self.retraining = config.method != "pretrain"
        # Pruned weights stay zero (re-zeroed after every step), on the model's device.
        self.prune_masks = {name: m.to(device) for name, m in prune_masks.items()} if prune_masks else None
        self.teacher = _teacher(init, device) if self.retraining and config.distill > 0 else None
        self.injector = None
        if self.retraining:  # every rank its own chips: seed offset by rank
            self.injector = FaultInjector(model, target, config.bn, config.stuck_grad == "block", config.seed + 7919 * dist.rank,
                                          device, learn_scale=config.scale_grad == "learn", unbiased=config.unbias_faults,
                                          prune_masks=self.prune_masks, faults=config.fault_model)  # fmt: skip
            self.injector.attach()
        self.net = dist.wrap(model)
        self.opt = _optimizer(model, config)
        self.steps_per_epoch = math.ceil(len(data.train_y) / config.batch_size)
        self.total_steps = self.steps_per_epoch * config.run_epochs
        block = self.steps_per_epoch * config.epochs if config.blocks_each else None
        warmup = int(config.warmup_epochs * self.steps_per_epoch)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _lr_lambda(self.total_steps, warmup, block))
        self.gen = torch.Generator().manual_seed(config.seed)  # same data order on every rank
        self.aug_gen = torch.Generator(device=device).manual_seed(config.seed + 1 + dist.rank)
        self.train_x, self.train_y = data.train_x.to(device), data.train_y.to(device)
        # Frozen BN cannot renormalise the sudden shift of a whole rate of stuck cells: hit at full
        # P_sa^T = 0.05 from the first step, ResNet-20 diverged in its first epoch (loss 12.9, then
        # chance; docs/RESULTS-diff8-folded.md). Ramping the rate in over the first epochs lets it adapt.
        self.rate_warmup_steps = int(config.rate_warmup_epochs * self.steps_per_epoch)
        self.step = 0
        self.acc_pretrain = init.get("acc_pretrain") if init else None

    def restore(self, point: "_ResumePoint") -> int:
        """Continue an interrupted run where it stopped; the epoch to train next."""
        self.step, epoch = point.restore(self.opt, self.sched, self.gen, self.aug_gen, self.injector,
                                         self.steps_per_epoch, self.dist.rank)  # fmt: skip
        return epoch

    def train_epoch(self, epoch: int, logger: "_RunLog | None") -> tuple[float, float]:
        """One pass over the training images at the epoch's fault rate: (mean loss, accuracy %)."""
        config, injector, dist = self.config, self.injector, self.dist
        rate = config.rate_at(epoch)
        if injector:
            injector.set_rate(rate)
        self.model.train()
        if self.retraining and config.bn == "frozen":
            freeze_batchnorm(self.model)
        # Sums stay on the device: one synchronisation per epoch, not per step.
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        for xb, yb in batches(self.train_x, self.train_y, config.batch_size, shuffle=True, generator=self.gen):
            if injector and (self.step < self.rate_warmup_steps or config.clean_steps):
                injector.set_rate(config.step_rate(rate, self.step, self.rate_warmup_steps))
            self.step += 1
            xb, yb = xb[dist.rank :: dist.world], yb[dist.rank :: dist.world]
            logits, loss = self._optimizer_step(normalize(augment(xb, self.aug_gen), self.data.mean, self.data.std), yb)
            loss_sum += loss.detach() * len(yb)
            correct += (logits.argmax(1) == yb).sum()
            seen += len(yb)
            if logger:
                logger.step()
        train_loss = loss_sum.item() / seen
        if not math.isfinite(train_loss):
            raise ModelError(f"training diverged in epoch {epoch + 1} (loss {train_loss}); lower --lr")
        return train_loss, 100.0 * correct.item() / seen

    def _optimizer_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One :func:`sgd_step` on this step's chip, then the schedule, the pruning masks and the
        weight clip."""
        config = self.config
        logits, loss = sgd_step(self.net, x, y, self.opt, clip=config.grad_clip if self.retraining else None,
                                teacher=self.teacher, distill=config.distill, temperature=config.distill_temperature)  # fmt: skip
        self.sched.step()
        if self.prune_masks:
            _apply_masks(self.model, self.prune_masks)
        if self.injector and config.weight_clip:
            self.injector.clip_to_sigmas(config.weight_clip)
        return logits, loss

    def evaluate(self, state: dict[str, torch.Tensor]) -> tuple[float, float | None]:
        """Deployed validation accuracy of the master weights ``state``: clean, and mean over
        ``eval_chips`` chips at P_sa^T (retraining only)."""
        config = self.config
        eval_model = create_model(config.model, num_classes=self.data.num_classes)
        eval_model.load_state_dict(state)
        chips = config.eval_chips if self.retraining else 0
        return deployed_accuracy(eval_model, self.target, self.data, self.device, chips, config.target_rate, config.fault_model,
                                 config.seed)  # fmt: skip

    def save(self, state: dict[str, torch.Tensor], out_dir: Path, profile_name: str, val_clean: float, epochs_done: int,
             log_rows: list[dict]) -> dict:  # fmt: skip
        """Write the checkpoint (master weights ``state``) of the epoch just finished, and what
        resuming after it needs."""
        ckpt = _checkpoint(self.config, self.data, self.target, state, profile_name, self.init,
                           self.acc_pretrain, val_clean, epochs_done)  # fmt: skip
        # resume.pt first: whichever file an interruption leaves older, resuming restarts
        # from a complete epoch (resume.pt carries its own copy of the weights).
        save_atomic(_resume_state(ckpt, self.step, self.opt, self.sched, self.gen, self.aug_gen, self.injector, log_rows),
                    out_dir / "resume.pt")  # fmt: skip
        save_atomic(ckpt, out_dir / "model.pt")
        return ckpt

    def close(self) -> None:
        if self.injector:
            self.injector.detach()


def sgd_step(net: nn.Module, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer, *, clip: float | None = None,
             teacher: nn.Module | None = None, distill: float = 0.0,
             temperature: float = TrainConfig.model_fields["distill_temperature"].default) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Forward (bf16 autocast on CUDA), cross-entropy (with ``distill`` of it given to matching
    ``teacher``), backward, gradient-norm clipping at ``clip``, one optimiser step: what every
    training step does, and what bench/bench_train_overhead.py times. Returns (logits, loss)."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
        logits = net(x)
        loss = F.cross_entropy(logits.float(), y)
        if teacher is not None:
            with torch.no_grad():
                teacher_logits = teacher(x)
            loss = with_distillation(loss, logits.float(), teacher_logits.float(), distill, temperature)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip:
        nn.utils.clip_grad_norm_(net.parameters(), clip)
    opt.step()
    return logits, loss


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.SGD:
    """Nesterov SGD, weight decay on the weights (conv and linear) only, not on biases or BatchNorm."""
    decay = [p for p in model.parameters() if p.dim() > 1]
    other = [p for p in model.parameters() if p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": other, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)


class _RunLog:
    """Per-epoch log.jsonl and summary.csv (rewritten whole, so always complete), and either a
    rich progress bar or one plain line per epoch. A resumed run starts from the rows of the
    epochs it keeps, so an epoch cut short by the interruption leaves no row behind. The first row
    each process writes says how that process started (``"started"``: fresh, or resumed exactly or
    from the weights alone), so the log alone tells a run's history, however it was launched."""

    COLUMNS = ("epoch", "rate", "lr", "train_loss", "train_acc", "val_acc", "val_acc_faulty", "seconds")

    def __init__(self, out_dir: Path, config: TrainConfig, progress, total_steps: int, rows: list[dict] = (),
                 steps_done: int = 0, started: str = "fresh"):  # fmt: skip
        self.out_dir, self.config, self.progress = out_dir, config, progress
        self.started: str | None = started  # recorded on this process's first row
        self.task = progress.add_task(config.method, total=total_steps, completed=steps_done) if progress else None
        self.rows: list[dict] = [dict(r) for r in rows]
        (out_dir / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in self.rows))

    def step(self) -> None:
        if self.progress:
            self.progress.advance(self.task)

    def epoch(self, epoch, rate, lr, train_loss, train_acc, val_clean, val_faulty, seconds) -> None:
        row = dict(zip(self.COLUMNS, (epoch + 1, rate, lr, train_loss, train_acc, val_clean, val_faulty, seconds)))
        if self.started:
            row["started"], self.started = self.started, None
        self.rows.append(row)
        with (self.out_dir / "log.jsonl").open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        lines = [",".join(self.COLUMNS)]
        lines += [",".join("" if r[k] is None else f"{r[k]:.6g}" for k in self.COLUMNS) for r in self.rows]
        (self.out_dir / "summary.csv").write_text("\n".join(lines) + "\n")
        faulty = f", {val_faulty:.2f} % at rate {self.config.target_rate:g}" if val_faulty is not None else ""
        line = (f"[{self.config.method}] epoch {epoch + 1}/{self.config.run_epochs} rate {rate:g} "
                f"loss {train_loss:.3f} val {val_clean:.2f} %{faulty} ({seconds:.1f} s)")  # fmt: skip
        if self.progress:
            self.progress.console.print(line)
        else:
            print(line, flush=True)


class _Distributed:
    """torchrun integration: rank/world from the environment, DDP wrapping, barriers.
    A plain single-process run has rank 0, world 1 and does nothing extra."""

    def __init__(self, rank: int, world: int, device: torch.device):
        self.rank, self.world, self.device = rank, world, device

    @classmethod
    def from_env(cls, device_name: str) -> "_Distributed":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls(0, 1, pick_device(device_name))
        import torch.distributed as tdist

        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = pick_device(device_name)
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        if not tdist.is_initialized():
            tdist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(tdist.get_rank(), tdist.get_world_size(), device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        # BN buffers stay per rank (frozen during retraining anyway); pretraining syncs nothing
        # extra, as in torchvision's reference scripts without --sync-bn.
        return DistributedDataParallel(model, device_ids=[self.device] if self.device.type == "cuda" else None,
                                       broadcast_buffers=False)  # fmt: skip

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as tdist

            tdist.barrier()


def _apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Re-zero pruned weights after an optimiser step (the master weight when parametrised)."""
    with torch.no_grad():
        for name, m in deployed_layers(model):
            w = m.parametrizations.weight.original if parametrize.is_parametrized(m, "weight") else m.weight
            w.mul_(masks[name])


# --- resuming an interrupted run --------------------------------------------------------------


def _resume_state(ckpt, step, opt, sched, gen, aug_gen, injector, rows) -> dict:
    """Everything beyond the weights that the next epoch depends on, so that a resumed run
    continues exactly where the interrupted one stopped (tests/test_train.py checks bit-equality
    with an uninterrupted run)."""
    return {
        "format": RESUME_FORMAT,
        "checkpoint": ckpt,  # with the weights and the run's config
        "step": step,
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "rng_device": str(aug_gen.device.type),
        "rng_data": gen.get_state(),
        "rng_augment": aug_gen.get_state(),
        "rng_faults": injector.generator.get_state() if injector else None,
        "log": rows,
    }


@dataclasses.dataclass
class _ResumePoint:
    """Where an interrupted run in ``out_dir`` stopped.

    From ``resume.pt`` the run continues exactly: weights, optimiser momentum, learning-rate
    schedule, fault rate and every random stream. A run folder with only ``model.pt`` (written
    by an older ftdeploy, or copied without resume.pt) continues from its weights with the
    schedule advanced to the same step, but with fresh momentum and fresh random streams; the
    run says so."""

    checkpoint: dict
    epochs_done: int
    log_rows: list[dict]
    saved: dict | None  # the resume.pt contents, None for a model.pt-only resume

    @property
    def state_dict(self) -> dict:
        return self.checkpoint["state_dict"]

    @classmethod
    def find(cls, out_dir: Path, config: TrainConfig, target: Target) -> "_ResumePoint | None":
        saved = _load_resume_file(out_dir / "resume.pt")
        if saved is not None:
            path, ckpt, rows = out_dir / "resume.pt", saved["checkpoint"], list(saved["log"])
        elif (out_dir / "model.pt").is_file():
            path, ckpt = out_dir / "model.pt", load_checkpoint(out_dir / "model.pt")
            rows = _read_log_rows(out_dir / "log.jsonl")[: int(ckpt.get("epochs_done") or 0)]
        else:
            return None
        _check_resumable(path, ckpt, config, target)
        return cls(ckpt, int(ckpt.get("epochs_done") or 0), rows, saved)

    @property
    def how(self) -> str:
        return "resumed exactly" if self.saved is not None else "resumed from weights"

    def restore(self, opt, sched, gen, aug_gen, injector, steps_per_epoch: int, rank: int = 0) -> tuple[int, int]:
        """Put optimiser, schedule and random streams where the run stopped; (step, epoch).
        Under torchrun only rank 0's augmentation and fault streams were saved: the other ranks
        draw fresh ones, seeded by rank and step, so their chips still differ from rank 0's."""
        if self.saved is None:
            step = self.epochs_done * steps_per_epoch
            _advance_schedule(sched, step)
            print(f"resuming after epoch {self.epochs_done} from model.pt alone (no resume.pt): optimiser momentum "
                  "and random streams restart; learning rate and fault rate continue on schedule", flush=True)  # fmt: skip
            return step, self.epochs_done
        opt.load_state_dict(self.saved["optimizer"])
        sched.load_state_dict(self.saved["scheduler"])
        gen.set_state(self.saved["rng_data"])
        step = int(self.saved["step"])
        if rank:
            aug_gen.manual_seed(1_000_003 * step + rank)
            if injector is not None:
                injector.generator.manual_seed(7_919 * step + rank)
        elif self.saved["rng_device"] == aug_gen.device.type:  # a CUDA stream cannot continue on the CPU
            aug_gen.set_state(self.saved["rng_augment"])
            if injector is not None and self.saved["rng_faults"] is not None:
                injector.generator.set_state(self.saved["rng_faults"])
        print(f"resuming after epoch {self.epochs_done} (from resume.pt: optimiser, schedule and random streams restored)", flush=True)
        return step, self.epochs_done


def _load_resume_file(path: Path) -> dict | None:
    if not path.is_file():
        return None
    return _load_tensors_file(path, RESUME_FORMAT, "resume file", "; delete it to resume from model.pt")


def _check_resumable(path: Path, ckpt: dict, config: TrainConfig, target: Target) -> None:
    """A resumed run must be the run that was interrupted: only where and how closely it is
    checked may change, and it must fault the same chip family (every target field but the
    names). Fields an older checkpoint did not record: config fields are not compared, target
    fields take their defaults (``batchnorm: fold``, the only behaviour before the field
    existed). Pretraining injects no faults, so any target will do."""
    differ = run_differences(ckpt, config)
    if differ:
        raise ConfigError(f"{path}: cannot resume a different run ({differ}); use a new --out or the same settings")
    if not ckpt.get("target") or config.method == "pretrain":
        return
    names = {"name", "description"}
    before = Target.model_validate(ckpt["target"]).model_dump(mode="json", exclude=names)
    differ = _differences(before, target.model_dump(mode="json", exclude=names), list(before))
    if differ:
        raise ConfigError(f"{path}: cannot resume on a different target ({differ}); use the run's profile")


def run_differences(ckpt: dict, config: TrainConfig) -> str:
    """Where the run ``ckpt`` recorded differs from ``config`` ('' where it does not), as
    'field: old there, new now': every field but where and how closely it is checked. Fields an
    older checkpoint did not record are not compared."""
    saved, now = ckpt.get("config") or {}, config.model_dump(mode="json")
    return _differences(saved, now, [k for k in saved if k in now and k not in RESUME_MAY_DIFFER])


def _differences(before: dict, now: dict, keys: list[str]) -> str:
    """'key: old there, new now' for each of ``keys`` whose values differ ('' when none do)."""
    return ", ".join(f"{k}: {before[k]!r} there, {now[k]!r} now" for k in keys if _plain(before[k]) != _plain(now[k]))


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _read_log_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line torn by the interruption, and nothing after it
    return rows


def _advance_schedule(sched, step: int) -> None:
    """Move a LambdaLR to ``step`` without optimiser steps (as if it had been stepped)."""
    sched.last_epoch = step
    for group, base, fn in zip(sched.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
        group["lr"] = base * fn(step)


def _checkpoint(config, data, target, state, profile_name, init, acc_pretrain, val_clean, epochs_done) -> dict:
    pretrain = config.method == "pretrain"
    return {
        "format": CHECKPOINT_FORMAT,
        "model": config.model,
        "num_classes": data.num_classes,
        "classes": list(data.classes),
        "state_dict": state,
        "profile": profile_name,
        "target": target.model_dump(mode="json"),
        "method": config.method,
        "schedule": config.schedule(),
        "split": list(config.fault_model.stuck.ratio),
        "epochs": config.run_epochs,
        "epochs_done": epochs_done,
        "seed": config.seed,
        "config": config.model_dump(mode="json"),
        "normalization": {"mean": list(data.mean), "std": list(data.std)},
        "data": data.split_record(),
        "acc_pretrain": val_clean if pretrain else acc_pretrain,
        "acc_retrain": None if pretrain else val_clean,
        "sparsity": (init or {}).get("sparsity"),
        "pruning": (init or {}).get("pruning"),  # a pruned model's record survives its retraining
        "equalization": (init or {}).get("equalization"),  # so does an equalised one's (ftdeploy equalize)
        "parent": (init or {}).get("config"),
    }


@contextmanager
def quiet_progress(enabled: bool):
    """A rich progress bar on a terminal, nothing (plain per-epoch lines) when piped."""
    import sys

    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as p:  # stdout stays clean for results
        yield p
