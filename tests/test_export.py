"""ftdeploy export: the ONNX file holds each weight as cell levels, decodes them with standard
operators to exactly codes × scale, matches PyTorch, carries its metadata, and is written
atomically. One democnn is trained briefly per module (about a second on 2 cores)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from typer.testing import CliRunner

from ftdeploy.chip import DeployedNetwork
from ftdeploy.cli import app, main
from ftdeploy.data import load_data, normalize
from ftdeploy.errors import ExportError
from ftdeploy.export import FORMAT, HASH_KEY, LOGITS_ATOL, LOGITS_RTOL, content_hash, export_onnx, read_metadata
from ftdeploy.mapping import make_mapping
from ftdeploy.profiles import BatchNormPlacement, builtin_targets, load_profile
from ftdeploy.training.checkpoint import load_checkpoint, model_from_checkpoint

from _quick_model import quick_checkpoint

#: Profiles per shipped target: built-ins where one exists, a tmp profile for offset-8.
TARGET_PROFILES = {"paper-diff8": "chen2015", "paper-diff8-inverted": "chen2015-inverted", "diff8-folded": "chen2015-folded",
                   "mlc2-bitsliced": "strict", "offset-8": None}  # fmt: skip

OFFSET_PROFILE = """\
name: offset-test
target: offset-8
faults:
  - kind: stuck-at
    p_sa: 0.01
signoff:
  rates: [0.01]
  chips: 2
"""


@pytest.fixture(scope="module")
def bundle():
    return load_data(None)


@pytest.fixture(scope="module")
def ckpt_path(tmp_path_factory, bundle) -> Path:
    """A briefly trained democnn: weights and BN statistics of a real (if weak) model."""
    return quick_checkpoint(bundle, load_profile("demo").target, tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def ckpt(ckpt_path) -> dict:
    return load_checkpoint(ckpt_path)


def _resolved(target_name: str, folder: Path):
    name = TARGET_PROFILES[target_name]
    if name is None:
        path = folder / "offset-test.yaml"
        path.write_text(OFFSET_PROFILE)
        return load_profile(path)
    return load_profile(name)


@pytest.fixture(scope="module", params=sorted(TARGET_PROFILES))
def exported(request, ckpt, tmp_path_factory):
    """(resolved profile, ONNX path, export summary, DeployedNetwork) for each shipped target."""
    folder = tmp_path_factory.mktemp(request.param)
    resolved = _resolved(request.param, folder)
    out = folder / "model.onnx"
    summary = export_onnx(ckpt, resolved, out)
    return resolved, out, summary, DeployedNetwork(model_from_checkpoint(ckpt), resolved.target)


def _val_batch(bundle, ckpt, n: int = 64) -> torch.Tensor:
    norm = ckpt["normalization"]
    return normalize(bundle.val_x[::7][:n], norm["mean"], norm["std"])


# --- structure and decoding ---------------------------------------------------------------------


def test_every_shipped_target_is_exported_here():
    assert sorted(TARGET_PROFILES) == sorted(p.stem for p in builtin_targets())


def test_file_passes_full_onnx_check_and_uses_standard_ops_only(exported):
    _, out, _, _ = exported
    model = onnx.load(out)
    onnx.checker.check_model(model, full_check=True)
    assert {op.domain for op in model.opset_import} <= {"", "ai.onnx"}, "custom domains would break stock runtimes"
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param, "batch dimension must be dynamic"


def test_batchnorm_is_fused_or_kept_as_the_target_says_and_the_graph_is_clean(exported, ckpt):
    """Folding targets: BN is in the cells, no BatchNormalization node. Periphery targets: one
    node per BN layer, and constant folding still removes the tracer's shape plumbing."""
    resolved, out, _, _ = exported
    ops = [n.op_type for n in onnx.load(out).graph.node]
    bn_layers = sum(1 for k in ckpt["state_dict"] if k.endswith("running_var"))
    kept = bn_layers if resolved.target.batchnorm == BatchNormPlacement.periphery else 0
    assert ops.count("BatchNormalization") == kept
    assert not {"Expand", "CastLike", "Cast"} & set(ops), sorted(set(ops))


def test_cells_replace_every_float_weight(exported):
    resolved, out, summary, net = exported
    model = onnx.load(out)
    inits = {i.name: i for i in model.graph.initializer}
    mapping = make_mapping(resolved.target)
    assert [rec["name"] for rec in summary["layers"]] == [layer.name for layer in net.layers]
    for rec, layer in zip(summary["layers"], net.layers):
        assert rec["onnx_weight"] not in inits, f"{layer.name}: float weight still stored"
        assert rec["cells"] == [f"{layer.name}.cells.{c}" for c in mapping.cell_names]
        for name in rec["cells"]:
            assert inits[name].data_type == onnx.TensorProto.UINT8
            assert list(inits[name].dims) == rec["weight_shape"]


def test_cells_in_file_decode_exactly_to_codes(exported):
    """The levels stored per cell read back (mapping.decode) to the deployed integer codes."""
    resolved, out, summary, net = exported
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(out).graph.initializer}
    mapping = make_mapping(resolved.target)
    for rec, layer in zip(summary["layers"], net.layers):
        levels = np.stack([inits[name] for name in rec["cells"]])
        np.testing.assert_array_equal(levels, layer.levels.numpy())
        np.testing.assert_array_equal(mapping.decode(levels), layer.codes.numpy().astype(np.float32))


def test_graph_decodes_weights_bit_identical_to_codes_times_scale(exported):
    """Run the file's own decoder (DequantizeLinear/Add/Sub/Mul) in ONNX Runtime and compare
    the weights it feeds the convolutions with what PyTorch computes with: equal, not close."""
    _, out, summary, net = exported
    model = onnx.load(out)
    for rec in summary["layers"]:
        model.graph.output.append(onnx.helper.make_tensor_value_info(rec["onnx_weight"], onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    decoded = session.run([rec["onnx_weight"] for rec in summary["layers"]], {"input": np.zeros((1, 3, 32, 32), np.float32)})
    for weight, layer in zip(decoded, net.layers):
        expected = (layer.codes.to(torch.float32) * layer.scale).numpy()
        np.testing.assert_array_equal(weight, expected, err_msg=layer.name)


def test_per_channel_target_stores_one_scale_per_output_channel(exported):
    resolved, out, summary, _ = exported
    inits = {i.name: i for i in onnx.load(out).graph.initializer}
    for rec in summary["layers"]:
        dims = list(inits[rec["scale"]].dims)
        if resolved.target.scale.value == "channel":
            assert dims == [rec["weight_shape"][0]] + [1] * (len(rec["weight_shape"]) - 1)
        else:
            assert dims == []


# --- parity -------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_onnx_runtime_logits_match_pytorch(exported, bundle, ckpt, batch):
    """Named tolerance: export.LOGITS_RTOL/ATOL (weights bit-identical, only float32
    accumulation order differs between ONNX Runtime's and PyTorch's convolutions)."""
    _, out, _, net = exported
    x = _val_batch(bundle, ckpt, batch)
    with torch.no_grad():
        expected = net.model(x).numpy()
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(["logits"], {"input": x.numpy()})[0]
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=LOGITS_ATOL + LOGITS_RTOL * np.abs(expected).max())
    np.testing.assert_array_equal(got.argmax(1), expected.argmax(1))


# --- metadata -----------------------------------------------------------------------------------


def test_metadata_records_everything_verification_needs(exported, ckpt):
    resolved, out, summary, net = exported
    meta = read_metadata(onnx.load(out))
    assert meta["ftdeploy.format"] == FORMAT
    assert meta["ftdeploy.model"] == "democnn"
    assert meta["ftdeploy.method"] == "pretrain"
    assert json.loads(meta["ftdeploy.target"]) == resolved.target.model_dump(mode="json")
    assert json.loads(meta["ftdeploy.profile"]) == resolved.to_dict()
    assert json.loads(meta["ftdeploy.classes"]) == ckpt["classes"]
    assert json.loads(meta["ftdeploy.data"]) == ckpt["data"]
    assert json.loads(meta["ftdeploy.normalization"]) == {"mean": list(ckpt["normalization"]["mean"]),
                                                          "std": list(ckpt["normalization"]["std"])}  # fmt: skip
    assert json.loads(meta["ftdeploy.acc_pretrain"]) == pytest.approx(ckpt["acc_pretrain"])
    assert json.loads(meta["ftdeploy.acc_retrain"]) is None
    mapping = json.loads(meta["ftdeploy.mapping"])
    assert mapping["coefficients"] == list(net.mapping.coefficients) and mapping["offset"] == net.mapping.offset
    layers = json.loads(meta["ftdeploy.layers"])
    assert [tuple(rec["cell_shape"]) for rec in layers] == net.cell_shapes
    assert all(rec["tiles"]["tiles"] >= 1 for rec in layers)


def test_content_hash_covers_the_model_without_itself(exported):
    _, out, summary, _ = exported
    model = onnx.load(out)
    assert read_metadata(model)[HASH_KEY] == content_hash(model) == summary["content_sha256"]
    model.graph.initializer[0].raw_data = bytes(len(model.graph.initializer[0].raw_data))
    assert content_hash(model) != summary["content_sha256"]


# --- bad input, atomic writes, CLI --------------------------------------------------------------


def test_bad_checkpoint_raises_one_line_and_writes_nothing(ckpt, tmp_path):
    broken = {k: v for k, v in ckpt.items() if k != "normalization"}
    out = tmp_path / "out" / "model.onnx"
    with pytest.raises(ExportError, match="missing normalization") as info:
        export_onnx(broken, load_profile("demo"), out)
    assert "\n" not in str(info.value)
    assert not out.exists()


def test_failure_after_tracing_leaves_no_file(ckpt, tmp_path, monkeypatch):
    import ftdeploy.export as export_module

    def fail(*_):
        raise ExportError("parity broke")

    monkeypatch.setattr(export_module, "_check_parity", fail)
    out = tmp_path / "model.onnx"
    out.write_bytes(b"previous file")
    with pytest.raises(ExportError):
        export_onnx(ckpt, load_profile("demo"), out)
    assert out.read_bytes() == b"previous file", "a failed export must not touch the existing file"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"], "no temporary file left behind"


def test_output_path_that_is_a_folder_is_refused(ckpt, tmp_path):
    with pytest.raises(ExportError, match="is a folder"):
        export_onnx(ckpt, load_profile("demo"), tmp_path)


def test_cli_export_writes_the_same_bytes_as_the_api(ckpt_path, ckpt, tmp_path):
    """Export is deterministic (same checkpoint and profile, same file), CLI or API."""
    api, cli = tmp_path / "api.onnx", tmp_path / "cli.onnx"
    export_onnx(ckpt, load_profile("demo"), api, check_parity=False)
    result = CliRunner().invoke(app, ["export", str(ckpt_path), "--profile", "demo", "-o", str(cli)])
    assert result.exit_code == 0, result.output
    assert "crossbar layers" in result.output
    assert cli.read_bytes() == api.read_bytes()


def test_cli_export_missing_checkpoint_exits_2(tmp_path, monkeypatch, capsys):
    out = tmp_path / "x.onnx"
    monkeypatch.setattr(sys, "argv", ["ftdeploy", "export", str(tmp_path / "nope.pt"), "--profile", "demo", "-o", str(out)])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert not out.exists()


def test_export_prune_and_equalize_import_checkpoint_io_not_the_training_loop():
    """Reading and writing checkpoints is ftdeploy.training.checkpoint's; only a training needs
    the loop (prune's masked fine-tuning imports it when it runs)."""
    code = ("import sys, ftdeploy.export, ftdeploy.prune, ftdeploy.equalize; "
            "print(sorted(m for m in sys.modules if m.startswith('ftdeploy.training.')))")  # fmt: skip
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "['ftdeploy.training.checkpoint', 'ftdeploy.training.config']"
