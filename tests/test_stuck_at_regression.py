"""Stuck-at chips stay what they were before the non-ideality registry: the decoded codes of
every chip (pure numpy, exact on any machine) and the accuracy of every chip of a fixed trained
model on both backends, pinned from the release that had stuck-at faults hard-coded."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from _quick_model import quick_checkpoint
from ftdeploy.chip import DeployedNetwork
from ftdeploy.data import load_data
from ftdeploy.mapping import make_mapping
from ftdeploy.nonideality import CellRange, FaultModel, chip_rng
from ftdeploy.profiles import load_target
from ftdeploy.training.checkpoint import load_checkpoint, model_from_checkpoint
from ftdeploy.population import SimulatedChips, chip_accuracies
from ftdeploy.verify import subset_indices

SPLIT = (1.75, 9.04)
TARGETS = ["paper-diff8", "mlc2-bitsliced", "offset-8", "paper-diff8-inverted"]

#: sha256 (first 32 hex) of the float32 codes of 3 chips at each of 3 rates, seed 7.
CODE_HASHES = {
    "paper-diff8": "b221ffc19424f9700576be5632af01ce",
    "mlc2-bitsliced": "c950c9a6945d81c4cb28c8619d0deb9b",
    "offset-8": "1935c61e5833f008838a54ba7c965762",
    "paper-diff8-inverted": "7938ab49c1b618b14eae1b78c2f33398",
}

#: Correct images of 500 (stratified subset of the embedded validation images) for chips 0-3 at
#: each rate, seed 0, of the quick democnn checkpoint (tests/_quick_model.py) on each target.
CORRECT_OF_500 = {
    "paper-diff8": {"0.005": [82, 86, 88, 88], "0.02": [89, 94, 115, 102], "0.1": [59, 63, 81, 89], "clean": 91},
    "mlc2-bitsliced": {"0.005": [73, 87, 105, 74], "0.02": [66, 85, 80, 58], "0.1": [78, 52, 82, 61], "clean": 92},
    "offset-8": {"0.005": [85, 88, 77, 90], "0.02": [64, 58, 69, 72], "0.1": [50, 50, 48, 67], "clean": 91},
    "paper-diff8-inverted": {"0.005": [96, 93, 88, 92], "0.02": [93, 106, 102, 102], "0.1": [112, 88, 89, 113], "clean": 91},
}


@pytest.mark.parametrize("name", TARGETS)
def test_stuck_at_chips_decode_to_the_pinned_codes(name):
    target = load_target(name)[0]
    mapping = make_mapping(target)
    rng = np.random.default_rng(123)
    codes = [rng.integers(-127, 128, size=s).astype(np.int32) for s in [(16, 3, 3, 3), (32, 16, 3, 3), (10, 32)]]
    levels = [mapping.encode(c) for c in codes]
    digest = hashlib.sha256()
    for rate in [0.005, 0.02, 0.1]:
        faults = FaultModel.stuck_at(rate, SPLIT)
        for chip in range(3):
            draw = faults.draw([lv.shape for lv in levels], chip_rng(7, rate, chip))
            for held in faults.program(levels, draw, CellRange.of(target)):
                digest.update(np.ascontiguousarray(mapping.decode(held)).astype(np.float32).tobytes())
    assert digest.hexdigest()[:32] == CODE_HASHES[name]


@pytest.fixture(scope="module")
def bundle():
    return load_data(None)


@pytest.mark.parametrize("name", TARGETS)
def test_stuck_at_chip_accuracies_are_pinned(name, bundle, tmp_path):
    target = load_target(name)[0]
    ckpt = load_checkpoint(quick_checkpoint(bundle, target, tmp_path))
    keep = torch.from_numpy(subset_indices(bundle.val_y.numpy(), 500))
    norm = ckpt["normalization"]
    backend = DeployedNetwork(model_from_checkpoint(ckpt), target).backend(bundle.val_x[keep], bundle.val_y[keep],
                                                                            norm["mean"], norm["std"])  # fmt: skip
    got = {"clean": round(backend.accuracy() * 5)}
    for rate in [0.005, 0.02, 0.1]:
        accs = chip_accuracies(backend, SimulatedChips(FaultModel.stuck_at(rate, SPLIT), rate, 0, 4))
        got[f"{rate:g}"] = [round(a * 5) for a in accs]
    assert got == CORRECT_OF_500[name]
