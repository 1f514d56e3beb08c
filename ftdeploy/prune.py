"""Unstructured weight pruning before fault-tolerant retraining: one-shot magnitude pruning
(Han et al. 2015) and ADMM pruning (Zhang et al., ECCV 2018), each followed by masked
fine-tuning. The paper (DATE 2022, Table II) retrains ADMM-pruned ResNets fault-tolerantly;
pruned models are the more fragile ones.

Choices, and why:

* **Layer-wise, uniform sparsity** (every pruned layer loses the same fraction), not one global
  threshold. Every conv here feeds a BatchNorm, which undoes any rescaling of the conv's
  weights, so a weight's magnitude means something only next to the weights of its own layer;
  a global threshold would prune whole layers whose weights happen to be small. The chip agrees:
  each layer has its own scale ``max|W|/Q``. Han et al. and Zhang et al. also set per-layer
  rates.
* **The first and the last deployed layer stay dense** (the common CIFAR-ResNet practice): the
  stem conv sees raw pixels through only 3 input channels and the classifier decides every
  class; both are sensitive and tiny (0.4 % of ResNet-20's weights), so pruning them saves
  almost nothing. The checkpoint's ``sparsity`` is the zero fraction of the *pruned* layers;
  ``pruning["overall_sparsity"]`` counts every deployed layer.
* **Exactly ``round(S·n)`` weights per layer** are zeroed (a stable sort of ``|w|``, not a
  threshold), so ties cannot change the achieved sparsity.
* **Masked fine-tuning is the ordinary trainer** (``training.loop.train``, method ``pretrain``)
  started from the pruned checkpoint: its ``sparsity`` is set, so the trainer re-zeroes the
  pruned weights after every step — here and in any later fault-tolerant retraining.
* **ADMM**: minimise ``loss + ρ/2·Σ‖W − Z + U‖²`` over W by SGD for one epoch, then
  ``Z = Π(W + U)`` (keep the largest ``1 − S`` of each layer) and ``U += W − Z``; repeat. ρ grows
  geometrically from ``rho_start`` = 1e-2 to ``rho_end`` = 1 (Zhang et al. also raise ρ, by
  10x per stage up to about 1), and the scaled dual U is rescaled whenever ρ changes (Boyd et
  al. 2011, §3.4.1). Measured on the embedded data (democnn, 70 %, 4 ADMM epochs of 40 steps):
  1e-3 -> 1e-1 left 33 % of the weight norm outside Z's support and hard pruning cost 15
  points; 1e-2 -> 1 left 8 % and cost 1 point; without the rescaling Z oscillated and hard
  pruning cost more than magnitude pruning. BatchNorm trains normally: no faults are injected
  here. Finally W is hard-pruned to the support of Z.

Pruned weights still own cells on the chip; those cells fail like any other (a stuck-on cell of
a pruned weight reads as a full-scale weight). The fault model already covers them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, get_args

import torch
import torch.nn as nn
import torch.nn.functional as F

from .chip import deployed_accuracy
from .choices import PruneMethod
from .data import DataBundle, augment, batches, normalize
from .devices import pick_device
from .errors import ConfigError, DataError, ModelError
from .files import run_folder_lock
from .models import deployed_layers
from .profiles import Target
from .training.checkpoint import clean_state_dict, load_checkpoint, model_from_checkpoint, save_atomic
from .training.config import TrainConfig

METHODS = get_args(PruneMethod)


@dataclass(frozen=True)
class PruneConfig:
    """One pruning run. Invalid values raise ConfigError naming the command-line option."""

    method: str
    sparsity: float  # fraction of weights zeroed in each pruned layer
    epochs: int  # masked fine-tuning epochs after pruning
    admm_epochs: int = 0  # ADMM epochs (method admm only)
    lr: float = 0.02  # peak learning rate of fine-tuning, constant learning rate of ADMM
    batch_size: int = 128
    weight_decay: float = 5e-4
    seed: int = 0
    device: str = "auto"
    rho_start: float = 1e-2  # ADMM penalty of the first epoch
    rho_end: float = 1.0  # ADMM penalty of the last epoch (geometric in between)
    keep_dense_ends: bool = True  # first and last deployed layer stay dense

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(f"--method: expected one of {', '.join(METHODS)}, found {self.method!r}")
        if not 0 < self.sparsity < 1:
            raise ConfigError(f"--sparsity: expected a fraction of weights strictly between 0 and 1, found {self.sparsity}")
        if self.epochs < 1:
            raise ConfigError(f"--epochs: expected at least 1 fine-tuning epoch, found {self.epochs}")
        if self.method == "admm" and self.admm_epochs < 1:
            raise ConfigError(f"--admm-epochs: expected at least 1 for method admm, found {self.admm_epochs}")
        if not self.lr > 0:
            raise ConfigError(f"--lr: expected a positive learning rate, found {self.lr}")
        if not 0 < self.rho_start <= self.rho_end:
            raise ConfigError(f"rho: expected 0 < rho_start <= rho_end, found {self.rho_start}, {self.rho_end}")

    def rho_schedule(self) -> list[float]:
        """ADMM penalty of each ADMM epoch: geometric from rho_start to rho_end."""
        n = self.admm_epochs
        if n == 1:
            return [self.rho_start]
        ratio = self.rho_end / self.rho_start
        return [self.rho_start * ratio ** (e / (n - 1)) for e in range(n)]


# --- which weights, and which of them survive -----------------------------------------------


def prunable_layers(model: nn.Module, keep_dense_ends: bool = True) -> list[tuple[str, nn.Module]]:
    """Deployed layers that get pruned: all, or all but the first and the last."""
    layers = deployed_layers(model)
    if not keep_dense_ends:
        return layers
    if len(layers) < 3:
        raise ModelError(f"model has {len(layers)} deployed layers; keeping the first and last dense leaves none to prune")
    return layers[1:-1]


def keep_largest(x: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean mask keeping all but the ``round(sparsity·n)`` smallest-magnitude entries.

    A stable sort decides ties by position, so exactly that many entries are dropped even when
    magnitudes repeat (e.g. zeros)."""
    flat = x.detach().abs().flatten()
    n_drop = int(round(sparsity * flat.numel()))
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep[torch.sort(flat, stable=True).indices[:n_drop]] = False
    return keep.view_as(x)


def apply_masks(layers: list[tuple[str, nn.Module]], masks: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, module in layers:
            module.weight.mul_(masks[name])


def zero_fraction(weights: list[torch.Tensor]) -> float:
    """Fraction of exactly-zero entries over a list of tensors."""
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / max(1, sum(w.numel() for w in weights))


# --- the two methods ------------------------------------------------------------------------


def magnitude_masks(layers: list[tuple[str, nn.Module]], sparsity: float) -> dict[str, torch.Tensor]:
    """One-shot magnitude pruning (Han et al. 2015): per layer, drop the smallest |w|."""
    return {name: keep_largest(module.weight, sparsity) for name, module in layers}


def admm_masks(model: nn.Module, layers: list[tuple[str, nn.Module]], data: DataBundle, config: PruneConfig,
               device: torch.device, log: Callable[[str], None] = print) -> dict[str, torch.Tensor]:  # fmt: skip
    """ADMM pruning (Zhang et al. 2018): train W towards its sparse projection Z; return the
    support of the final Z. ``model`` is trained in place (its weights are not yet pruned)."""
    weights = [module.weight for _, module in layers]
    masks = [keep_largest(w, config.sparsity) for w in weights]
    z = [w.detach() * m for w, m in zip(weights, masks)]
    u = [torch.zeros_like(w) for w in weights]
    opt = _sgd(model, config)
    gen = torch.Generator().manual_seed(config.seed)
    aug_gen = torch.Generator(device=device).manual_seed(config.seed + 1)
    train_x, train_y = data.train_x.to(device), data.train_y.to(device)
    rhos = config.rho_schedule()
    for epoch, rho in enumerate(rhos):
        if epoch:
            # U is the scaled dual Y/ρ: when ρ changes, U must follow (Boyd et al. 2011, §3.4.1),
            # else the old dual is suddenly worth ρ_new/ρ_old times more and Z oscillates.
            u = [ui * (rhos[epoch - 1] / rho) for ui in u]
        t0, loss_sum, seen = time.perf_counter(), 0.0, 0
        model.train()
        for xb, yb in batches(train_x, train_y, config.batch_size, shuffle=True, generator=gen):
            x = normalize(augment(xb, aug_gen), data.mean, data.std)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = F.cross_entropy(model(x).float(), yb)
            penalty = sum(((w - zi + ui) ** 2).sum() for w, zi, ui in zip(weights, z, u))
            total = loss + 0.5 * rho * penalty
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            loss_sum += loss.item() * len(yb)
            seen += len(yb)
        if not math.isfinite(loss_sum):
            raise ModelError(f"ADMM diverged in epoch {epoch + 1} (loss {loss_sum}); lower --lr")
        with torch.no_grad():
            for i, w in enumerate(weights):
                masks[i] = keep_largest(w + u[i], config.sparsity)  # Z = Π(W + U)
                z[i] = (w + u[i]) * masks[i]
                u[i] += w - z[i]
        log(f"[admm] epoch {epoch + 1}/{config.admm_epochs} rho {rho:.3g} loss {loss_sum / seen:.3f} "
            f"cut {_share_outside(weights, masks):.3f} ({time.perf_counter() - t0:.1f} s)")  # fmt: skip
    return {name: m for (name, _), m in zip(layers, masks)}


def _share_outside(weights: list[torch.Tensor], masks: list[torch.Tensor]) -> float:
    """‖W outside the support of Z‖ / ‖W‖: the share of the weights hard pruning would cut now.
    ADMM works when this falls towards 0 as ρ grows."""
    cut = sum(float((w.detach()[~m] ** 2).sum()) for w, m in zip(weights, masks))
    total = sum(float((w.detach() ** 2).sum()) for w in weights)
    return math.sqrt(cut / max(total, 1e-30))


def _sgd(model: nn.Module, config: PruneConfig) -> torch.optim.Optimizer:
    """The trainer's optimiser: Nesterov SGD, weight decay on weights only."""
    decay = [p for p in model.parameters() if p.dim() > 1]
    other = [p for p in model.parameters() if p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": other, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=config.lr, momentum=0.9, nesterov=True)


# --- the run --------------------------------------------------------------------------------


def prune(parent_path: Path, config: PruneConfig, data: DataBundle, target: Target, out_dir: Path, *,
          profile_name: str = "", progress=None, log: Callable[[str], None] = print, resume: bool = False,
          allow_model_import: bool = False) -> dict:  # fmt: skip
    """Prune a checkpoint, fine-tune with the masks held, write out_dir/model.pt (and the
    trainer's log.jsonl, summary.csv, config.yaml). Returns the checkpoint dict.
    ``resume``: continue an interrupted fine-tuning; the pruning is redone first, which gives the
    same masks for magnitude pruning (deterministic) and, seeded, for ADMM on the CPU."""
    parent = load_checkpoint(parent_path)
    if data.num_classes != parent["num_classes"]:
        raise DataError(f"--data: checkpoint has {parent['num_classes']} classes, {data.spec!r} has {data.num_classes}")
    device = pick_device(config.device)
    torch.manual_seed(config.seed)
    model = model_from_checkpoint(parent, allow_import=allow_model_import, source=str(parent_path)).to(device)
    layers = prunable_layers(model, config.keep_dense_ends)
    if config.method == "magnitude":
        masks = magnitude_masks(layers, config.sparsity)
    else:
        masks = admm_masks(model, layers, data, config, device, log)
    apply_masks(layers, masks)
    sparsity = zero_fraction([m.weight for _, m in layers])
    acc_pruned, _ = deployed_accuracy(model, target, data, device)
    log(f"[prune] {config.method}: {sparsity:.1%} of the pruned layers' weights are zero; "
        f"{acc_pruned:.2f} % before fine-tuning")  # fmt: skip
    from .training.loop import train  # the fine-tuning alone needs the trainer, not the rest of pruning

    # A truthy ``sparsity`` is what makes the trainer hold the zeros (training.loop._masks_of_pruned).
    pruned = dict(parent, state_dict=clean_state_dict(model), sparsity=sparsity)
    finetune = TrainConfig(method="pretrain", model=parent["model"], epochs=config.epochs, lr=config.lr,
                           batch_size=config.batch_size, weight_decay=config.weight_decay, seed=config.seed,
                           eval_chips=0, device=config.device)  # fmt: skip
    with run_folder_lock(out_dir, ModelError):  # the fine-tuning's folder and the pruned model.pt written after it
        ckpt = train(finetune, data, target, out_dir, init=pruned, profile_name=profile_name, progress=progress, resume=resume,
                     allow_model_import=allow_model_import)  # fmt: skip
        names = [name for name, _ in layers]
        _check_masks_held(ckpt["state_dict"], names, masks)
        ckpt["sparsity"] = zero_fraction([ckpt["state_dict"][f"{n}.weight"] for n in names])
        ckpt["method"] = f"prune-{config.method}"  # the fine-tuning ran as "pretrain": no faults
        ckpt["pruning"] = pruning_record(config, ckpt["state_dict"], model, names, acc_pruned)
        save_atomic(ckpt, out_dir / "model.pt")
    return ckpt


def _check_masks_held(state: dict[str, torch.Tensor], names: list[str], masks: dict[str, torch.Tensor]) -> None:
    """Fine-tuning must leave every pruned weight at zero; if not, the trainer lost the masks."""
    for name in names:
        revived = int(((state[f"{name}.weight"] != 0) & ~masks[name].cpu()).sum())
        if revived:
            raise ModelError(f"fine-tuning revived {revived} pruned weights of layer {name} (masks not applied)")


def pruning_record(config: PruneConfig, state: dict[str, torch.Tensor], model: nn.Module, pruned: list[str],
                   acc_before_finetune: float) -> dict:  # fmt: skip
    """What the checkpoint says about its pruning: method, target and achieved sparsity per layer."""
    all_names = [name for name, _ in deployed_layers(model)]
    record = {
        "method": config.method,
        "target_sparsity": config.sparsity,
        "layers": {n: zero_fraction([state[f"{n}.weight"]]) for n in pruned},
        "dense_layers": [n for n in all_names if n not in pruned],
        "overall_sparsity": zero_fraction([state[f"{n}.weight"] for n in all_names]),
        "acc_before_finetune": acc_before_finetune,
        "finetune_epochs": config.epochs,
    }
    if config.method == "admm":
        record["admm_epochs"] = config.admm_epochs
        record["rho"] = config.rho_schedule()
    return record
