"""Probe: how a checkpoint's weights use the code range of a per-layer scale.

A stuck-on cell adds its layer's full scale (max|W|) to a weight, so how much it costs depends on
how a layer's weights sit in that range. For each checkpoint this prints, over its BatchNorm-fed
convolutions (the ones ``ftdeploy equalize`` can scale):
  - gain: the median over channels of layer peak / channel peak (1: every channel reaches the
    layer's peak, what equalising gives; 2: the median channel peaks at half the layer's peak);
  - crest: the median over channels of channel peak / channel RMS (a flat, ternary-like channel is
    near 1, a trained CNN's near 3);
  - above half: the fraction of weights above half their layer's peak.
The range over layers is shown; no data is needed.

    python studies/cifar10-paper/scripts/probe_weight_ranges.py runs/c10c/pretrain/model.pt runs/c10c/dense/runs/one-shot-0.05/model.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ftdeploy.equalize import channel_gains
from ftdeploy.models import conv_bn_pairs
from ftdeploy.training.checkpoint import load_checkpoint, model_from_checkpoint


def layer_figures(weight: torch.Tensor) -> tuple[float, float, float]:
    """(median gain, median crest, fraction above half the peak) of one layer's weights."""
    w = weight.detach().abs().flatten(1)
    channel_peak = w.amax(1)
    live = channel_peak > 0
    gain = channel_gains(weight.detach())[live].median().item()
    crest = (channel_peak[live] / w[live].pow(2).mean(1).sqrt()).median().item()
    return gain, crest, (w > 0.5 * channel_peak.max()).float().mean().item()


def span(values: list[float], digits: int) -> str:
    return f"{min(values):.{digits}f}-{max(values):.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", type=Path, nargs="+")
    args = ap.parse_args()
    for path in args.checkpoints:
        model = model_from_checkpoint(load_checkpoint(path))
        modules = dict(model.named_modules())
        gains, crests, above = zip(*(layer_figures(modules[name].weight) for name in conv_bn_pairs(model)))
        print(f"{path}: {len(gains)} BN-fed layers; gain {span(gains, 2)}, crest {span(crests, 1)}, "
              f"above half {span(above, 2)}", flush=True)


if __name__ == "__main__":
    main()
