"""Probe: what does clipping a checkpoint's weights to ± K standard deviations buy before any
retraining?

A stuck-on cell adds its layer's peak weight (the full scale of a per-layer scale), so a layer
whose peak sits far out in its distribution pays for it at every stuck-on cell. This script
clips a checkpoint's deployed weights with the trainer's own clip (``FaultInjector.clip_to_sigmas``,
what ``--weight-clip K`` applies after every retraining step) at each K, and measures the
deployed model the sweep's way, clean and on simulated chips.

    python scripts/probe_weight_clip.py docs/results/c10c/pretrain/model.pt \\
        --profile chen2015 --data npz:../shared/data/cifar10-train-jpeg.npz
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ftdeploy.chip import DeployedNetwork
from ftdeploy.data import load_validation
from ftdeploy.profiles import load_profile
from ftdeploy.train import FaultInjector, freeze_batchnorm, load_checkpoint, model_from_checkpoint
from ftdeploy.verify import subset_indices


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--profile", default="chen2015")
    ap.add_argument("--data", default="npz:../shared/data/cifar10-train-jpeg.npz")
    ap.add_argument("--clips", default="0,4,3,2.5,2", help="standard deviations; 0: the checkpoint as it is")
    ap.add_argument("--rates", default="0.005,0.01,0.02")
    ap.add_argument("--chips", type=int, default=3)
    ap.add_argument("--max-images", type=int, default=2000, help="stratified subset of the validation images")
    args = ap.parse_args()

    resolved = load_profile(args.profile)
    data = load_validation(args.data)
    idx = torch.from_numpy(subset_indices(data.val_y.numpy(), args.max_images))
    val_x, val_y = data.val_x[idx], data.val_y[idx]
    rates = [float(r) for r in args.rates.split(",")]
    ckpt = load_checkpoint(args.checkpoint)
    norm = ckpt["normalization"]
    print(f"{len(val_y)} validation images, {args.chips} chips per rate, target {resolved.target.name}")
    for sigmas in (float(k) for k in args.clips.split(",")):
        model = clipped(model_from_checkpoint(ckpt), resolved.target, sigmas)
        net = DeployedNetwork(model, resolved.target, torch.device("cpu"))
        line = net.accuracy_line(rates, resolved.profile.faults.split, args.chips, val_x, val_y, norm["mean"], norm["std"])
        print(f"{args.checkpoint}  clip {sigmas:g}  {line}", flush=True)


def clipped(model: torch.nn.Module, target, sigmas: float) -> torch.nn.Module:
    """The model with its deployed weights, as the target's cells hold them, clipped to ± ``sigmas``
    standard deviations by the trainer's own clip (BatchNorm frozen, as in retraining)."""
    if sigmas:
        freeze_batchnorm(model)
        injector = FaultInjector(model, target)
        injector.attach()
        injector.clip_to_sigmas(sigmas)
        injector.detach()
    return model.eval()


if __name__ == "__main__":
    main()
