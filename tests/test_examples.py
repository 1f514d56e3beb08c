"""The examples stay runnable: their profile validates, the user-model factory plugs in, and the
Python API example measures a checkpoint."""

import json
import subprocess
import sys
from pathlib import Path

import torch

from ftdeploy.data import load_data
from ftdeploy.models import create_model, deployed_layers
from ftdeploy.profiles import load_profile

from _quick_model import quick_checkpoint

ROOT = Path(__file__).resolve().parent.parent


def test_example_profile_resolves_its_relative_target():
    r = load_profile(ROOT / "examples" / "profiles" / "my-chip.yaml")
    assert r.target.name == "offset-8"
    assert r.profile.fault_model.stuck.pair == (0.0005, 0.002)
    assert (r.profile.training.rate_warmup_epochs, r.profile.training.clean_steps) == (1, 0.25)


def test_user_model_factory_by_module_path(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    sys.modules.pop("examples.my_model", None)
    model = create_model("examples.my_model:build", num_classes=10)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert [type(m).__name__ for _, m in deployed_layers(model)] == ["Conv2d", "Conv2d", "Linear"]


def test_the_python_api_example_measures_a_checkpoint_on_the_profiles_rates(tmp_path):
    demo = load_profile("demo")
    ckpt = quick_checkpoint(load_data(), demo.target, tmp_path)
    run = subprocess.run([sys.executable, str(ROOT / "examples" / "02_python_api.py"), str(ckpt)],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    layers = len(deployed_layers(create_model("democnn", num_classes=10)))
    assert lines[0].startswith(f"{layers} crossbar layers, mapping: "), lines
    assert lines[1].startswith("fault-free: ") and lines[1].endswith(" %"), lines
    rates = [line.split(":")[0] for line in lines[2:]]
    assert rates == [f"P_sa={rate:g}" for rate in demo.profile.signoff.rates], lines
    assert all("over 5 chips" in line for line in lines[2:]), lines


def test_the_readmes_faults_example_is_a_valid_faults_section():
    import re

    import yaml
    from pydantic import TypeAdapter

    from ftdeploy.nonideality import Drift, FaultModel
    from ftdeploy.profiles import FaultList

    block = re.search(r"```yaml\n(faults:.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    faults = FaultModel(TypeAdapter(FaultList).validate_python(yaml.safe_load(block)["faults"]))
    assert [k.kind for k in faults.kinds] == ["programming-variation", "drift", "stuck-at"]
    assert faults.find(Drift).at == 31557600.0 and faults.at_rate(0.01).stuck.pair == (0.002, 0.008)


def _production_line() -> tuple[str, list[str]]:
    """The README's production-line section: its profile and its commands, as written."""
    import re

    text = (ROOT / "README.md").read_text()
    section = text[text.index("## On a production line"):text.index("## Commands")]
    profile = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    commands = [line for line in re.search(r"```bash\n(.*?)```", section, re.S).group(1).splitlines() if line.startswith("ftdeploy ")]
    return profile, commands


def test_the_readme_production_line_runs_as_written(tmp_path, monkeypatch):
    """Every command of the README's production line, run as written on its profile, shortened
    only in training (1 epoch each) and images (200), which the profile's lines do not set: the
    release is signed off with yield and percentile limits and its four report files, then a
    simulated lot of fault maps is signed off chip by chip."""
    import shlex

    import yaml
    from typer.testing import CliRunner

    from ftdeploy.cli import app

    text, commands = _production_line()
    profile = yaml.safe_load(text)
    assert {"max_images", "batch_chips"}.isdisjoint(profile["signoff"]) and "training" not in profile
    profile["training"] = {"pretrain_epochs": 1, "epochs": 1}
    profile["signoff"]["max_images"] = 200
    (tmp_path / "strict-demo.yaml").write_text(yaml.safe_dump(profile))
    monkeypatch.chdir(tmp_path)
    assert [shlex.split(c)[1] for c in commands] == ["train", "export", "export", "verify", "faultmap", "verify", "verify", "program"]
    for command in commands:
        result = CliRunner().invoke(app, shlex.split(command)[1:])
        assert result.exit_code in ((0, 1) if command.startswith("ftdeploy verify") else (0,)), (command, result.output)
    release = json.loads((tmp_path / "reports/release/report.json").read_text())
    assert {c["name"] for c in release["verdict"]["checks"]} >= {"chance_margin_pct", "max_acc_drop_pct", "min_yield_pct",
                                                                 "min_percentile_acc_pct"}  # fmt: skip
    assert release["figures"]["acc_pretrain_same_images"] is True and "pretrain.onnx" in release["figures"]["acc_pretrain_source"]
    assert release["figures"]["rates"][2]["stuck_off"] == 0.004, "a measured pair is simulated as given"
    assert sorted(p.name for p in (tmp_path / "reports/release").iterdir()) == ["report.html", "report.json", "report.md", "report.xml"]
    lot = json.loads((tmp_path / "reports/lot7/report.json").read_text())
    assert len(lot["lot"]["chips"]) == 20 == len(list((tmp_path / "lot7").iterdir()))
    programmed = json.loads((tmp_path / "reports/lot7-programmed/report.json").read_text())
    assert programmed["lot"]["programmed"] is True and programmed["lot"]["yield_unprogrammed"]["chips"] == 20
    assert [c["accuracy_unprogrammed"] for c in programmed["lot"]["chips"]] == [c["accuracy"] for c in lot["lot"]["chips"]], \
        "before programming, each chip is the lot's own"
    import onnx

    from ftdeploy.files import sha256_file

    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "chip-0000.onnx")).metadata_props}
    programmed_for = json.loads(meta["ftdeploy.programmed_for"])
    assert programmed_for["fault_map_sha256"] == sha256_file(tmp_path / "lot7/chip-0000.csv")
