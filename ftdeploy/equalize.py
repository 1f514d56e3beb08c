"""Channel range equalisation: the per-channel scale a chip with BatchNorm in its periphery gets
for free.

A target with one scale per layer (``scale: layer``) programs every weight as a code of
``s = max|W|/Q``, the layer's largest weight. A stuck-on cell then adds (or subtracts) that
full scale whatever channel it sits in, and an output channel whose weights are all small
spends few of the code levels and suffers the layer's largest damage. Convolutions followed by
BatchNorm are scale-free per output channel (BN normalises it away), so their channels' ranges
differ for no functional reason, and in trained networks they do differ widely (`ftdeploy
equalize` prints the median gain per layer).

Where BN runs in the digital periphery (``batchnorm: periphery``), each channel can be scaled up
to the layer's peak and its BN statistics scaled with it: the network computes exactly the same
function, but every channel now spans the full code range, so its quantisation step and the
damage a stuck-on cell does are relative to its own weights, not the layer's largest. It is
what a per-channel scale would give, without a per-channel multiplier in the crossbar's
periphery: the BN multiplier that is there already absorbs it. The equaliser of Nagel et al.
(ICCV 2019, data-free quantisation) moves such scales across layers; here they move into the BN
of the same layer. Nothing on the chip changes, and the fault model stays as it is.

A target that folds BN into the cells has no such freedom: the cells hold ``W·γ/σ``, which the
function fixes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn

from .chip import DeployedNetwork
from .data import DataBundle, ValidationSet, image_set_fingerprint
from .errors import ConfigError, DataError
from .mapping import ScaleGranularity
from .models import conv_bn_pairs
from .profiles import BatchNormPlacement, Target
from .training.checkpoint import clean_state_dict, model_from_checkpoint


@dataclass(frozen=True)
class LayerGains:
    """How much one layer's channels were scaled up (1 for the channel holding the peak)."""

    name: str
    gains: torch.Tensor

    def record(self) -> dict:
        return {"layer": self.name, "channels": len(self.gains), "median_gain": round(self.gains.median().item(), 4),
                "max_gain": round(self.gains.max().item(), 4)}  # fmt: skip


def equalizes(target: Target) -> bool:
    """Whether equalising can change what the target's cells hold: BatchNorm in the periphery
    and one scale per layer."""
    return target.batchnorm == BatchNormPlacement.periphery and target.scale is ScaleGranularity.layer


def check_equalizable(target: Target) -> None:
    """Raise ConfigError, saying why, unless :func:`equalizes`."""
    if target.batchnorm != BatchNormPlacement.periphery:
        raise ConfigError(
            f"target {target.name}: batchnorm: expected periphery to equalize channel ranges, found "
            f"{target.batchnorm.value} (the cells hold the folded W·γ/σ, which the function fixes)"
        )
    if target.scale is ScaleGranularity.channel:
        raise ConfigError(
            f"target {target.name}: scale: expected layer to equalize channel ranges, found channel "
            "(every output channel has its own range already)"
        )


def equalize_checkpoint(ckpt: dict, target: Target, data: ValidationSet | DataBundle,
                        source_sha256: str | None = None, allow_model_import: bool = False) -> dict:  # fmt: skip
    """The checkpoint with its channel ranges equalised for ``target``, its deployed fault-free
    accuracy measured on ``data`` before and after, and an ``equalization`` record (which
    retraining, export and sign-off carry on). The measured accuracy replaces the checkpoint's
    own: Acc_retrain for a retrained model, Acc_pretrain for a pretrained or pruned one."""
    check_equalizable(target)
    if len(data.classes) != ckpt["num_classes"]:
        raise DataError(f"--data: checkpoint has {ckpt['num_classes']} classes, {data.spec!r} has {len(data.classes)}")
    model = model_from_checkpoint(ckpt, allow_import=allow_model_import)
    equalized, layers = equalize_channel_ranges(model)
    norm = ckpt["normalization"]
    before, after = (DeployedNetwork(m, target).accuracy(data.val_x, data.val_y, norm["mean"], norm["std"])
                     for m in (model, equalized))  # fmt: skip
    accuracy_key = "acc_pretrain" if ckpt.get("acc_retrain") is None else "acc_retrain"
    record = {"target": target.name, "source_sha256": source_sha256, "images": len(data.val_y),
              "acc_before": before, "acc_after": after, "layers": [layer.record() for layer in layers]}  # fmt: skip
    measured = {accuracy_key: after}
    if accuracy_key == "acc_pretrain":
        measured["acc_pretrain_images"] = image_set_fingerprint(data.val_x.numpy(), data.val_y.numpy())
    return dict(ckpt, state_dict=clean_state_dict(equalized), equalization=record, **measured)


def equalize_channel_ranges(model: nn.Module) -> tuple[nn.Module, list[LayerGains]]:
    """An eval-mode copy of ``model`` in which every convolution that feeds a BatchNorm alone has
    each output channel scaled to the layer's largest magnitude, and the BN's running statistics
    scaled with it so that it normalises the scaled channel to the same values: the copy
    computes the same function (up to float rounding). Weights that were zero stay zero, so a
    pruned model keeps its masks. Layers without a following BN are left as they are."""
    equalized = copy.deepcopy(model).eval()
    modules = dict(equalized.named_modules())
    layers = []
    with torch.no_grad():
        for conv_name, bn_name in conv_bn_pairs(equalized).items():
            conv, bn = modules[conv_name], modules[bn_name]
            gains = channel_gains(conv.weight)
            _scale_channels(conv, bn, gains)
            layers.append(LayerGains(conv_name, gains))
    return equalized, layers


def channel_gains(weight: torch.Tensor) -> torch.Tensor:
    """Per output channel: the layer's peak over the channel's peak (1 for an all-zero channel)."""
    channel_peak = weight.abs().flatten(1).amax(1)
    return torch.where(channel_peak > 0, channel_peak.max() / channel_peak, torch.ones_like(channel_peak))


def _scale_channels(conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm, gains: torch.Tensor) -> None:
    """conv's output channel c times gains[c]; BN sees a·z and normalises it with a·μ and
    sqrt(var' + eps) = a·sqrt(var + eps), so its output is unchanged (γ and β stay)."""
    conv.weight.mul_(gains.view(-1, *([1] * (conv.weight.dim() - 1))))
    if conv.bias is not None:
        conv.bias.mul_(gains)
    if bn.running_mean is not None:  # a BN without running statistics normalises any scale away
        bn.running_mean.mul_(gains)
        bn.running_var.copy_(gains.square() * (bn.running_var + bn.eps) - bn.eps)
