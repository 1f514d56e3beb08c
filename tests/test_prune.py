"""Pruning: achieved sparsity, masks that hold through fault-tolerant retraining, the chip's view
of pruned weights, and the ``ftdeploy prune`` command. A width-8 demo CNN on a strided tenth of
the embedded CIFAR-10 subset keeps the whole file to seconds on two cores."""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pytest
import torch

from ftdeploy.chip import DeployedNetwork
from ftdeploy.cli import main
from ftdeploy.data import embedded_path, load_data
from ftdeploy.nonideality import STUCK_ON, FaultModel, StuckAt
from ftdeploy.models import democnn, deployed_layers
from ftdeploy.profiles import load_profile
from ftdeploy.prune import PruneConfig, keep_largest, prune
from ftdeploy.training.checkpoint import load_checkpoint, model_from_checkpoint
from ftdeploy.training.config import TrainConfig
from ftdeploy.training.loop import train


def democnn8(num_classes: int = 10):
    """The demo CNN at width 8; created by name through this module (already in sys.modules)."""
    return democnn(num_classes, width=8)


MODEL = f"{__name__}:democnn8"
#: Sparsity is set per layer as round(S·n)/n; over a few thousand weights that is within 1e-3.
SPARSITY_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def target():
    return load_profile("demo").target


@pytest.fixture(scope="module")
def small_data():
    """Every 10th training and 5th validation image: 500 + 200, all classes (the file is sorted by class)."""
    d = load_data()
    return dataclasses.replace(d, train_x=d.train_x[::10], train_y=d.train_y[::10], val_x=d.val_x[::5], val_y=d.val_y[::5])


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, small_data, target):
    out = tmp_path_factory.mktemp("pretrain")
    config = TrainConfig(method="pretrain", model=MODEL, epochs=1, lr=0.05, batch_size=100, eval_chips=0, device="cpu")
    train(config, small_data, target, out)
    return out / "model.pt"


@pytest.fixture(scope="module")
def pruned(tmp_path_factory, pretrained, small_data, target):
    out = tmp_path_factory.mktemp("pruned")
    prune(pretrained, PruneConfig("magnitude", 0.6, epochs=1, batch_size=100, device="cpu"), small_data, target, out, log=_quiet,
          allow_model_import=True)  # MODEL is this module's factory: ours to trust
    return out / "model.pt"


def _quiet(line: str) -> None:
    pass


def _zero_sets(ckpt: dict) -> dict[str, torch.Tensor]:
    model = model_from_checkpoint(ckpt, allow_import=True)
    return {name: m.weight.detach() == 0 for name, m in deployed_layers(model)}


def test_keep_largest_drops_exactly_round_s_n_even_with_ties():
    x = torch.tensor([0.0, 0.0, 0.0, 0.0, 3.0, -2.0, 1.0])
    keep = keep_largest(x, 0.5)  # round(3.5) = 4 dropped: the four zeros, whatever their order
    assert keep.tolist() == [False, False, False, False, True, True, True]
    assert int((~keep_largest(torch.zeros(10), 0.3)).sum()) == 3


def test_rho_grows_geometrically_from_start_to_end():
    rhos = PruneConfig("admm", 0.5, epochs=1, admm_epochs=3, rho_start=1e-2, rho_end=1.0).rho_schedule()
    assert rhos == pytest.approx([1e-2, 1e-1, 1.0])


@pytest.mark.parametrize("method, sparsity", [("magnitude", 0.5), ("admm", 0.7)])
def test_pruning_reaches_target_sparsity(method, sparsity, pretrained, small_data, target, tmp_path):
    config = PruneConfig(method, sparsity, epochs=1, admm_epochs=2, batch_size=100, device="cpu")
    ckpt = prune(pretrained, config, small_data, target, tmp_path, log=_quiet, allow_model_import=True)
    record = ckpt["pruning"]
    assert abs(ckpt["sparsity"] - sparsity) <= SPARSITY_TOLERANCE, ckpt["sparsity"]
    assert record["method"] == method and record["target_sparsity"] == sparsity
    assert ckpt["method"] == f"prune-{method}", "the checkpoint says how it was made, not 'pretrain'"
    assert all(abs(s - sparsity) <= SPARSITY_TOLERANCE for s in record["layers"].values()), record["layers"]
    zeros = _zero_sets(ckpt)
    assert all(not zeros[name].any() for name in record["dense_layers"]), "first/last layer must stay dense"
    assert ckpt["acc_pretrain"] is not None and ckpt["acc_retrain"] is None
    assert load_checkpoint(tmp_path / "model.pt")["pruning"] == record


@pytest.mark.parametrize("recipe", [{}, {"unbias_faults": True, "clean_steps": 0.75, "weight_clip": 2.0}],
                         ids=["plain", "clean-steps-clip"])
def test_fault_tolerant_retraining_keeps_pruned_weights_zero(recipe, pruned, small_data, target, tmp_path):
    before = load_checkpoint(pruned)
    config = TrainConfig(method="progressive", model=MODEL, progressive_rates=[0.01, 0.05], target_rate=0.05,
                         epochs=2, lr=0.01, batch_size=100, eval_chips=0, device="cpu", **recipe)  # fmt: skip
    after = train(config, small_data, target, tmp_path, init=before, allow_model_import=True)
    zeros_before, zeros_after = _zero_sets(before), _zero_sets(after)
    for name in zeros_before:
        assert torch.equal(zeros_before[name], zeros_after[name]), f"zero set of {name} changed"
    moved = any(not torch.equal(before["state_dict"][k], after["state_dict"][k]) for k in before["state_dict"])
    assert moved, "retraining did not change any weight: the test would prove nothing"
    assert after["sparsity"] == before["sparsity"]


def test_stuck_on_cell_makes_a_pruned_weight_nonzero(pruned, target):
    """Pruned weights keep their cells on the chip, and those cells can fail stuck-on."""
    ckpt = load_checkpoint(pruned)
    net = DeployedNetwork(model_from_checkpoint(ckpt, allow_import=True), target)
    index = [layer.name for layer in net.layers].index(next(iter(ckpt["pruning"]["layers"])))
    layer = net.layers[index]
    pos = int(torch.nonzero(layer.codes.flatten() == 0)[0])
    states = [np.zeros(shape, np.uint8) for shape in net.cell_shapes]
    states[index].reshape(layer.cell_shape[0], -1)[0, pos] = STUCK_ON  # the positive cell of the pair
    net.load_chip(FaultModel([StuckAt.from_pair(0.0, 0.01)]), [[state] for state in states])
    faulty = layer.module.weight.detach().flatten()
    assert faulty[pos] != 0
    assert torch.equal(faulty[pos], (net.mapping.max_level * layer.scale).flatten()[0])


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory):
    """The strided subset as a packed file, for the command line's --data npz:FILE."""
    with np.load(embedded_path()) as z:
        jpeg, offsets, labels, split = z["jpeg"], z["offsets"], z["labels"], z["split"]
        classes = z["classes"]
    keep = np.concatenate([np.flatnonzero(split == 0)[::10], np.flatnonzero(split == 1)[::5]])
    blobs = [jpeg[offsets[i] : offsets[i + 1]] for i in keep]
    path = tmp_path_factory.mktemp("data") / "small.npz"
    np.savez(path, jpeg=np.concatenate(blobs), offsets=np.cumsum([0] + [len(b) for b in blobs]),
             labels=labels[keep], classes=classes, split=split[keep])  # fmt: skip
    return path


def _run_cli(args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """Run the console entry point (the error boundary included): (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["ftdeploy", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_writes_pruned_checkpoint(pretrained, small_npz, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    args = ["prune", str(pretrained), "--profile", "demo", "--method", "magnitude", "--sparsity", "0.5",
            "--epochs", "1", "--data", f"npz:{small_npz}", "--device", "cpu", "--out", str(out),
            "--trust-model-code"]  # MODEL is this module's factory: ours to trust  # fmt: skip
    code, stdout, stderr = _run_cli(args, monkeypatch, capsys)
    assert code == 0, stderr
    ckpt = load_checkpoint(out / "model.pt")
    assert abs(ckpt["sparsity"] - 0.5) <= SPARSITY_TOLERANCE
    assert ckpt["pruning"]["method"] == "magnitude"
    assert "sparsity 50.0%" in stdout, stdout


@pytest.mark.parametrize("option, value", [("--sparsity", "1.5"), ("--sparsity", "0"), ("--method", "random")])
def test_cli_rejects_bad_option_with_one_line(option, value, pretrained, tmp_path, monkeypatch, capsys):
    args = ["prune", str(pretrained), "--profile", "demo", "--method", "magnitude", "--sparsity", "0.5",
            "--out", str(tmp_path / "run")]  # fmt: skip
    args[args.index(option) + 1] = value
    code, _, stderr = _run_cli(args, monkeypatch, capsys)
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and option in lines[0] and value in lines[0], stderr
    assert not (tmp_path / "run").exists()
