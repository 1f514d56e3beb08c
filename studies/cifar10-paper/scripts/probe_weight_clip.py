"""Probe: what does clipping a checkpoint's weights to ± K standard deviations buy before any
retraining?

A stuck-on cell adds its layer's peak weight (the full scale of a per-layer scale), so a layer
whose peak sits far out in its distribution pays for it at every stuck-on cell. This script
clips a checkpoint's deployed weights with the trainer's own clip (``FaultInjector.clip_to_sigmas``,
what ``--weight-clip K`` applies after every retraining step) at each K, and measures the
deployed model the sweep's way, clean and on simulated chips.

    python studies/cifar10-paper/scripts/probe_weight_clip.py studies/cifar10-paper/results/c10c/pretrain/model.pt \\
        --profile chen2015 --data npz:../shared/data/cifar10-train-jpeg.npz
"""

from __future__ import annotations

from pathlib import Path

import torch
from probe_common import probe_from_args, probe_parser

from ftdeploy.training.checkpoint import load_checkpoint, model_from_checkpoint
from ftdeploy.training.injection import FaultInjector, freeze_batchnorm


def main() -> None:
    ap = probe_parser(__doc__, rates="0.005,0.01,0.02", chips=3)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--clips", default="0,4,3,2.5,2", help="standard deviations; 0: the checkpoint as it is")
    args = ap.parse_args()

    probe, _ = probe_from_args(args)
    ckpt = load_checkpoint(args.checkpoint)
    print(probe.header)
    for sigmas in (float(k) for k in args.clips.split(",")):
        model = clipped(model_from_checkpoint(ckpt), probe.resolved.target, sigmas)
        print(f"{args.checkpoint}  clip {sigmas:g}  {probe.measure(model, ckpt['normalization'])}", flush=True)


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
