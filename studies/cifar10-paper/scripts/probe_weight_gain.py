"""Probe: does a model retrained at a high fault rate expect its weights smaller than a
fault-free chip holds them?

On a two-column differential pair, a chip at stuck-at rate P holds on average the weights shrunk
by 1 − P (faults.code_expectation). A model retrained at P_sa^T fits that gain, and BatchNorm's
fixed statistics pass it on from layer to layer, so on a fault-free chip every layer is
(1 − P_sa^T)^-1 too loud. This script programs a checkpoint's conv/linear weights scaled by each
gain and measures the deployed model the sweep's way (8-bit weights on the profile's target),
clean and on simulated chips. A clean accuracy that rises as the gain falls towards 1 − P_sa^T
says the clean deficit is (partly) that gain.

    python studies/cifar10-paper/scripts/probe_weight_gain.py runs/c10p/dense/runs/one-shot-0.1/model.pt \\
        --profile chen2015 --data npz:../shared/data/cifar10-train-jpeg.npz
"""

from __future__ import annotations

from pathlib import Path

import torch
from probe_common import probe_from_args, probe_parser

from ftdeploy.models import deployed_layers
from ftdeploy.training.checkpoint import load_checkpoint, model_from_checkpoint


def main() -> None:
    ap = probe_parser(__doc__, rates="0.01,0.05", chips=3)
    ap.add_argument("checkpoints", type=Path, nargs="+")
    ap.add_argument("--gains", default="1,0.97,0.95,0.9")
    args = ap.parse_args()

    probe, _ = probe_from_args(args)
    print(probe.header)
    for path in args.checkpoints:
        ckpt = load_checkpoint(path)
        for gain in (float(g) for g in args.gains.split(",")):
            line = probe.measure(scaled(model_from_checkpoint(ckpt), gain), ckpt["normalization"])
            print(f"{path}  gain {gain:<5g} {line}", flush=True)


def scaled(model: torch.nn.Module, gain: float) -> torch.nn.Module:
    """The model with every deployed (conv/linear) weight multiplied by ``gain``."""
    with torch.no_grad():
        for _, layer in deployed_layers(model):
            layer.weight.mul_(gain)
    return model


if __name__ == "__main__":
    main()
