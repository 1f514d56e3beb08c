#!/usr/bin/env bash
# The whole flow on the embedded CIFAR-10 subset, step by step (the pretrained -> progressive ->
# ONNX -> sign-off path of `ftdeploy demo`). Minutes on 2 CPU cores. Run from the repository root.
# Profile `demo` (profiles/demo.yaml) on target `paper-diff8` (targets/paper-diff8.yaml).
set -euo pipefail
OUT=${1:-runs/example}

ftdeploy profile show demo
# 1. pretrain the demo CNN (no faults)
ftdeploy train --profile demo --method pretrain --out "$OUT/pretrain"
# 2. progressive fault-tolerant retraining: rates 0.01 -> 0.02 -> 0.05
ftdeploy train --profile demo --from "$OUT/pretrain/model.pt" --method progressive --target-rate 0.05 --out "$OUT/progressive"
# 3. export: 8-bit weight codes on differential pairs of uint8 cells (128 levels each), BatchNorm kept
#    as its own nodes for the digital periphery (paper-diff8: batchnorm: periphery), mapping in metadata
ftdeploy export "$OUT/progressive/model.pt" --profile demo -o "$OUT/progressive.onnx"
# 4. sign-off on simulated chips with ONNX Runtime; exit code 0 pass, 1 fail, 2 bad input
ftdeploy verify "$OUT/progressive.onnx" --profile demo --out "$OUT/report" || echo "sign-off exit code $?"
cat "$OUT/report/report.md"
