"""Batched chips in the PyTorch backend: K chips in one forward pass are the K chips one at a
time, chip for chip, and the chips ONNX Runtime measures on the exported file.

What is exact and what is not: each chip's levels are drawn from its own stream exactly as
alone (the same arrays), and the stacked weights equal the one-at-a-time weights bit for bit.
The logits are not bit-identical: vmap runs each convolution as one grouped convolution, which
sums in another order, so they agree to float32 rounding (checked below) and an argmax on a
near-exact tie could flip. Accuracies are therefore compared with a slack of one image per chip,
the same slack the PyTorch and ONNX Runtime backends are allowed against each other
(tests/test_verify.py); on these images they come out equal."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ftdeploy.chip import DeployedNetwork
from ftdeploy.data import load_data, normalize
from ftdeploy.export import export_onnx
from ftdeploy.exported import load_export
from ftdeploy.nonideality import FaultModel, ProgrammingVariation, ReadNoise, StuckAt
from ftdeploy.population import SimulatedChips, chip_accuracies, draw_readings
from ftdeploy.profiles import load_profile
from ftdeploy.runtime import OnnxBackend
from ftdeploy.training.checkpoint import load_checkpoint, model_from_checkpoint
from ftdeploy.verify import evaluation_data, subset_indices

from _quick_model import quick_checkpoint

IMAGES = 150
PROFILE = """\
name: btest
target: {target}
faults:
  - kind: stuck-at
    p_sa: 0.01
signoff:
  rates: [0.01]
"""
#: Stuck-at alone (integer levels), and every kind at once (continuous levels, read noise drawn
#: afresh for every batch of images).
POPULATIONS = {
    "stuck-at": FaultModel([StuckAt.from_total(0.02)]),
    "all-kinds": FaultModel([StuckAt.from_total(0.01), ProgrammingVariation(sigma_rel=0.05), ReadNoise(sigma_rel=0.05)]),
}


@pytest.fixture(scope="module")
def bundle():
    return load_data(None)


@pytest.fixture(scope="module", params=["paper-diff8", "diff8-folded"])
def setup(request, bundle, tmp_path_factory):
    """(DeployedNetwork, uint8 images, labels, mean, std, ONNX Runtime backend on the same images)
    for a target with BatchNorm in the periphery and one with it folded into the cells."""
    folder = tmp_path_factory.mktemp(request.param)
    (folder / "p.yaml").write_text(PROFILE.format(target=request.param))
    resolved = load_profile(folder / "p.yaml")
    ckpt = load_checkpoint(quick_checkpoint(bundle, resolved.target, folder))
    export_onnx(ckpt, resolved, folder / "m.onnx")
    keep = torch.from_numpy(subset_indices(bundle.val_y.numpy(), IMAGES))
    norm = ckpt["normalization"]
    net = DeployedNetwork(model_from_checkpoint(ckpt), resolved.target)
    export = load_export(folder / "m.onnx")
    data = evaluation_data(export, None, None, IMAGES)
    return net, bundle.val_x[keep], bundle.val_y[keep], norm["mean"], norm["std"], OnnxBackend(export, data.x, data.y, batch_size=64)


def _one_image(n: int) -> float:
    return 100.0 / n + 1e-9


@pytest.mark.parametrize(("population", "chip_batch"), [("stuck-at", 3), ("all-kinds", 8)])
def test_batched_chips_are_the_chips_one_at_a_time_and_onnx_runtimes(setup, population, chip_batch):
    """7 chips in groups of 3 (the last one short) or in one group of 8, images in batches of 64
    (a noisy chip reads afresh per batch, on every backend alike)."""
    net, x, y, mean, std, onnx_backend = setup
    chips = SimulatedChips(POPULATIONS[population], 0.01, 0, 7)
    alone = chip_accuracies(net.backend(x, y, mean, std, batch_size=64), chips)
    ticks = []
    batched = chip_accuracies(net.backend(x, y, mean, std, batch_size=64, chip_batch=chip_batch), chips, on_chip=lambda: ticks.append(1))
    onnx = chip_accuracies(onnx_backend, chips)
    assert len(batched) == 7 and len(ticks) == 7
    assert max(abs(a - b) for a, b in zip(batched, alone)) <= _one_image(len(y)), (batched, alone)
    assert max(abs(a - b) for a, b in zip(batched, onnx)) <= _one_image(len(y)), (batched, onnx)
    assert len(set(batched)) > 1, "the chips differ from one another"


def test_stacked_weights_are_the_one_at_a_time_weights_bit_for_bit(setup):
    net, *_ = setup
    # no read noise here: a noisy chip's levels() is a fresh reading each call
    chips = SimulatedChips(FaultModel([StuckAt.from_total(0.02), ProgrammingVariation(sigma_rel=0.05)]), 0.02, 3, 4)
    readings = draw_readings(list(chips), net.programmed, net.backend(*setup[1:5]).cells)
    stacked = net.stacked_weights([r.levels() for r in readings])
    for k, reading in enumerate(readings):
        net.load_levels(reading.levels())
        for layer in net.layers:
            assert torch.equal(stacked[f"{layer.name}.weight"][k], layer.module.weight), layer.name
    net.clear()


def test_batched_logits_agree_to_float32_rounding(setup):
    """The one place batching is not bit-exact: a grouped convolution sums in another order."""
    net, x, y, mean, std, _ = setup
    chips = list(SimulatedChips(POPULATIONS["stuck-at"], 0.02, 0, 3))
    readings = draw_readings(chips, net.programmed, net.backend(x, y, mean, std).cells)
    xb = normalize(x[:32], mean, std)
    with torch.no_grad():
        batched = net.chips_logits(net.stacked_weights([r.levels() for r in readings]), xb)
        for k, reading in enumerate(readings):
            net.load_levels(reading.levels())
            alone = net.model(xb)
            assert torch.allclose(batched[k], alone, rtol=1e-4, atol=1e-4 * float(alone.abs().max())), k
    net.clear()


def test_chips_drawn_together_are_the_chips_drawn_alone(setup):
    """Concurrent drawing (one thread per chip) gives every chip the arrays it draws alone."""
    net, x, y, mean, std, _ = setup
    cells = net.backend(x, y, mean, std).cells
    chips = list(SimulatedChips(POPULATIONS["all-kinds"], 0.05, 1, 5))
    together = draw_readings(chips, net.programmed, cells)
    for chip, reading in zip(chips, together):
        alone = chip.reading(net.programmed, cells)
        assert all(np.array_equal(a, b) for a, b in zip(reading.levels(), alone.levels()))


def test_chip_batch_must_be_positive(setup):
    net, x, y, mean, std, _ = setup
    with pytest.raises(ValueError, match="chip_batch"):
        net.backend(x, y, mean, std, chip_batch=0)


# --- the chip_batch setting: profile, then command line ---------------------------------------


def test_chip_batch_comes_from_the_profile_then_the_command_line(tmp_path):
    from ftdeploy.errors import ConfigError
    from ftdeploy.resolve import signoff_settings

    (tmp_path / "p.yaml").write_text(PROFILE.format(target="paper-diff8") + "  chip_batch: 16\n")
    signoff = load_profile(tmp_path / "p.yaml").profile.signoff
    assert signoff_settings(signoff, {}).chip_batch == 16
    assert signoff_settings(signoff, {"chip_batch": 4}).chip_batch == 4
    with pytest.raises(ConfigError, match="^--chip-batch: expected at least 1"):
        signoff_settings(signoff, {"chip_batch": 0})


def test_sweep_chip_batch_0_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    import sys

    from ftdeploy.cli import main

    monkeypatch.setattr(sys, "argv", ["ftdeploy", "sweep", "--from", str(tmp_path / "m.pt"), "--profile", "demo",
                                      "--out", str(tmp_path / "s"), "--chip-batch", "0"])  # fmt: skip
    with pytest.raises(SystemExit) as info:
        main()
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("error: --chip-batch:") and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "s").exists()


# --- ONNX Runtime on a GPU: --device ------------------------------------------------------------


def test_onnx_device_names_their_execution_providers(monkeypatch):
    import onnxruntime as ort

    from ftdeploy.errors import ConfigError
    from ftdeploy.runtime import CPU, CUDA, execution_providers

    monkeypatch.setattr(ort, "get_available_providers", lambda: [CPU])
    assert execution_providers(None) == ([CPU], None) and execution_providers("cpu") == ([CPU], None)
    providers, note = execution_providers("auto")
    assert providers == [CPU] and "running on the CPU" in note
    with pytest.raises(ConfigError, match=r"^--device: cuda asked for, but ONNX Runtime here has no CUDA execution provider"):
        execution_providers("cuda")
    for bad in ("gpu", "cuda:x", "cpu:1"):
        with pytest.raises(ConfigError, match=r"^--device: expected auto, cpu or cuda\[:N\]"):
            execution_providers(bad)
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    assert execution_providers("cuda:1") == ([(CUDA, {"device_id": 1}), CPU], None)
    assert execution_providers("auto") == ([(CUDA, {"device_id": 0}), CPU], None)


def test_verify_device_cuda_without_cuda_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    import sys

    import onnxruntime as ort

    from ftdeploy.cli import main

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine's ONNX Runtime has CUDA")
    monkeypatch.setattr(sys, "argv", ["ftdeploy", "verify", str(tmp_path / "m.onnx"), "--profile", "demo", "--device", "cuda",
                                      "--out", str(tmp_path / "r")])  # fmt: skip
    with pytest.raises(SystemExit) as info:
        main()
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("error: --device: cuda asked for") and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


def test_a_pass_holds_what_memory_allows_between_one_chips_batch_and_every_chip(setup):
    """On the CPU a pass holds one chip's batch of (chip, image) pairs; on a GPU as many as half
    its free memory holds, measured per image from the network's own activations."""
    from ftdeploy.chip import pairs_within

    net, x, y, mean, std, _ = setup
    backend = net.backend(x, y, mean, std, batch_size=64, chip_batch=8)
    assert backend.pairs_per_pass(8) == 64
    per_image = net.activation_bytes((3, 32, 32))
    assert per_image >= 4 * 3 * 32 * 32  # at least the first layer's input-sized output
    assert pairs_within(10 * per_image, per_image, 4, 8) == 10
    assert pairs_within(per_image, per_image, 4, 8) == 4, "never less than one chip's batch"
    assert pairs_within(10**12, per_image, 4, 8) == 32, "never more than every chip on a whole batch"


def test_a_transformers_chips_map_over_a_chip_dimension_in_one_pass(bundle):
    """Attention's fused kernels have no rule to map them over chips: a vision transformer's
    batched chips run attention in its composite form, in one pass (no per-chip fallback, which
    warns), and give the one-at-a-time logits; the fused path is back on afterwards."""
    import warnings

    from _quick_model import tiny_vit

    from ftdeploy.models import attention_projections_as_layers

    torch.manual_seed(0)
    net = DeployedNetwork(attention_projections_as_layers(tiny_vit()), load_profile("demo").target)
    x, y = bundle.val_x[:16], bundle.val_y[:16]
    readings = draw_readings(list(SimulatedChips(POPULATIONS["stuck-at"], 0.02, 0, 3)), net.programmed,
                             net.backend(x, y, (0.5,) * 3, (0.25,) * 3).cells)  # fmt: skip
    xb = normalize(x, (0.5,) * 3, (0.25,) * 3)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")  # vmap's "performance drop" fallback warning fails the test
        batched = net.chips_logits(net.stacked_weights([r.levels() for r in readings]), xb)
    assert torch.backends.mha.get_fastpath_enabled()
    with torch.no_grad():
        for k, reading in enumerate(readings):
            net.load_levels(reading.levels())
            alone = net.model(xb)
            assert torch.allclose(batched[k], alone, rtol=1e-4, atol=1e-4 * float(alone.abs().max())), k
    net.clear()


_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=_CUDA)])
@pytest.mark.parametrize("chip_batch", [1, 4])
def test_chips_on_each_device_are_the_cpus_chips_to_one_image(setup, device, chip_batch):
    """The same network rebuilt on ``device`` measures each chip, one at a time and batched, as
    the CPU's one-at-a-time chips to one image (a GPU's convolutions sum in another order, which
    can flip a near tie): the parity the sign-off's GPU path states. The CPU case runs
    everywhere; the CUDA case where a GPU is."""
    net, x, y, mean, std, _ = setup
    chips = SimulatedChips(POPULATIONS["all-kinds"], 0.01, 0, 6)
    reference = chip_accuracies(net.backend(x, y, mean, std, batch_size=64), chips)
    rebuilt = DeployedNetwork(net.model, net.target, device=device)
    assert all(np.array_equal(a, b) for a, b in zip(rebuilt.programmed, net.programmed)), "the same cells"
    measured = chip_accuracies(rebuilt.backend(x, y, mean, std, batch_size=64, chip_batch=chip_batch), chips)
    assert max(abs(a - b) for a, b in zip(measured, reference)) <= _one_image(len(y)), (measured, reference)


def _onnx_runtime_has_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.mark.skipif(not _onnx_runtime_has_cuda(), reason="needs ONNX Runtime's CUDA execution provider (onnxruntime-gpu and a GPU)")
def test_onnx_runtime_chips_on_cuda_are_its_cpu_chips_to_one_image(setup):
    net, x, y, mean, std, onnx_cpu = setup
    chips = SimulatedChips(POPULATIONS["all-kinds"], 0.01, 0, 6)
    onnx_cuda = OnnxBackend(onnx_cpu.export, onnx_cpu.x, onnx_cpu.y, batch_size=64, device="cuda")
    cpu, cuda = chip_accuracies(onnx_cpu, chips), chip_accuracies(onnx_cuda, chips)
    assert max(abs(a - b) for a, b in zip(cuda, cpu)) <= _one_image(len(y)), (cuda, cpu)
