"""Channel range equalisation: the same function, every BN-fed channel on the full code range,
exactly what a per-channel scale gives, a stuck-on cell costing each channel its own full scale,
and the ``ftdeploy equalize`` command."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

from ftdeploy.chip import DeployedNetwork
from ftdeploy.cli import main
from ftdeploy.data import load_data
from ftdeploy.equalize import check_equalizable, equalize_channel_ranges, equalizes
from ftdeploy.errors import ConfigError
from ftdeploy.export import export_onnx, read_metadata
from ftdeploy.nonideality import HEALTHY, STUCK_ON, FaultModel, StuckAt
from ftdeploy.models import conv_bn_pairs, democnn, deployed_layers, fold_batchnorm
from ftdeploy.profiles import load_profile
from ftdeploy.training.checkpoint import load_checkpoint, model_from_checkpoint
from ftdeploy.training.config import TrainConfig
from ftdeploy.training.loop import train

from _quick_model import quick_checkpoint
from conftest import make_target

Q = 127


def periphery(scale: str = "layer"):
    return make_target(scale=scale, batchnorm="periphery")


def uneven_democnn(seed: int = 0) -> nn.Module:
    """The demo CNN with BN statistics and affine parameters that are not the identity, and output
    channels of very different ranges (a trained network's, exaggerated)."""
    torch.manual_seed(seed)
    model = democnn(width=8).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(torch.logspace(-1.5, 0, m.out_channels)[torch.randperm(m.out_channels)].view(-1, 1, 1, 1))
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(1e-3, 0.05)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
    return model


def bn_fed_convs(model: nn.Module) -> list[nn.Conv2d]:
    modules = dict(model.named_modules())
    return [modules[name] for name in conv_bn_pairs(model)]


def test_the_function_is_the_same():
    model = uneven_democnn()
    equalized, _ = equalize_channel_ranges(model)
    x = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(equalized(x), model(x), rtol=1e-4, atol=1e-5)


def test_every_bn_fed_channel_reaches_its_layers_peak_and_the_rest_is_untouched():
    model = uneven_democnn()
    equalized, layers = equalize_channel_ranges(model)
    assert [g.name for g in layers] == list(conv_bn_pairs(model))
    for before, after in zip(bn_fed_convs(model), bn_fed_convs(equalized)):
        peaks = after.weight.abs().flatten(1).amax(1)
        torch.testing.assert_close(peaks, torch.full_like(peaks, before.weight.abs().max().item()), rtol=1e-6, atol=0)
    assert torch.equal(equalized[-1].weight, model[-1].weight)  # the classifier has no BN to take a gain
    assert all(g.gains.min() == 1.0 and g.gains.max() > 10 for g in layers)  # the peak channel keeps gain 1


def test_equalizing_twice_changes_nothing_more():
    once, _ = equalize_channel_ranges(uneven_democnn())
    _, layers = equalize_channel_ranges(once)
    for g in layers:
        torch.testing.assert_close(g.gains, torch.ones_like(g.gains), rtol=1e-5, atol=0)


def test_the_chip_programs_every_channel_over_the_full_code_range():
    deployed = DeployedNetwork(equalize_channel_ranges(uneven_democnn())[0], periphery())
    plain = DeployedNetwork(uneven_democnn(), periphery())
    for eq_layer, plain_layer in list(zip(deployed.layers, plain.layers))[:-1]:
        assert (eq_layer.codes.abs().flatten(1).amax(1) == Q).all()
        assert (plain_layer.codes.abs().flatten(1).amax(1) < Q / 4).any()  # what it was: channels on a few codes


def test_per_layer_scale_after_equalizing_is_a_per_channel_scale():
    """The BN-fed convolutions' codes (up to a rounding tie) and the features they compute equal
    those of the unequalised model on a per-channel-scale chip: the periphery BN carries the
    channel scales. (The classifier, fed by no BN, keeps one scale.)"""
    model = uneven_democnn()
    eq = DeployedNetwork(equalize_channel_ranges(model)[0], periphery("layer"))
    per_channel = DeployedNetwork(model, periphery("channel"))
    for a, b in list(zip(eq.layers, per_channel.layers))[:-1]:
        assert (a.codes == b.codes).float().mean() > 0.999
    x = torch.rand(8, 3, 32, 32)
    with torch.no_grad():
        features_eq, features_pc = (net.model[:-1](x) for net in (eq, per_channel))
    torch.testing.assert_close(features_eq, features_pc, rtol=1e-4, atol=1e-5)


def test_a_stuck_on_cell_adds_its_channels_own_full_scale_not_the_layers():
    """One conv→BN, a large channel and one ten times smaller, one stuck-on cell under a weight
    of the small one programmed 0: after BN (what the next layer sees) it adds the small
    channel's own full scale once equalised, a tenth of the layer's full scale it added before."""
    model = nn.Sequential(nn.Conv2d(2, 2, 1, bias=False), nn.BatchNorm2d(2)).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.5], [0.1, 0.0]]).view(2, 2, 1, 1))
        model[1].running_var.fill_(0.01)
    x = torch.randn(4, 2, 5, 5)
    errors = []
    for m in (model, equalize_channel_ranges(model)[0]):
        net = DeployedNetwork(m, periphery())
        state = np.full(net.cell_shapes[0], HEALTHY, np.uint8)
        state[1, 1, 1, 0, 0] = STUCK_ON  # the negative-column cell of the small channel's zero weight
        with torch.no_grad():
            clean = net.model(x)
            net.load_chip(FaultModel([StuckAt.from_pair(0.0, 0.5)]), [[state]])
            errors.append((net.model(x) - clean)[:, 1])
    assert errors[1].abs().min() > 0
    torch.testing.assert_close(errors[0], errors[1] * 10, rtol=1e-4, atol=1e-5)


def test_zero_weights_stay_zero():
    model = uneven_democnn()
    with torch.no_grad():
        for conv in bn_fed_convs(model):
            conv.weight.mul_((torch.rand_like(conv.weight) > 0.7).float())
            conv.weight[0].zero_()  # a whole channel pruned away keeps gain 1
    equalized, layers = equalize_channel_ranges(model)
    for before, after in zip(bn_fed_convs(model), bn_fed_convs(equalized)):
        assert torch.equal(before.weight == 0, after.weight == 0)
    assert all(g.gains[0] == 1.0 for g in layers)


def test_on_a_folding_chip_it_would_change_nothing_so_it_is_refused():
    """Folded, W·γ/σ is the same before and after: the freedom is only the periphery's."""
    model = uneven_democnn()
    folded_before, folded_after = fold_batchnorm(model), fold_batchnorm(equalize_channel_ranges(model)[0])
    for (_, a), (_, b) in zip(deployed_layers(folded_before), deployed_layers(folded_after)):
        torch.testing.assert_close(a.weight, b.weight, rtol=1e-5, atol=1e-7)
    assert equalizes(periphery()) and not equalizes(make_target()) and not equalizes(periphery("channel"))
    with pytest.raises(ConfigError, match="batchnorm: expected periphery"):
        check_equalizable(make_target())
    with pytest.raises(ConfigError, match="scale: expected layer"):
        check_equalizable(periphery("channel"))


# --- ftdeploy equalize --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo():
    return load_data(None), load_profile("demo")


@pytest.fixture(scope="module")
def pretrained(demo, tmp_path_factory):
    bundle, resolved = demo
    return quick_checkpoint(bundle, resolved.target, tmp_path_factory.mktemp("eq"))


def _cli(monkeypatch, *args) -> int:
    """The console entry point, its error boundary included: the exit code."""
    monkeypatch.setattr(sys, "argv", ["ftdeploy", *map(str, args)])
    try:
        main()
    except SystemExit as exc:
        return exc.code or 0
    return 0


def test_cli_writes_an_equalized_checkpoint_that_retraining_and_export_carry_on(demo, pretrained, tmp_path, monkeypatch, capsys):
    bundle, resolved = demo
    out = tmp_path / "eq.pt"
    assert _cli(monkeypatch, "equalize", pretrained, "--profile", "demo", "-o", out) == 0
    assert "layers equalized for paper-diff8" in capsys.readouterr().out
    parent, ckpt = load_checkpoint(pretrained), load_checkpoint(out)
    record = ckpt["equalization"]
    assert record["target"] == "paper-diff8" and record["images"] == len(bundle.val_y)
    assert len(record["layers"]) == 4 and record["acc_before"] == parent["acc_pretrain"]
    net = DeployedNetwork(model_from_checkpoint(ckpt), resolved.target)
    assert ckpt["acc_pretrain"] == record["acc_after"] == net.accuracy(bundle.val_x, bundle.val_y, bundle.mean, bundle.std)
    assert ckpt["acc_retrain"] is None  # still a pretrained model

    config = TrainConfig(method="one-shot", model="democnn", epochs=1, target_rate=0.01, batch_size=256, eval_chips=0, device="cpu")
    retrained = train(config, bundle, resolved.target, tmp_path / "ft", init=ckpt)
    assert retrained["equalization"] == record and retrained["acc_pretrain"] == record["acc_after"]
    export_onnx(retrained, resolved, tmp_path / "ft.onnx")
    meta = read_metadata(onnx.load(tmp_path / "ft.onnx"))
    assert '"acc_after": ' + repr(record["acc_after"]) in meta["ftdeploy.equalization"]


def test_cli_refuses_a_folding_target_before_writing_anything(pretrained, tmp_path, monkeypatch, capsys):
    out = tmp_path / "eq.pt"
    assert _cli(monkeypatch, "equalize", pretrained, "--profile", "chen2015-folded", "-o", out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "batchnorm: expected periphery" in err[0] and "Traceback" not in err[0]
    assert not out.exists()


def test_cli_names_a_missing_checkpoint(tmp_path, monkeypatch, capsys):
    assert _cli(monkeypatch, "equalize", tmp_path / "none.pt", "--profile", "demo", "-o", tmp_path / "eq.pt") == 2
    assert "none.pt: checkpoint not found" in capsys.readouterr().err
