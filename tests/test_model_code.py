"""A checkpoint never runs code by naming it: a ``package.module:factory`` read from a file is
imported only when the user allows it (--trust-model-code, or naming it as --model)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from ftdeploy.data import load_data
from ftdeploy.errors import ModelError
from ftdeploy.models import create_model
from ftdeploy.profiles import load_profile
from ftdeploy.training.checkpoint import checkpoint_record, model_from_checkpoint, save_atomic
from ftdeploy.training.config import TrainConfig

from conftest import run_main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def planted(tmp_path, monkeypatch) -> tuple[str, Path]:
    """A module on the path that, once imported, writes a file: (its factory spec, that file)."""
    name = f"ftd_planted_{abs(hash(tmp_path)) % 10**8}"
    witness = tmp_path / "imported"
    code = tmp_path / "code"
    code.mkdir()
    (code / f"{name}.py").write_text(f"open({str(witness)!r}, 'w').write('ran')\n"
                                     "import torch.nn as nn\n\ndef build(num_classes=10):\n"
                                     "    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))\n")  # fmt: skip
    monkeypatch.syspath_prepend(str(code))
    return f"{name}:build", witness


def _checkpoint_naming(spec: str, folder: Path, state: dict | None = None) -> Path:
    """A checkpoint in train's format whose model is ``spec`` (weights ``state``, else none)."""
    bundle = load_data(None)
    config = TrainConfig(model=spec, method="pretrain", epochs=1, device="cpu")
    # Some weights (a file's weights are checked before its model name is), none a model would load.
    weights = state or {"1.weight": torch.zeros(10, 3 * 32 * 32), "1.bias": torch.zeros(10)}
    ckpt = checkpoint_record(config, bundle, load_profile("demo").target, weights, "demo", None, None, 50.0, 1)
    path = folder / "model.pt"
    save_atomic(ckpt, path)
    return path


def _refused_line(monkeypatch, capsys, *argv) -> str:
    code, out, err = run_main(monkeypatch, capsys, *argv)
    assert code == 2, (out, err)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err.removeprefix("error: ").rstrip("\n")


@pytest.mark.parametrize("command", [["export", "-o", "{tmp}/m.onnx"], ["equalize", "-o", "{tmp}/eq.pt"],
                                     ["prune", "--method", "magnitude", "--sparsity", "0.5", "-o", "{tmp}/pruned"],
                                     ["train", "--method", "one-shot", "--from", None, "-o", "{tmp}/run"]])  # fmt: skip
def test_a_checkpoint_naming_a_module_is_refused_and_the_module_never_imported(command, planted, tmp_path, monkeypatch, capsys):
    spec, witness = planted
    ckpt = _checkpoint_naming(spec, tmp_path)
    argv = [str(ckpt) if a is None else a.format(tmp=tmp_path) for a in command]
    if command[0] != "train":
        argv.insert(1, str(ckpt))
    profile = "chen2015" if command[0] == "equalize" else "demo"  # equalize needs a periphery-BN target
    line = _refused_line(monkeypatch, capsys, *argv, "--profile", profile)
    assert line.startswith(f"{ckpt}: model factory {spec!r} would import and run code"), line
    assert "--trust-model-code" in line
    assert not witness.exists() and spec.partition(":")[0] not in sys.modules


def test_the_python_api_refuses_it_too_unless_allowed(planted, tmp_path):
    spec, witness = planted
    ckpt = {"model": spec, "num_classes": 10, "state_dict": {}}
    with pytest.raises(ModelError, match="would import and run code"):
        model_from_checkpoint(ckpt)
    assert not witness.exists() and spec.partition(":")[0] not in sys.modules


def test_registry_and_torchvision_names_need_no_permission():
    ckpt = {"model": "democnn", "num_classes": 10, "state_dict": create_model("democnn").state_dict()}
    assert model_from_checkpoint(ckpt) is not None


def test_trust_model_code_exports_a_legitimate_factory(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT))
    spec = "examples.my_model:build"
    state = create_model(spec, num_classes=10).state_dict()
    ckpt = _checkpoint_naming(spec, tmp_path, state)
    out = tmp_path / "mine.onnx"
    refused = _refused_line(monkeypatch, capsys, "export", ckpt, "--profile", "demo", "-o", out)
    assert "--trust-model-code" in refused and not out.exists()
    code, stdout, err = run_main(monkeypatch, capsys, "export", ckpt, "--profile", "demo", "-o", out, "--trust-model-code")
    assert code == 0, err
    assert out.is_file() and f"wrote {out}" in stdout


def _profile_naming(spec: str, folder: Path) -> Path:
    path = folder / "mine.yaml"
    path.write_text(f"name: mine\nextends: demo\ntraining:\n  model: {spec}\n")
    return path


@pytest.mark.parametrize("command", [["train", "--method", "pretrain", "-o", "{tmp}/run"], ["demo", "-o", "{tmp}/demo"]])
def test_a_profile_naming_a_module_is_refused_and_the_module_never_imported(command, planted, tmp_path, monkeypatch, capsys):
    spec, witness = planted
    profile = _profile_naming(spec, tmp_path)
    line = _refused_line(monkeypatch, capsys, *[a.format(tmp=tmp_path) for a in command], "--profile", profile)
    assert line.startswith(f"{profile}: training.model: model factory {spec!r} would import and run code"), line
    assert not witness.exists() and spec.partition(":")[0] not in sys.modules
    assert not (tmp_path / "run").exists() and not (tmp_path / "demo").exists()


def test_a_config_file_naming_a_module_is_refused(planted, tmp_path, monkeypatch, capsys):
    spec, witness = planted
    config = tmp_path / "config.yaml"
    config.write_text(f"model: {spec}\nmethod: pretrain\n")
    line = _refused_line(monkeypatch, capsys, "train", "--profile", "demo", "--config", config, "-o", tmp_path / "run")
    assert line.startswith(f"{config}: model: model factory {spec!r}"), line
    assert not witness.exists()


@pytest.mark.parametrize("allow", [["--trust-model-code"], ["--model", None]])
def test_a_factory_typed_as_model_or_trusted_gets_to_training(allow, planted, tmp_path, monkeypatch, capsys):
    """Naming the factory on the command line, or trusting the profile, is the user's choice: the
    run gets past the check to training (replaced here by a stand-in that records its model)."""
    import ftdeploy.training.loop as loop

    spec, _ = planted
    trained = []
    monkeypatch.setattr(loop, "train", lambda cfg, *a, **k: trained.append(cfg.model) or {"acc_pretrain": 50.0, "acc_retrain": 50.0})
    profile = _profile_naming(spec, tmp_path)
    argv = [spec if a is None else a for a in allow]
    code, out, err = run_main(monkeypatch, capsys, "train", "--profile", profile, "--method", "pretrain", *argv, "-o", tmp_path / "run")
    assert code == 0, err
    assert trained == [spec]
