"""Probe: is the clean accuracy a high training rate costs a BatchNorm-statistics mismatch?

Fault-tolerant retraining keeps BatchNorm's statistics frozen at the pretrained model's (the
deployed periphery applies fixed statistics). If the retrained weights had drifted so that those
statistics no longer fit fault-free activations, re-estimating them on fault-free training images
would restore clean accuracy. This script measures a retrained checkpoint as trained and with its
BatchNorm statistics re-estimated (5,000 training images, no faults, no augmentation), clean and
on simulated chips, the sweep's way (deployed 8-bit weights on the profile's target).

    python studies/cifar10-paper/scripts/probe_bn_recalibration.py runs/c10p/dense/runs/one-shot-0.05/model.pt \\
        --profile chen2015 --data npz:../shared/data/cifar10-train-jpeg.npz
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from probe_common import probe_from_args, probe_parser

from ftdeploy.data import load_data, normalize
from ftdeploy.training.checkpoint import load_checkpoint, model_from_checkpoint


def main() -> None:
    ap = probe_parser(__doc__, rates="0.005,0.01,0.05", chips=5)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--calibration-images", type=int, default=5000)
    args = ap.parse_args()

    probe, data = probe_from_args(args, load=load_data)  # the training images calibrate
    ckpt = load_checkpoint(args.checkpoint)
    norm = ckpt["normalization"]
    print(f"{args.checkpoint}: {probe.header}")
    model = model_from_checkpoint(ckpt)
    print(f"{'as trained (pretrained BN stats)':<34} {probe.measure(model, norm)}", flush=True)
    recalibrated_model = recalibrated(model, data.train_x, norm, args.calibration_images)
    print(f"{'BN stats re-estimated, no faults':<34} {probe.measure(recalibrated_model, norm)}", flush=True)


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
