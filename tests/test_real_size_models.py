"""torchvision's real-size models through the whole flow on small inputs: fault-tolerant
retraining from a torchvision weights file, export, and sign-off (on both backends, chip for
chip, for a convolutional network and a transformer).

Each model runs on 32x32 images of a 40-image packed set (a vision transformer at 32x32 has
2x2 patches), one epoch each, so the flow is covered in about a minute; the architectures and
their weights are the real ones."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import pytest
import torch

from ftdeploy.chip import DeployedNetwork
from ftdeploy.data import embedded_path
from ftdeploy.errors import ModelError
from ftdeploy.exported import load_export
from ftdeploy.models import attention_projections_as_layers, create_model, deployed_layers, digital_parameters, with_layer_names
from ftdeploy.population import SimulatedChips, chip_accuracies
from ftdeploy.profiles import load_profile
from ftdeploy.training.checkpoint import load_checkpoint, model_from_checkpoint
from ftdeploy.verify import evaluation_data
from ftdeploy.weights import load_initial_weights

from conftest import demo_profile_with, run_main

#: The whole flow through the command line in CI: a residual network and a MobileNet (depthwise
#: convolutions, squeeze-and-excitation, hard-swish: the layer types of mobilenet_v2 and of
#: efficientnet_b0's MBConv blocks too). The others' whole flow is marked slow:
#: test_every_listed_model_exports_from_its_weights_file exports and signs off efficientnet_b0
#: and resnet50 from a weights file (slow as well: the CI flows cover their layer types); the
#: vision transformer's paths (attention and LayerNorm in the fault-injected step, transposed
#: weights on both backends) run in CI on torchvision's VisionTransformer at a small size, and
#: the resampled position embedding on vit_b_16's own weights file.
FLOW = ["resnet18", "mobilenet_v3_large"]
SLOW_FLOW = ["mobilenet_v2", "resnet50", "efficientnet_b0", "vit_b_16"]
MODELS = FLOW + SLOW_FLOW
HEADS = {"resnet18": "fc", "resnet50": "fc", "mobilenet_v2": "classifier.1", "mobilenet_v3_large": "classifier.3",
         "efficientnet_b0": "classifier.1", "vit_b_16": "heads.head"}  # fmt: skip
TRAIN_PER_CLASS, VAL_PER_CLASS = 1, 2  # images per class: one training step per epoch
CHIPS = 2  # simulated chips of the sign-off


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory) -> str:
    """30 embedded images, 1 per class for training and 2 for validation, as a packed set with
    its own split (the npz:FILE format)."""
    with np.load(embedded_path()) as z:
        jpeg, offsets, labels, classes = z["jpeg"], z["offsets"], z["labels"], z["classes"]
    picked, split = [], []
    for c in range(len(classes)):
        idx = np.flatnonzero(labels == c)[: TRAIN_PER_CLASS + VAL_PER_CLASS]
        picked.extend(idx)
        split.extend([0] * TRAIN_PER_CLASS + [1] * VAL_PER_CLASS)
    blobs = [jpeg[offsets[i] : offsets[i + 1]] for i in picked]
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, jpeg=np.concatenate(blobs), offsets=np.concatenate([[0], np.cumsum([len(b) for b in blobs])]),
             labels=labels[picked], classes=classes, split=np.array(split))  # fmt: skip
    return f"npz:{path}"


def _imagenet_weights_file(name: str, folder) -> tuple:
    """A torchvision weights file as torchvision publishes them: 1,000 classes, a vision
    transformer at 224x224 (random weights: the file format, not the values, is what is tested)."""
    torch.manual_seed(0)
    model = create_model(f"tv:{name}", num_classes=1000, image_size=224)
    path = folder / f"{name}-imagenet.pth"
    torch.save(model.state_dict(), path)
    return path, model.state_dict()


@pytest.mark.parametrize("name", FLOW + [pytest.param(n, marks=pytest.mark.slow) for n in SLOW_FLOW])
def test_a_torchvision_model_retrains_from_its_weights_file_exports_and_signs_off(name, tiny_set, tmp_path, monkeypatch, capsys):
    weights, published = _imagenet_weights_file(name, tmp_path)
    profile = demo_profile_with(tmp_path, training={"pretrain_epochs": 1, "batch_size": 10 * TRAIN_PER_CLASS},
                                signoff={"rates": [0.01], "chips": CHIPS})  # fmt: skip
    run = tmp_path / "run"
    code, out, err = run_main(monkeypatch, capsys, "train", "--profile", profile, "--model", f"tv:{name}", "--weights", weights,
                              "--data", tiny_set, "--method", "one-shot", "--epochs", "1", "--eval-chips", "0", "--out", run)  # fmt: skip
    assert code == 0, err
    head = HEADS[name]
    assert f"started afresh for this data's classes: {head}.bias, {head}.weight" in out
    ckpt = load_checkpoint(run / "model.pt")
    lineage = ckpt["initial_weights"]  # kept from the pretraining through the retraining
    assert lineage["file"] == str(weights) and lineage["reinitialised"] == [f"{head}.bias", f"{head}.weight"]
    assert lineage["resampled"] == (["encoder.pos_embedding"] if name == "vit_b_16" else [])
    assert ckpt["method"] == "one-shot" and ckpt["data"]["image_size"] == 32 and ckpt["num_classes"] == 10

    onnx_path = tmp_path / f"{name}.onnx"
    code, out, err = run_main(monkeypatch, capsys, "export", run / "model.pt", "--profile", profile, "--out", onnx_path)
    assert code == 0, err
    assert "on cells: " in out and "digital: " in out
    meta = {p.key: p.value for p in onnx.load(onnx_path, load_external_data=False).metadata_props}
    layers, digital = json.loads(meta["ftdeploy.layers"]), json.loads(meta["ftdeploy.digital"])
    model = model_from_checkpoint(ckpt)
    assert [r["name"] for r in layers] == [n for n, _ in deployed_layers(model)]
    kinds = {r["type"] for r in digital}
    if name == "vit_b_16":  # norms stay digital; every Linear, the attention projections and the patch conv are on cells
        assert "LayerNorm" in kinds and "MultiheadAttention" not in kinds
        assert "encoder.layers.encoder_layer_0.self_attention.in_proj" in [r["name"] for r in layers]
        assert any(r["onnx_transposed"] for r in layers)  # the token MLPs multiply by W^T
    else:  # biases, and BatchNorm where the target keeps it in the periphery
        assert kinds <= {"BatchNorm2d", "Conv2d", "Linear"}

    code, out, err = run_main(monkeypatch, capsys, "verify", onnx_path, "--profile", profile, "--data", tiny_set,
                              "--out", tmp_path / "signoff")  # fmt: skip
    assert code in (0, 1), err  # a verdict either way: this tiny model is not meant to pass
    report = json.loads((tmp_path / "signoff" / "report.json").read_text())
    (measured,) = report["figures"]["rates"]
    if name in AGREEMENT:
        _assert_torch_chips_equal(measured, ckpt, onnx_path, profile, tiny_set)


#: The models whose ONNX Runtime chips are compared with the PyTorch evaluator's, chip for chip:
#: a convolutional network, and one whose graph multiplies by transposed weights.
AGREEMENT = ("resnet18", "vit_b_16")


def _assert_torch_chips_equal(measured: dict, ckpt: dict, onnx_path, profile: str, tiny_set: str) -> None:
    """The sign-off's chips (ONNX Runtime) are the PyTorch evaluator's chips: same accuracy per
    chip, to one image (the runtimes accumulate in different orders, which could flip a tie)."""
    resolved = load_profile(profile)
    data = evaluation_data(load_export(onnx_path), tiny_set)
    net = DeployedNetwork(model_from_checkpoint(ckpt, allow_import=True), resolved.target)
    norm = ckpt["normalization"]
    backend = net.backend(torch.from_numpy(data.raw), torch.from_numpy(data.y), norm["mean"], norm["std"])
    rate = measured["rate"]
    chips = SimulatedChips(resolved.profile.fault_model.at_rate(rate), rate, resolved.profile.signoff.seed, CHIPS)
    expected = chip_accuracies(backend, chips)
    assert len(measured["chip_accuracies"]) == CHIPS
    assert max(abs(a - b) for a, b in zip(measured["chip_accuracies"], expected)) <= 100.0 / len(data.y) + 1e-9


@pytest.mark.parametrize("name", ["_quick_model:tiny_vit", pytest.param("tv:vit_b_16", marks=pytest.mark.slow)])
def test_a_vision_transformer_trains_on_faulty_chips_and_its_onnx_chips_are_the_torch_chips(name, tiny_set, tmp_path):
    """One fault-injected SGD step (every Linear, the attention projections and the patch
    convolution faulted; LayerNorm digital), then export, and the sign-off's ONNX Runtime chips
    equal the PyTorch evaluator's chip for chip (the token MLPs multiply by transposed weights).
    vit_b_16 itself from a 224x224 ImageNet weights file at 32x32, marked slow: the same
    torchvision classes at a small size run in CI."""
    from ftdeploy.export import export_onnx
    from ftdeploy.training.injection import FaultInjector
    from ftdeploy.training.loop import sgd_step

    torch.manual_seed(0)
    model = create_model(name, num_classes=10, image_size=32)
    if name == "tv:vit_b_16":
        weights, _ = _imagenet_weights_file("vit_b_16", tmp_path)
        assert load_initial_weights(model, weights)["resampled"] == ["encoder.pos_embedding"]
    resolved = load_profile("demo")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    injector = FaultInjector(model, resolved.target, seed=0, faults=resolved.profile.fault_model)
    injector.set_rate(0.05)
    injector.attach()
    x, y = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.arange(4)
    _, loss = sgd_step(model, x, y, torch.optim.SGD(model.parameters(), lr=0.01), clip=5.0)
    injector.detach()
    assert torch.isfinite(loss)
    moved = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert {"encoder.layers.encoder_layer_0.mlp.0.weight", "encoder.layers.encoder_layer_0.self_attention.in_proj.weight",
            "heads.head.weight"} <= set(moved)  # fmt: skip

    classes = [str(c) for c in np.load(embedded_path())["classes"]]
    ckpt = {"model": name, "num_classes": 10, "classes": classes, "state_dict": model.state_dict(),
            "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3}, "data": {"image_size": 32}}  # fmt: skip
    onnx_path = tmp_path / "vit.onnx"
    summary = export_onnx(ckpt, resolved, onnx_path, allow_model_import=True)
    assert any(r["onnx_transposed"] for r in summary["layers"])
    assert "MultiheadAttention" not in {r["type"] for r in summary["digital"]}
    export = load_export(onnx_path)
    data = evaluation_data(export, tiny_set)
    from ftdeploy.runtime import OnnxBackend

    chips = SimulatedChips(resolved.profile.fault_model.at_rate(0.01), 0.01, 0, CHIPS)
    measured = {"rate": 0.01, "chip_accuracies": chip_accuracies(OnnxBackend(export, data.x, data.y), chips)}
    profile = demo_profile_with(tmp_path, signoff={"rates": [0.01], "chips": CHIPS, "seed": 0})
    _assert_torch_chips_equal(measured, ckpt, onnx_path, profile, tiny_set)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnet_b0", "resnet50"])
def test_every_listed_model_exports_from_its_weights_file(name, tiny_set, tmp_path, monkeypatch, capsys):
    """What the slow flow adds for these models beyond the layer types CI trains: their graphs
    fold, export (ONNX Runtime equal to PyTorch) and sign off from a published weights file."""
    weights, _ = _imagenet_weights_file(name, tmp_path)
    model = create_model(f"tv:{name}", num_classes=10)
    load_initial_weights(model, weights)
    ckpt = {"format": "ftdeploy-checkpoint/1", "model": f"tv:{name}", "num_classes": 10, "state_dict": model.state_dict(),
            "classes": [str(c) for c in np.load(embedded_path())["classes"]],
            "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3}, "data": {"image_size": 32}}  # fmt: skip
    torch.save(ckpt, tmp_path / "model.pt")
    profile = demo_profile_with(tmp_path, signoff={"rates": [0.01], "chips": 1})
    code, out, err = run_main(monkeypatch, capsys, "export", tmp_path / "model.pt", "--profile", profile, "--out", tmp_path / "m.onnx")
    assert code == 0, err
    code, out, err = run_main(monkeypatch, capsys, "verify", tmp_path / "m.onnx", "--profile", profile, "--data", tiny_set)
    assert code in (0, 1), err


def test_weights_file_loads_exactly_with_a_fresh_head_and_a_resampled_position_embedding(tmp_path):
    weights, published = _imagenet_weights_file("vit_b_16", tmp_path)
    model = create_model("tv:vit_b_16", num_classes=10, image_size=32)
    head_before = model.heads.head.weight.detach().clone()
    record = load_initial_weights(model, weights)
    state = model.state_dict()
    assert torch.equal(state["conv_proj.weight"], published["conv_proj.weight"])
    assert torch.equal(state["encoder.layers.encoder_layer_3.mlp.0.weight"], published["encoder.layers.encoder_layer_3.mlp.0.weight"])
    assert torch.equal(state["heads.head.weight"], head_before)  # started afresh: 10 classes, not 1,000
    assert state["encoder.pos_embedding"].shape == (1, 1 + 2 * 2, 768)  # class token + a 2x2 patch grid
    assert torch.equal(state["encoder.pos_embedding"][0, 0], published["encoder.pos_embedding"][0, 0])  # class token kept
    assert record["resampled"] == ["encoder.pos_embedding"] and len(record["sha256"]) == 64


def test_a_weights_file_for_another_model_is_one_line_naming_the_file_and_weight(tmp_path):
    weights, _ = _imagenet_weights_file("resnet18", tmp_path)
    with pytest.raises(ModelError, match=r"resnet18-imagenet.pth: layer1.0.conv3.weight: missing; the model has it \(165 missing in all\)"):
        load_initial_weights(create_model("tv:resnet50", num_classes=10), weights)
    bad = tmp_path / "nan.pth"
    torch.save({"fc.weight": torch.full((10, 512), float("nan"))}, bad)
    with pytest.raises(ModelError, match=r"nan.pth: fc.weight: holds NaN"):
        load_initial_weights(create_model("tv:resnet18", num_classes=10), bad)


def test_digital_parameters_are_everything_not_on_cells():
    model = create_model("tv:vit_b_16", num_classes=10, image_size=32)
    on_cells = sum(m.weight.numel() for _, m in deployed_layers(model))
    digital = sum(r["values"] for r in digital_parameters(model))
    assert on_cells + digital == sum(p.numel() for p in model.parameters())
    # attention's fused input projections are layers on cells: what stays digital is norms,
    # biases, the class token and the position embedding
    assert {r["type"] for r in digital_parameters(model)} == {"VisionTransformer", "Encoder", "LayerNorm", "Conv2d", "Linear",
                                                             "NonDynamicallyQuantizableLinear"}  # fmt: skip
    assert digital < 0.002 * on_cells
    projections = [n for n, _ in deployed_layers(model) if n.endswith("self_attention.in_proj")]
    assert len(projections) == 12


def test_attention_with_its_projection_as_a_layer_computes_as_torchs_and_loads_its_weights():
    """The fused query/key/value projection made a Linear layer changes nothing the model
    computes, in training and inference, and a torchvision state dict (``in_proj_weight``) loads."""
    torch.manual_seed(0)
    plain = torch.nn.MultiheadAttention(32, 4, batch_first=True)
    layer = attention_projections_as_layers(copy.deepcopy(plain))
    assert isinstance(layer.in_proj, torch.nn.Linear) and "in_proj_weight" not in dict(layer.named_parameters())
    x = torch.randn(2, 5, 32)
    for train in (True, False):
        plain.train(train), layer.train(train)
        with torch.set_grad_enabled(train):
            assert torch.equal(plain(x, x, x, need_weights=False)[0], layer(x, x, x, need_weights=False)[0])
    state = with_layer_names(plain.state_dict(), torch.nn.Sequential(layer))  # as inside a model: prefixed
    assert state.keys() == plain.state_dict().keys()  # no prefix matched: unchanged
    renamed = with_layer_names({f"0.{k}": v for k, v in plain.state_dict().items()}, torch.nn.Sequential(layer))
    assert set(renamed) == {f"0.{k}" for k in layer.state_dict()}


# --- bad input: one line, exit 2, nothing written -------------------------------------------


def _refused(monkeypatch, capsys, tmp_path, *argv) -> str:
    code, out, err = run_main(monkeypatch, capsys, "train", "--profile", "demo", "--out", tmp_path / "run", *argv)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()
    return err


def test_a_retraining_keeps_its_checkpoints_image_size_and_takes_no_weights_file(monkeypatch, capsys, tmp_path):
    from _quick_model import quick_checkpoint
    from ftdeploy.data import load_data

    parent = quick_checkpoint(load_data(), load_profile("demo").target, tmp_path)
    err = _refused(monkeypatch, capsys, tmp_path, "--from", parent, "--method", "one-shot", "--image-size", "64")
    assert "--image-size: 64; the checkpoint's model was trained at 32" in err
    err = _refused(monkeypatch, capsys, tmp_path, "--from", parent, "--method", "one-shot", "--weights", parent)
    assert "--weights: starts a pretraining from a weights file; a retraining starts from its --from checkpoint" in err


def test_bad_weights_files_and_image_sizes_are_refused_before_any_folder(monkeypatch, capsys, tmp_path, tiny_set):
    err = _refused(monkeypatch, capsys, tmp_path, "--model", "tv:resnet18", "--method", "pretrain", "--data", tiny_set,
                   "--weights", tmp_path / "absent.pth")  # fmt: skip
    assert "absent.pth: weights file not found" in err
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    err = _refused(monkeypatch, capsys, tmp_path, "--model", "tv:resnet18", "--method", "pretrain", "--data", tiny_set,
                   "--weights", tmp_path / "junk.pth")  # fmt: skip
    assert "junk.pth: not a loadable weights file" in err
    err = _refused(monkeypatch, capsys, tmp_path, "--model", "tv:vit_b_16", "--method", "pretrain", "--data", tiny_set,
                   "--image-size", "40")  # fmt: skip
    assert "model 'tv:vit_b_16': torchvision cannot build it for 40x40 images" in err
    err = _refused(monkeypatch, capsys, tmp_path, "--method", "pretrain", "--data", f"cifar10:{tmp_path}", "--image-size", "64")
    assert "its images are 32x32; expected image size 32, found 64" in err
