"""The fixed sets of values settings take, one Literal each, declared once: the models that hold
them (:class:`~ftdeploy.profiles.RetrainingRecipe`, :class:`~ftdeploy.training.config.TrainConfig`,
:class:`~ftdeploy.prune.PruneConfig`) and the command line's options (whose --help lists them)
read them here. This module imports nothing of ftdeploy's and nothing heavy, so the command line
declares its options without loading pydantic models, numpy or torch."""

from __future__ import annotations

from typing import Literal

#: What a training run does: pretrain (no faults), one-shot (P_sa^T throughout) or progressive (ascending rates).
TrainMethod = Literal["pretrain", "one-shot", "progressive"]
#: The fault-tolerant retraining methods (a sweep's grid, a profile's default method).
RetrainMethod = Literal["one-shot", "progressive"]
#: BatchNorm while retraining: frozen at the pretrained statistics, or in training mode.
BatchNormMode = Literal["frozen", "train"]
#: Gradient of a weight with a stuck cell: blocked, or passed straight through.
StuckGrad = Literal["block", "pass"]
#: Gradient through the full scale a stuck-on cell injects: learnt, or held constant per step.
ScaleGrad = Literal["learn", "detach"]
#: How retraining draws each step's stuck-at chip: only the stuck cells, or a uniform per cell.
FaultDraw = Literal["sparse", "dense"]
#: How progressive retraining spends its epochs: split among the rates, or each rate all of them.
ProgressiveBlocks = Literal["split", "each"]
#: Pruning: one-shot magnitude (Han et al. 2015) or ADMM (Zhang et al. 2018).
PruneMethod = Literal["magnitude", "admm"]
#: The form a fault map is written in: CSV (a tester's spreadsheet) or npz (compact, for large chips).
FaultMapForm = Literal["csv", "npz"]
