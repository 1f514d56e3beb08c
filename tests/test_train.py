"""The trainer: batched fault injection equals the per-layer fault model, checkpoints, logs,
schedules, frozen BatchNorm, and torchrun/DDP with the gloo backend on CPU."""

import dataclasses
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from conftest import SHIPPED_TARGET_NAMES, demo_profile_with
from ftdeploy.data import load_data
from ftdeploy.faults import faulty_weight
from ftdeploy.nonideality import FaultModel, StuckAt
from ftdeploy.mapping import make_mapping
from ftdeploy.models import conv_bn_pairs, create_model, deployed_layers
from ftdeploy.profiles import BatchNormPlacement, load_profile, load_target
from ftdeploy.training.checkpoint import load_checkpoint
from ftdeploy.training.config import TrainConfig, config_yaml, default_progressive_rates, progressive_rates_for
from ftdeploy.training.injection import FaultInjector, freeze_batchnorm
from ftdeploy.training.loop import distillation_loss, train

SPLIT = (1.75, 9.04)


@pytest.fixture(scope="module")
def small_data():
    """Every 8th training and 5th validation image of the embedded set (all classes: the set is
    sorted by class): enough to exercise every path."""
    full = load_data()
    return dataclasses.replace(full, train_x=full.train_x[::8], train_y=full.train_y[::8],
                               val_x=full.val_x[::5], val_y=full.val_y[::5])  # fmt: skip


def _randomise_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data = torch.rand(m.weight.shape, generator=g) + 0.5
            m.running_var = torch.rand(m.running_var.shape, generator=g) + 0.1


def _injector_states(model, mapping, nonideality, seed, draw="sparse"):
    """(name, layer, cell states) per deployed layer: the chip a FaultInjector seeded ``seed``
    draws first (by ``draw``), one flat draw over all layers, cut back into layers."""
    layers = deployed_layers(model)
    total = sum(m.weight.numel() for _, m in layers)
    shape, generator = (mapping.cells_per_weight, total), torch.Generator().manual_seed(seed)
    if draw == "dense":
        states = nonideality.draw_torch(shape, "cpu", generator)
    else:
        states = StuckAt.state_of_stuck(*nonideality.draw_stuck_torch(math.prod(shape), "cpu", generator), shape, "cpu")
    start = 0
    for name, module in layers:
        n = module.weight.numel()
        yield name, module, states[:, start : start + n].reshape(mapping.cells_per_weight, *module.weight.shape)
        start += n


@pytest.mark.parametrize("target_name", SHIPPED_TARGET_NAMES)
@pytest.mark.parametrize("draw", ["sparse", "dense"])
def test_batched_injection_equals_per_layer_fault_model(target_name, draw):
    """The trainer faults all layers as one flat vector for speed; per layer that must be exactly
    faults.faulty_weight on what the cells hold (the BN-folded weight, unfolded again, where the
    target folds BatchNorm; the conv weight where BN is in the periphery), same drawn states."""
    target, _ = load_target(target_name)
    model = create_model("democnn", width=8)
    _randomise_bn(model)
    freeze_batchnorm(model)
    inj = FaultInjector(model, target, bn_mode="frozen", seed=3, fault_draw=draw)
    inj.set_rate(0.05)
    inj.attach()
    try:
        faulty = inj._draw_chip()
    finally:
        inj.detach()

    mapping = make_mapping(target)
    pairs, modules = conv_bn_pairs(model), dict(model.named_modules())
    for (name, module, state), got in zip(_injector_states(model, mapping, StuckAt.from_total(0.05, SPLIT), 3, draw), faulty):
        k = torch.ones(module.weight.shape[0])
        if name in pairs and target.batchnorm == BatchNormPlacement.fold:
            bn = modules[pairs[name]]
            k = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        k = k.view(-1, *([1] * (module.weight.dim() - 1)))
        expected = faulty_weight(module.weight * k, mapping, FaultModel.stuck_at(0.05, SPLIT), states=[state]) / k
        torch.testing.assert_close(got, expected, rtol=0, atol=0, msg=f"layer {name}")


@pytest.mark.parametrize("target_name", ["paper-diff8", "mlc2-bitsliced"])  # a scale per layer, a scale per channel
def test_the_scale_peaks_are_the_same_flat_or_by_layer(target_name):
    """The injector takes each scale group's peak by one scatter on a GPU and by each layer's own
    view on a CPU: the same values and the same gradients, ties at the peak included (a weight
    clip leaves many weights at the bound)."""
    target, _ = load_target(target_name)
    inj = FaultInjector(create_model("democnn", width=8), target)
    flat = torch.randn(sum(inj._numels), generator=torch.Generator().manual_seed(0)).clamp(-1.5, 1.5)
    weights = torch.rand(inj._groups, generator=torch.Generator().manual_seed(1))
    results = []
    for peaks in (inj._peaks_flat, inj._peaks_by_layer):
        x = flat.clone().requires_grad_()
        peak = peaks(x)
        (peak * weights).sum().backward()
        results.append((peak.detach(), x.grad))
    (flat_peak, flat_grad), (layer_peak, layer_grad) = results
    assert flat_peak.shape == (inj._groups,) and int((flat.abs() == 1.5).sum()) > inj._groups, "ties at the peak"
    assert torch.equal(flat_peak, layer_peak) and torch.equal(flat_grad, layer_grad)


def test_injector_options_reach_the_fault_model():
    """unbiased: each layer is faults.faulty_weight(..., unbiased=True) of the same chip;
    learn_scale=False: no gradient reaches the peak through the stuck-on value, so every weight's
    gradient is its straight-through one (1 for a healthy weight of sum(), 0 for a stuck one)."""
    target, _ = load_target("paper-diff8")
    mapping, ni = make_mapping(target), StuckAt.from_total(0.2, SPLIT)

    def chip(**options):
        model = create_model("democnn", width=8)
        inj = FaultInjector(model, target, seed=3, **options)
        inj.set_rate(0.2)
        inj.attach()
        try:
            faulty = inj._draw_chip()
            originals = [m.parametrizations.weight.original for _, m in deployed_layers(model)]
            sum(f.sum() for f in faulty).backward()
            return model, faulty, [w.grad.clone() for w in originals]
        finally:
            inj.detach()

    model, unbiased, _ = chip(unbiased=True)
    for (name, module, state), got in zip(_injector_states(model, mapping, ni, 3), unbiased):
        expected = faulty_weight(module.weight, mapping, FaultModel([ni]), states=[state], unbiased=True)
        torch.testing.assert_close(got, expected, rtol=0, atol=0, msg=f"layer {name}")

    def straight_through_only(grads):  # 1 (to float32 rounding of ×s÷s) or 0, nothing else
        return all(bool((torch.isclose(g, torch.ones_like(g), rtol=1e-6) | (g == 0)).all()) for g in grads)

    assert straight_through_only(chip(learn_scale=False)[2])
    assert not straight_through_only(chip()[2])


def test_injection_draws_a_new_chip_every_forward_and_detaches_cleanly():
    target, _ = load_target("paper-diff8")
    model = create_model("democnn", width=8).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 3, 32, 32)
    inj = FaultInjector(model, target)
    inj.set_rate(0.1)
    inj.attach()
    with torch.no_grad():
        a, b = model(x), model(x)
    inj.detach()
    assert not torch.equal(a, b), "two forwards must see two different random chips"
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before), "master weights must stay clean"


def test_progressive_schedule_blocks_and_default_ladder():
    cfg = TrainConfig(method="progressive", target_rate=0.05, progressive_rates=[0.01, 0.02, 0.05], epochs=7)
    assert cfg.schedule() == [0.01, 0.01, 0.02, 0.02, 0.05, 0.05, 0.05]
    short = TrainConfig(method="progressive", target_rate=0.05, progressive_rates=[0.01, 0.02, 0.05], epochs=2)
    assert short.schedule() == [0.02, 0.05], "fewer epochs than rates must still end at the target"
    assert TrainConfig(method="one-shot", target_rate=0.05, epochs=3).schedule() == [0.05] * 3
    assert TrainConfig(method="pretrain", epochs=2).schedule() == [0.0, 0.0]
    # The paper's Algorithm 1: every rate a retraining of --epochs of its own.
    each = cfg.model_copy(update={"progressive_blocks": "each", "epochs": 2})
    assert each.run_epochs == 6 and each.schedule() == [0.01, 0.01, 0.02, 0.02, 0.05, 0.05]
    assert cfg.run_epochs == 7, "split: the blocks share the run's epochs"
    one_shot = TrainConfig(method="one-shot", target_rate=0.05, epochs=3, progressive_blocks="each")
    assert one_shot.run_epochs == 3 and one_shot.schedule() == [0.05] * 3, "blocks are a progressive matter"
    assert default_progressive_rates(0.05) == [0.01, 0.02, 0.05]
    assert default_progressive_rates(0.1) == [0.02, 0.05, 0.1]
    assert default_progressive_rates(0.01) == [0.002, 0.005, 0.01]


def test_a_profiles_own_progressive_list_serves_its_target_rate_and_the_ladder_the_others():
    from ftdeploy.profiles import TrainingDefaults

    two_rates = TrainingDefaults(target_rate=0.05, progressive_rates=[0.01, 0.05])
    assert progressive_rates_for(0.05, two_rates) == [0.01, 0.05]
    assert progressive_rates_for(0.1, two_rates) == [0.02, 0.05, 0.1]
    one_shot = TrainingDefaults(method="one-shot", target_rate=0.05, progressive_rates=[0.01])
    assert progressive_rates_for(0.05, one_shot) == [0.01, 0.02, 0.05], "a list not ending at the rate is not its list"


@pytest.fixture(scope="module")
def pretrained(small_data, tmp_path_factory):
    target, _ = load_target("paper-diff8")
    out = tmp_path_factory.mktemp("pre")
    cfg = TrainConfig(model="democnn", method="pretrain", epochs=2, lr=0.05, batch_size=64, device="cpu")
    train(cfg, small_data, target, out)
    return out


def test_pretraining_writes_checkpoint_logs_and_config(pretrained):
    ckpt = load_checkpoint(pretrained / "model.pt")  # weights_only=True inside
    assert ckpt["model"] == "democnn" and ckpt["method"] == "pretrain" and ckpt["epochs_done"] == 2
    assert 0 <= ckpt["acc_pretrain"] <= 100 and ckpt["acc_retrain"] is None
    assert len(ckpt["normalization"]["mean"]) == 3 and ckpt["data"]["val_images"] == 200
    rows = [json.loads(line) for line in (pretrained / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert (pretrained / "summary.csv").read_text().count("\n") == 3
    assert "method: pretrain" in (pretrained / "config.yaml").read_text()


def test_fault_tolerant_retraining_keeps_bn_statistics_and_records_lineage(pretrained, small_data, tmp_path):
    target, _ = load_target("paper-diff8")
    pre = load_checkpoint(pretrained / "model.pt")
    cfg = TrainConfig(model="democnn", method="one-shot", target_rate=0.05, epochs=1, lr=0.01, batch_size=64,
                      eval_chips=2, device="cpu")  # fmt: skip
    ckpt = train(cfg, small_data, target, tmp_path, init=pre)
    bn_keys = [k for k in pre["state_dict"] if "running_" in k]
    assert bn_keys and all(torch.equal(pre["state_dict"][k], ckpt["state_dict"][k]) for k in bn_keys), (
        "frozen BN: running statistics must stay those of the pretrained model"
    )
    assert ckpt["acc_pretrain"] == pre["acc_pretrain"] and ckpt["acc_retrain"] is not None
    assert ckpt["schedule"] == [0.05] and ckpt["method"] == "one-shot"
    row = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])
    assert row["val_acc_faulty"] is not None
    assert not any("parametrizations" in k for k in ckpt["state_dict"])


def test_torchrun_two_processes_gloo(tmp_path):
    """DistributedDataParallel on CPU with the gloo backend and two processes."""
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "ftdeploy", "train", "--profile", "demo", "--method", "pretrain", "--epochs", "1",
           "--batch-size", "256", "--device", "cpu", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    ckpt = load_checkpoint(out / "model.pt")
    assert ckpt["epochs_done"] == 1 and ckpt["acc_pretrain"] > 10.0  # above chance after one epoch
    assert len((out / "log.jsonl").read_text().splitlines()) == 1, "only rank 0 logs"


def test_fault_rate_ramps_in_over_the_warmup_then_holds(pretrained, small_data, tmp_path, monkeypatch):
    """Frozen BN cannot absorb a whole rate of stuck cells at once (ResNet-20 diverged at 0.05):
    the rate ramps linearly from 0 over rate_warmup_epochs, then stays at the schedule's rate."""
    seen = []
    original = FaultInjector.set_rate
    monkeypatch.setattr(FaultInjector, "set_rate", lambda self, p: (seen.append(p), original(self, p)))
    target, _ = load_target("paper-diff8")
    cfg = TrainConfig(model="democnn", method="one-shot", target_rate=0.05, epochs=2, lr=0.01, batch_size=64,
                      rate_warmup_epochs=1, eval_chips=0, device="cpu")  # fmt: skip
    train(cfg, small_data, target, tmp_path, init=load_checkpoint(pretrained / "model.pt"))
    steps = -(-len(small_data.train_y) // 64)
    ramp = [p for p in seen if p < 0.05]
    assert len(ramp) == steps - 1 and ramp == sorted(ramp) and ramp[0] == pytest.approx(0.05 / steps)
    assert seen[-1] == 0.05 and seen.count(0.05) >= 2, "after the ramp the rate holds at P_sa^T"


def _interrupt_after_epochs(monkeypatch, epochs: int):
    """Make training stop (as a Ctrl-C would) right after ``epochs`` epochs were saved."""
    import ftdeploy.training.loop as tr  # the loop saves through its own name for save_atomic

    saved = []
    original = tr.save_atomic

    def save_then_maybe_stop(obj, path):
        original(obj, path)
        if path.name == "model.pt":
            saved.append(path)
            if len(saved) == epochs:
                raise KeyboardInterrupt

    monkeypatch.setattr(tr, "save_atomic", save_then_maybe_stop)


@pytest.mark.parametrize("method, blocks, epochs, cut", [("progressive", "split", 3, 1), ("pretrain", "split", 3, 1),
                                                       ("progressive", "each", 2, 3)])  # fmt: skip
def test_an_interrupted_run_resumes_exactly_where_it_stopped(method, blocks, epochs, cut, pretrained, small_data, tmp_path,
                                                             monkeypatch):  # fmt: skip
    """Interrupted after epoch ``cut`` and resumed, a run ends bit-identical to an uninterrupted
    one: weights, momentum, learning rate, fault rate, data order and fault draws all continue
    (blocks of their own: into the second block's restarted schedule). Its log keeps one row
    per epoch."""
    target, _ = load_target("paper-diff8")
    init = load_checkpoint(pretrained / "model.pt") if method != "pretrain" else None
    cfg = TrainConfig(model="democnn", method=method, target_rate=0.05, progressive_rates=[0.01, 0.05], epochs=epochs,
                      progressive_blocks=blocks, lr=0.01, batch_size=64, rate_warmup_epochs=1.5, eval_chips=1, device="cpu")  # fmt: skip
    straight = train(cfg, small_data, target, tmp_path / "straight", init=init)

    with monkeypatch.context() as m:
        _interrupt_after_epochs(m, cut)
        with pytest.raises(KeyboardInterrupt):
            train(cfg, small_data, target, tmp_path / "cut", init=init)
    assert load_checkpoint(tmp_path / "cut" / "model.pt")["epochs_done"] == cut
    resumed = train(cfg, small_data, target, tmp_path / "cut", init=init, resume=True)

    assert resumed["epochs_done"] == resumed["epochs"] == cfg.run_epochs
    for key, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    rows = [json.loads(line) for line in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, cfg.run_epochs + 1))
    if blocks == "each":  # each rate a retraining of its own: the learning rate decays, then starts again
        assert [r["rate"] for r in rows] == [0.01, 0.01, 0.05, 0.05]
        # (a row's lr is the one its next step takes: after epoch 2, the second block's warm-up)
        assert rows[2]["lr"] == rows[0]["lr"] and rows[1]["lr"] < rows[0]["lr"] and rows[3]["lr"] == 0.0
    ref = [json.loads(line) for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    assert [(r["lr"], r["rate"], r["train_loss"]) for r in rows] == [(r["lr"], r["rate"], r["train_loss"]) for r in ref]


def test_a_run_from_before_fault_draw_resumes_drawing_dense(pretrained, small_data, tmp_path, monkeypatch):
    """A checkpoint that does not record ``fault_draw`` was written by a run that drew its chips
    cell by cell: resumed under today's default (sparse) config, it goes on dense and ends
    bit-identical to the uninterrupted dense run, and records that it drew dense."""
    from ftdeploy.errors import ModelError
    from ftdeploy.training.checkpoint import run_differences

    target, _ = load_target("paper-diff8")
    init = load_checkpoint(pretrained / "model.pt")
    data = dataclasses.replace(small_data, train_x=small_data.train_x[:128], train_y=small_data.train_y[:128],
                               val_x=small_data.val_x[:32], val_y=small_data.val_y[:32])  # two steps an epoch
    cfg = TrainConfig(model="democnn", method="one-shot", target_rate=0.05, epochs=2, lr=0.01, batch_size=64,
                      eval_chips=0, device="cpu")  # fmt: skip
    assert cfg.fault_draw == "sparse", "new runs draw sparse"
    dense = cfg.model_copy(update={"fault_draw": "dense"})
    straight = train(dense, data, target, tmp_path / "straight", init=init)
    other = train(cfg, data, target, tmp_path / "sparse", init=init)
    assert not all(torch.equal(v, other["state_dict"][k]) for k, v in straight["state_dict"].items()), \
        "the sparse draw gives other chips from the same seed"
    with monkeypatch.context() as m:
        _interrupt_after_epochs(m, 1)
        with pytest.raises(KeyboardInterrupt):
            train(dense, data, target, tmp_path / "cut", init=init)
    _edit_recorded_config(tmp_path / "cut", lambda config: config.pop("fault_draw"))

    resumed = train(cfg, data, target, tmp_path / "cut", init=init, resume=True)
    assert resumed["config"]["fault_draw"] == "dense" and run_differences(resumed, cfg) == ""
    for key, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key

    _edit_recorded_config(tmp_path / "cut", lambda config: config.update(fault_draw="coarse"))
    with pytest.raises(ModelError, match=r"resume\.pt: config\.fault_draw: Input should be 'sparse' or 'dense' \(found 'coarse'\)"):
        train(cfg, data, target, tmp_path / "cut", init=init, resume=True)


def _edit_recorded_config(folder, edit) -> None:
    """``edit`` the run config recorded in ``folder``'s model.pt and resume.pt, in place."""
    for name in ("model.pt", "resume.pt"):
        saved = torch.load(folder / name, weights_only=True)
        edit((saved["checkpoint"] if name == "resume.pt" else saved)["config"])
        torch.save(saved, folder / name)


def test_resuming_a_finished_run_returns_it_and_a_different_run_is_refused(pretrained, small_data, tmp_path):
    from ftdeploy.errors import ConfigError

    target, _ = load_target("paper-diff8")
    init = load_checkpoint(pretrained / "model.pt")
    cfg = TrainConfig(model="democnn", method="one-shot", target_rate=0.02, epochs=1, lr=0.01, batch_size=64,
                      eval_chips=0, device="cpu")  # fmt: skip
    done = train(cfg, small_data, target, tmp_path, init=init)
    mtime = (tmp_path / "model.pt").stat().st_mtime_ns
    again = train(cfg, small_data, target, tmp_path, init=init, resume=True)
    assert again["state_dict"].keys() == done["state_dict"].keys()
    assert all(torch.equal(again["state_dict"][k], v) for k, v in done["state_dict"].items())
    assert (tmp_path / "model.pt").stat().st_mtime_ns == mtime, "a finished run is not retrained"
    with pytest.raises(ConfigError, match=r"resume\.pt: cannot resume a different run \(target_rate: 0\.02 there, 0\.05 now\)"):
        train(cfg.model_copy(update={"target_rate": 0.05}), small_data, target, tmp_path, init=init, resume=True)
    folded, _ = load_target("diff8-folded")
    with pytest.raises(ConfigError, match=r"cannot resume on a different target \(batchnorm: 'periphery' there, 'fold' now\)"):
        train(cfg, small_data, folded, tmp_path, init=init, resume=True)


def test_clean_steps_are_spread_evenly_and_override_the_ramp():
    cfg = TrainConfig(method="one-shot", target_rate=0.05, clean_steps=0.25, epochs=2)
    rates = [cfg.step_rate(0.05, step, rate_warmup_steps=4) for step in range(12)]
    assert rates == pytest.approx([0.0125, 0.025, 0.0375, 0.0, 0.05, 0.05, 0.05, 0.0, 0.05, 0.05, 0.05, 0.0], abs=1e-15)
    half = TrainConfig(method="one-shot", clean_steps=0.5, epochs=2)
    assert [half.step_rate(0.05, step, 0) for step in range(6)] == [0.05, 0.0] * 3
    plain = TrainConfig(method="one-shot", epochs=2)
    assert {plain.step_rate(0.05, step, 0) for step in range(100)} == {0.05}


def test_a_retraining_with_clean_steps_runs_every_other_step_fault_free(pretrained, small_data, tmp_path, monkeypatch):
    seen = []
    original = FaultInjector.set_rate
    monkeypatch.setattr(FaultInjector, "set_rate", lambda self, p: (seen.append(p), original(self, p)))
    target, _ = load_target("paper-diff8")
    cfg = TrainConfig(model="democnn", method="one-shot", target_rate=0.05, epochs=1, lr=0.01, batch_size=64,
                      rate_warmup_epochs=0, clean_steps=0.5, eval_chips=0, device="cpu")  # fmt: skip
    train(cfg, small_data, target, tmp_path, init=load_checkpoint(pretrained / "model.pt"))
    steps = -(-len(small_data.train_y) // 64)
    per_step = seen[1:]  # after the epoch's own set_rate
    assert len(per_step) == steps and per_step == [0.05, 0.0] * (steps // 2) + [0.05] * (steps % 2)


@pytest.mark.parametrize("target_name", ["paper-diff8", "diff8-folded", "mlc2-bitsliced"])
def test_weight_clip_bounds_what_the_cells_hold_per_scale_group(target_name):
    """Per scale group (a layer, or a channel on a per-channel target) of what the cells hold (W·γ/σ
    where the target folds BN), weights beyond ±K sample standard deviations end on the bound and
    all others keep their exact bits."""
    target, _ = load_target(target_name)
    model = create_model("democnn", width=8)
    _randomise_bn(model)
    freeze_batchnorm(model)
    pairs = conv_bn_pairs(model) if target.batchnorm is BatchNormPlacement.fold else {}
    modules = dict(model.named_modules())

    def held(name, layer):  # what the cells hold, per output channel
        w = layer.weight.detach().flatten(1).clone()
        if name not in pairs:
            return w
        bn = modules[pairs[name]]
        return w * (bn.weight * torch.rsqrt(bn.running_var + bn.eps)).detach()[:, None]

    per_channel = target.scale.value == "channel"
    before = {name: (layer.weight.detach().clone(), held(name, layer)) for name, layer in deployed_layers(model)}
    inj = FaultInjector(model, target)
    inj.attach()
    inj.clip_to_sigmas(1.5)
    inj.detach()
    clipped_some = False
    for name, layer in deployed_layers(model):
        w0, h0 = before[name]
        bound = 1.5 * (h0.std(1, keepdim=True) if per_channel else h0.std())
        inside = (h0.abs() <= bound).reshape(w0.shape)
        assert torch.equal(layer.weight[inside], w0[inside]), name
        torch.testing.assert_close(held(name, layer), h0.clamp(-bound, bound), rtol=1e-5, atol=1e-7)
        clipped_some |= bool((~inside).any())
    assert clipped_some


def test_weight_clip_of_a_pruned_model_takes_the_spread_of_its_surviving_weights():
    """Pruned zeros are no part of the distribution the clip bounds: the bound is K standard
    deviations of the surviving weights alone, and the zeros stay zero."""
    target, _ = load_target("paper-diff8")
    model = create_model("democnn", width=8)
    layers = deployed_layers(model)
    with torch.no_grad():
        masks = [torch.rand(layer.weight.shape, generator=torch.Generator().manual_seed(i)) > 0.7 for i, (_, layer) in enumerate(layers)]
        for (_, layer), mask in zip(layers, masks):
            layer.weight.mul_(mask)
    before = [layer.weight.detach().clone() for _, layer in layers]
    inj = FaultInjector(model, target, prune_masks={name: mask for (name, _), mask in zip(layers, masks)})
    inj.attach()
    inj.clip_to_sigmas(1.5)
    inj.detach()
    for (name, layer), w0, mask in zip(layers, before, masks):
        bound = 1.5 * w0[mask].std()  # paper-diff8: per-layer scale, BN not folded
        torch.testing.assert_close(layer.weight[mask], w0[mask].clamp(-bound, bound), rtol=1e-5, atol=1e-7)
        assert not layer.weight[~mask].any(), name
        # weights a spread counting the zeros would have cut, left as they are
        assert ((w0.abs() > 1.5 * w0.std()) & (w0.abs() <= bound)).any(), name


def test_a_retraining_with_weight_clip_clips_after_every_step(pretrained, small_data, tmp_path, monkeypatch):
    calls = []
    original = FaultInjector.clip_to_sigmas
    monkeypatch.setattr(FaultInjector, "clip_to_sigmas", lambda self, k: (calls.append(k), original(self, k)))
    target, _ = load_target("paper-diff8")
    init = load_checkpoint(pretrained / "model.pt")
    cfg = TrainConfig(model="democnn", method="one-shot", target_rate=0.05, epochs=1, lr=0.01, batch_size=64,
                      weight_clip=1.5, eval_chips=0, device="cpu")  # fmt: skip
    ckpt = train(cfg, small_data, target, tmp_path, init=init)
    assert calls == [1.5] * -(-len(small_data.train_y) // 64)

    def crest(state):  # the largest peak / std over the deployed layers
        return max((w.abs().max() / w.std()).item() for name, w in state.items() if name.endswith("weight") and w.dim() > 1)

    assert crest(init["state_dict"]) > 2.5 and crest(ckpt["state_dict"]) < 2.0


def test_a_finished_pretraining_serves_any_target(pretrained, small_data):
    """Pretraining injects no faults: reusing it for another chip family is no different run."""
    folded, _ = load_target("diff8-folded")
    cfg = TrainConfig.model_validate(load_checkpoint(pretrained / "model.pt")["config"])
    again = train(cfg, small_data, folded, pretrained, resume=True)
    assert again["epochs_done"] == cfg.epochs


def test_a_run_with_only_model_pt_resumes_on_schedule(pretrained, small_data, tmp_path, monkeypatch):
    """A run folder from before resume.pt existed (the H200 grid's) continues from its weights,
    with the learning rate and fault rate of the step it stopped at."""
    target, _ = load_target("paper-diff8")
    init = load_checkpoint(pretrained / "model.pt")
    cfg = TrainConfig(model="democnn", method="progressive", target_rate=0.05, progressive_rates=[0.01, 0.05],
                      epochs=2, lr=0.01, batch_size=64, eval_chips=0, device="cpu")  # fmt: skip
    with monkeypatch.context() as m:
        _interrupt_after_epochs(m, 1)
        with pytest.raises(KeyboardInterrupt):
            train(cfg, small_data, target, tmp_path, init=init)
    (tmp_path / "resume.pt").unlink()
    rates = []
    original = FaultInjector.set_rate
    monkeypatch.setattr(FaultInjector, "set_rate", lambda self, p: (rates.append(p), original(self, p)))
    resumed = train(cfg, small_data, target, tmp_path, init=init, resume=True)
    assert resumed["epochs_done"] == 2 and rates[0] == 0.05, "epoch 2 trains at the second block's rate"
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[1]["lr"] == pytest.approx(0.0, abs=1e-12), "the cosine schedule ends at 0 on the last step"
    assert [r.get("started") for r in rows] == ["fresh", "resumed from weights"], "the log tells how it went on"


def test_bad_checkpoint_and_resume_files_are_one_clear_error(tmp_path):
    from ftdeploy.errors import ModelError
    from ftdeploy.training.checkpoint import _load_resume_file

    garbage = tmp_path / "model.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match=r"model\.pt: not a loadable checkpoint: "):
        load_checkpoint(garbage)
    torch.save({"format": "someone-else/2"}, garbage)
    with pytest.raises(ModelError, match=r"model\.pt: format: expected 'ftdeploy-checkpoint/1', found 'someone-else/2'$"):
        load_checkpoint(garbage)
    torch.save([1, 2], tmp_path / "resume.pt")
    with pytest.raises(ModelError, match=r"resume\.pt: format: expected 'ftdeploy-resume/1', found 'list'; delete it to resume"):
        _load_resume_file(tmp_path / "resume.pt")
    assert _load_resume_file(tmp_path / "absent.pt") is None


def test_distillation_loss_is_zero_only_when_the_student_matches_the_teacher():
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(16, 10, generator=g)
    assert distillation_loss(teacher.clone(), teacher, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    student = torch.randn(16, 10, generator=g, requires_grad=True)
    loss = distillation_loss(student, teacher, 4.0)
    kl = (torch.softmax(teacher / 4, 1) * (torch.log_softmax(teacher / 4, 1) - torch.log_softmax(student / 4, 1))).sum(1).mean()
    assert loss.item() == pytest.approx(16 * kl.item(), rel=1e-5), "KL of the softened outputs, times T²"
    loss.backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0


def _retrain_with_labels(pretrained, small_data, tmp_path, distill: float, labels):
    target, _ = load_target("paper-diff8")
    cfg = TrainConfig(model="democnn", method="one-shot", target_rate=0.02, epochs=1, lr=0.01, batch_size=64,
                      distill=distill, eval_chips=0, device="cpu")  # fmt: skip
    data = dataclasses.replace(small_data, train_y=labels)
    return train(cfg, data, target, tmp_path, init=load_checkpoint(pretrained / "model.pt"))["state_dict"]


def test_full_distillation_learns_from_the_clean_teacher_not_the_labels(pretrained, small_data, tmp_path):
    """distill=1: the faulty student is trained on the pretrained model's clean outputs alone, so
    scrambling the labels changes nothing; with distill=0.5 the labels count."""
    scrambled = small_data.train_y[torch.randperm(len(small_data.train_y), generator=torch.Generator().manual_seed(1))]
    runs = {(d, name): _retrain_with_labels(pretrained, small_data, tmp_path / f"{d}-{name}", d, labels)
            for d in (1.0, 0.5) for name, labels in (("true", small_data.train_y), ("scrambled", scrambled))}  # fmt: skip
    same = lambda a, b: all(torch.equal(a[k], b[k]) for k in a)  # noqa: E731
    assert same(runs[1.0, "true"], runs[1.0, "scrambled"])
    assert not same(runs[0.5, "true"], runs[0.5, "scrambled"])
    assert not same(runs[1.0, "true"], runs[0.5, "true"])


@pytest.mark.parametrize("args, option", [(["--method", "pretrain", "--distill", "0.5"], "--distill: a fault-tolerant retraining option"),
                                          (["--method", "pretrain", "--weight-clip", "2"], "--weight-clip: a fault-tolerant retraining option"),
                                          (["--method", "pretrain", "--clean-steps", "0.5"], "--clean-steps: a fault-tolerant"),
                                          (["--method", "pretrain", "--bn", "train"], "--bn: a fault-tolerant"),
                                          (["--method", "pretrain", "--raw-faults"], "--raw-faults: a fault-tolerant"),
                                          (["--method", "one-shot", "--distill", "1.5"], "--distill"),
                                          (["--method", "one-shot", "--rate-warmup", "-1"], "--rate-warmup:"),
                                          (["--method", "one-shot", "--weight-clip", "-1"], "--weight-clip:"),
                                          (["--method", "one-shot", "--target-rate", "2"], "--target-rate:")])  # fmt: skip
def test_train_cli_rejects_a_bad_recipe_value_with_one_line_naming_its_option(args, option, tmp_path, monkeypatch, capsys):
    import sys

    from ftdeploy.cli import main

    monkeypatch.setattr(sys, "argv", ["ftdeploy", "train", "--profile", "demo", *args, "--out", str(tmp_path / "run")])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and option in err[0], err
    assert not (tmp_path / "run").exists()


def test_train_cli_refuses_a_model_other_than_the_checkpoints_before_loading_data(pretrained, tmp_path, monkeypatch, capsys):
    import ftdeploy.data
    from ftdeploy.cli import main

    monkeypatch.setattr(ftdeploy.data, "load_data", lambda *a, **k: pytest.fail("the data was loaded"))
    monkeypatch.setattr(sys, "argv", ["ftdeploy", "train", "--profile", "demo", "--from", str(pretrained / "model.pt"),
                                      "--model", "resnet20", "--method", "one-shot", "--out", str(tmp_path / "run")])  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and err == ["error: --model 'resnet20' does not match the checkpoint's model 'democnn'"], err
    assert not (tmp_path / "run").exists()


def test_train_cli_takes_the_recipe_from_the_profile_and_typed_options_over_it(pretrained, small_data, tmp_path, monkeypatch):
    """A retraining uses its profile's recipe where no option is typed; a typed option wins; a
    pretraining takes none of it (distillation, say, needs a teacher a pretraining has not got)."""
    import ftdeploy.data
    import ftdeploy.training.loop
    from typer.testing import CliRunner

    from ftdeploy.cli import app

    profile = demo_profile_with(tmp_path, training=dict(unbias_faults=True, clean_steps=0.25, progressive_blocks="each", distill=0.5,
                                                        weight_clip=2.5))
    seen = []
    monkeypatch.setattr(ftdeploy.data, "load_data", lambda spec=None, val_split=None, image_size=32, stream=None: small_data)
    monkeypatch.setattr(ftdeploy.training.loop, "train", lambda config, *a, **k: seen.append(config) or load_checkpoint(pretrained / "model.pt"))
    retrain = ["train", "--profile", profile, "--from", str(pretrained / "model.pt"), "--method", "progressive"]
    for extra in ([], ["--raw-faults", "--clean-steps", "0", "--progressive-blocks", "split", "--weight-clip", "0"]):
        result = CliRunner().invoke(app, [*retrain, *extra, "--out", str(tmp_path / "run")])
        assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["train", "--profile", profile, "--method", "pretrain", "--out", str(tmp_path / "pre")])
    assert result.exit_code == 0, result.output
    from_profile, typed, pretraining = seen
    assert (from_profile.unbias_faults, from_profile.clean_steps, from_profile.progressive_blocks, from_profile.distill,
            from_profile.weight_clip) == (True, 0.25, "each", 0.5, 2.5)
    assert (typed.unbias_faults, typed.clean_steps, typed.progressive_blocks, typed.distill, typed.weight_clip) == (False, 0.0, "split", 0.5, 0.0)
    assert pretraining.method == "pretrain" and pretraining.recipe() == TrainConfig().recipe()


def test_train_cli_reads_a_config_file_under_the_typed_options(pretrained, small_data, tmp_path, monkeypatch):
    """--config FILE (a run's config.yaml, or the one a sweep starts a training with): the fields
    it sets over the profile's, the options typed over both; a field it leaves out is the
    profile's. A whole run's config.yaml gives that very run again."""
    import yaml
    from typer.testing import CliRunner

    import ftdeploy.data
    import ftdeploy.training.loop
    from ftdeploy.cli import app

    seen = []
    monkeypatch.setattr(ftdeploy.data, "load_data", lambda spec=None, val_split=None, image_size=32, stream=None: small_data)
    monkeypatch.setattr(ftdeploy.training.loop, "train", lambda config, *a, **k: seen.append(config) or load_checkpoint(pretrained / "model.pt"))
    partial = tmp_path / "partial.yaml"
    partial.write_text(yaml.safe_dump({"method": "one-shot", "epochs": 3, "clean_steps": 0.25, "momentum": 0.8}))
    retrain = ["train", "--profile", "demo", "--from", str(pretrained / "model.pt"), "--out", str(tmp_path / "run")]
    for extra in ([], ["--epochs", "2", "--clean-steps", "0"]):
        result = CliRunner().invoke(app, [*retrain, "--config", str(partial), *extra])
        assert result.exit_code == 0, result.output
    from_file, typed = seen
    profile = load_profile("demo").profile.training
    assert (from_file.method, from_file.epochs, from_file.clean_steps, from_file.momentum) == ("one-shot", 3, 0.25, 0.8)
    assert (from_file.lr, from_file.batch_size, from_file.model) == (profile.retrain_lr, profile.batch_size, "democnn")
    assert (typed.method, typed.epochs, typed.clean_steps, typed.momentum) == ("one-shot", 2, 0.0, 0.8)
    whole = tmp_path / "config.yaml"
    whole.write_text(config_yaml(from_file))
    result = CliRunner().invoke(app, ["train", "--profile", "strict", "--from", str(pretrained / "model.pt"), "--config", str(whole),
                                      "--out", str(tmp_path / "run")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert seen[-1] == from_file, "every field from the file, none from another profile"


@pytest.mark.parametrize("text, error", [
    ("epochs: 0\n", "{file}: epochs: Input should be greater than or equal to 1 (found 0)"),
    ("epoch: 3\n", "{file}: epoch: Extra inputs are not permitted (found 3)"),
    ("bn: sometimes\n", "{file}: bn: Input should be 'frozen' or 'train' (found 'sometimes')"),
    ("epochs: [3\n", "{file}:2:1: not valid YAML: expected ',' or ']', but got '<stream end>'"),
    ("- 3\n", "{file}: (top level): expected a mapping of fields, found list"),
    (None, "{file}: file not found"),
])  # fmt: skip
def test_a_bad_config_file_is_refused_in_one_line_naming_the_file_and_field(text, error, tmp_path, monkeypatch, capsys):
    from ftdeploy.cli import main

    file = tmp_path / "config.yaml"
    if text is not None:
        file.write_text(text)
    monkeypatch.setattr(sys, "argv", ["ftdeploy", "train", "--profile", "demo", "--config", str(file), "--out", str(tmp_path / "run")])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and err == ["error: " + error.format(file=file)], err
    assert not (tmp_path / "run").exists()


def test_sigterm_stops_a_training_like_ctrl_c_with_its_epochs_saved(tmp_path):
    """A scheduler's or a deadline's SIGTERM ends a run as Ctrl-C does: exit 130, one line, and
    the finished epochs on disk (a run started in the background ignores SIGINT, so SIGTERM is
    how such runs are stopped)."""
    import signal
    import time

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "ftdeploy", "train", "--profile", "demo", "--method", "pretrain", "--epochs", "200",
           "--batch-size", "256", "--device", "cpu", "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))  # fmt: skip
    deadline = time.monotonic() + 240
    # model.pt, not log.jsonl: an epoch's log row is written before its checkpoints, and a signal
    # in between leaves the row without a model.pt (the flaky failure under load).
    while not (out / "model.pt").is_file():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "interrupted: completed epochs are saved in the run folder"
    assert "Traceback" not in err
    assert load_checkpoint(out / "model.pt")["epochs_done"] >= 1


@pytest.mark.parametrize("option, value", [("--epochs", "0"), ("--lr", "0"), ("--batch-size", "0"), ("--device", "cuda:99"),
                                           ("--device", "gpu")])  # fmt: skip
def test_train_refuses_a_typed_zero_or_a_device_this_machine_lacks_before_any_work(option, value, tmp_path):
    """A typed 0 is not 'the profile's value' (it was, silently: ``--epochs 0`` trained 20), and
    a CUDA device the machine lacks is one line, not a traceback from the first tensor."""
    from typer.testing import CliRunner

    from ftdeploy.cli import app
    from ftdeploy.errors import ConfigError

    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--profile", "demo", "--method", "pretrain", option, value, "--out", str(out)])
    assert isinstance(result.exception, ConfigError), result.output
    assert str(result.exception).startswith(f"{option}: ") and "\n" not in str(result.exception)
    assert not out.exists()
