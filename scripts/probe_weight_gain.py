"""Probe: does a model retrained at a high fault rate expect its weights smaller than a
fault-free chip holds them?

On a two-column differential pair, a chip at stuck-at rate P holds on average the weights shrunk
by 1 − P (faults.code_expectation). A model retrained at P_sa^T fits that gain, and BatchNorm's
fixed statistics pass it on from layer to layer, so on a fault-free chip every layer is
(1 − P_sa^T)^-1 too loud. This script programs a checkpoint's conv/linear weights scaled by each
gain and measures the deployed model the sweep's way (8-bit weights on the profile's target),
clean and on simulated chips. A clean accuracy that rises as the gain falls towards 1 − P_sa^T
says the clean deficit is (partly) that gain.

    python scripts/probe_weight_gain.py runs/c10p/dense/runs/one-shot-0.1/model.pt \\
        --profile chen2015 --data npz:../shared/data/cifar10-train-jpeg.npz
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ftdeploy.chip import DeployedNetwork
from ftdeploy.data import load_validation
from ftdeploy.models import deployed_layers
from ftdeploy.profiles import load_profile
from ftdeploy.train import load_checkpoint, model_from_checkpoint
from ftdeploy.verify import subset_indices


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", type=Path, nargs="+")
    ap.add_argument("--profile", default="chen2015")
    ap.add_argument("--data", default="npz:../shared/data/cifar10-train-jpeg.npz")
    ap.add_argument("--gains", default="1,0.97,0.95,0.9")
    ap.add_argument("--rates", default="0.01,0.05")
    ap.add_argument("--chips", type=int, default=3)
    ap.add_argument("--max-images", type=int, default=2000, help="stratified subset of the validation images")
    args = ap.parse_args()

    resolved = load_profile(args.profile)
    data = load_validation(args.data)
    idx = torch.from_numpy(subset_indices(data.val_y.numpy(), args.max_images))
    val_x, val_y = data.val_x[idx], data.val_y[idx]
    rates = [float(r) for r in args.rates.split(",")]
    print(f"{len(val_y)} validation images, {args.chips} chips per rate, target {resolved.target.name}")
    for path in args.checkpoints:
        ckpt = load_checkpoint(path)
        norm = ckpt["normalization"]
        for gain in (float(g) for g in args.gains.split(",")):
            net = DeployedNetwork(scaled(model_from_checkpoint(ckpt), gain), resolved.target, torch.device("cpu"))
            line = net.accuracy_line(rates, resolved.profile.faults.split, args.chips, val_x, val_y, norm["mean"], norm["std"])
            print(f"{path}  gain {gain:<5g} {line}", flush=True)


def scaled(model: torch.nn.Module, gain: float) -> torch.nn.Module:
    """The model with every deployed (conv/linear) weight multiplied by ``gain``."""
    with torch.no_grad():
        for _, layer in deployed_layers(model):
            layer.weight.mul_(gain)
    return model


if __name__ == "__main__":
    main()
