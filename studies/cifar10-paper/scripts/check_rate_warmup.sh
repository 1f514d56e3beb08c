#!/usr/bin/env bash
# CPU-sized check of the fault-rate warm-up: one-shot P_sa^T = 0.05 retraining of the ResNet-20
# pretrained on the accelerator (runs/c10/pretrain/model.pt), on the embedded data (its training
# images lie in the training part of that model's split, its 1,000 validation images in the
# held-out part), with and without the ramp. Batch 32 gives 157 steps per epoch, about what one
# epoch is at batch 256 on the full split.
# Usage: bash studies/cifar10-paper/scripts/check_rate_warmup.sh [PRETRAINED]
# It runs from the repository root wherever it is started (the default model and the output,
# runs/c10/warmup-check/, are there); a PRETRAINED given is taken from the working directory.
set -euo pipefail
ROOT=$(cd -- "$(dirname -- "$0")/../../.." && pwd)
PRE=${1:+$(realpath -m --relative-to="$ROOT" -- "$1")}
cd "$ROOT"
PRE=${PRE:-runs/c10/pretrain/model.pt}
for RAMP in 0 2; do
  ftdeploy sweep --from "$PRE" --profile chen2015 --methods one-shot --train-rates 0.05 \
    --test-rates 0,0.005,0.01,0.02,0.05 --ss-rates 0.01 --epochs 4 --batch-size 32 --lr 0.005 \
    --rate-warmup "$RAMP" --chips 5 --device cpu --out "runs/c10/warmup-check/ramp$RAMP"
done
