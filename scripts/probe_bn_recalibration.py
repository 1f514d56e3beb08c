"""Probe: is the clean accuracy a high training rate costs a BatchNorm-statistics mismatch?

Fault-tolerant retraining keeps BatchNorm's statistics frozen at the pretrained model's (the
deployed periphery applies fixed statistics). If the retrained weights had drifted so that those
statistics no longer fit fault-free activations, re-estimating them on fault-free training images
would restore clean accuracy. This script measures a retrained checkpoint as trained and with its
BatchNorm statistics re-estimated (5,000 training images, no faults, no augmentation), clean and
on simulated chips, the sweep's way (deployed 8-bit weights on the profile's target).

    python scripts/probe_bn_recalibration.py runs/c10p/dense/runs/one-shot-0.05/model.pt \\
        --profile chen2015 --data npz:../shared/data/cifar10-train-jpeg.npz
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

from ftdeploy.chip import DeployedNetwork
from ftdeploy.data import load_data, normalize
from ftdeploy.profiles import load_profile
from ftdeploy.train import load_checkpoint, model_from_checkpoint
from ftdeploy.verify import subset_indices


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--profile", default="chen2015")
    ap.add_argument("--data", default="npz:../shared/data/cifar10-train-jpeg.npz")
    ap.add_argument("--rates", default="0.005,0.01,0.05")
    ap.add_argument("--chips", type=int, default=5)
    ap.add_argument("--max-images", type=int, default=2000, help="stratified subset of the validation images")
    ap.add_argument("--calibration-images", type=int, default=5000)
    args = ap.parse_args()

    resolved = load_profile(args.profile)
    data = load_data(args.data)
    idx = torch.from_numpy(subset_indices(data.val_y.numpy(), args.max_images))
    val_x, val_y = data.val_x[idx], data.val_y[idx]
    ckpt = load_checkpoint(args.checkpoint)
    norm = ckpt["normalization"]
    rates = [float(r) for r in args.rates.split(",")]

    def measure(model: torch.nn.Module, name: str) -> None:
        net = DeployedNetwork(model, resolved.target, torch.device("cpu"))
        line = net.accuracy_line(rates, resolved.profile.faults.split, args.chips, val_x, val_y, norm["mean"], norm["std"])
        print(f"{name:<34} {line}", flush=True)

    print(f"{args.checkpoint}: {len(val_y)} validation images, {args.chips} chips per rate, target {resolved.target.name}")
    model = model_from_checkpoint(ckpt)
    measure(model, "as trained (pretrained BN stats)")
    measure(recalibrated(model, data.train_x, norm, args.calibration_images), "BN stats re-estimated, no faults")


def recalibrated(model: torch.nn.Module, train_x: torch.Tensor, norm: dict, images: int) -> torch.nn.Module:
    """A copy whose BatchNorm running statistics are the plain average over ``images`` fault-free
    training images (seeded choice); every weight unchanged."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average, not an exponential one
    order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(0))[:images]
    model.train()
    with torch.no_grad():
        for start in range(0, images, 250):
            model(normalize(train_x[order[start : start + 250]], norm["mean"], norm["std"]))
    return model.eval()


if __name__ == "__main__":
    main()
