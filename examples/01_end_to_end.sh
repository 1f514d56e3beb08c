#!/usr/bin/env bash
# The whole flow on the embedded CIFAR-10 subset, step by step (what `ftdeploy demo` does in one
# command). Minutes on 2 CPU cores. Run from the repository root.
set -euo pipefail
OUT=${1:-runs/example}

ftdeploy profile show demo
# 1. pretrain the demo CNN (no faults)
ftdeploy train --profile demo --method pretrain --out "$OUT/pretrain"
# 2. progressive fault-tolerant retraining: rates 0.01 -> 0.02 -> 0.05
ftdeploy train --profile demo --from "$OUT/pretrain/model.pt" --method progressive --target-rate 0.05 --out "$OUT/progressive"
# 3. export: BatchNorm folded, 8-bit codes, uint8 differential-pair cells, mapping in metadata
ftdeploy export "$OUT/progressive/model.pt" --profile demo -o "$OUT/progressive.onnx"
# 4. sign-off on simulated chips with ONNX Runtime; exit code 0 pass, 1 fail, 2 bad input
ftdeploy verify "$OUT/progressive.onnx" --profile demo --out "$OUT/report" || echo "sign-off exit code $?"
cat "$OUT/report/report.md"
