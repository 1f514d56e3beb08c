"""Bad input through the command line's error boundary (``ftdeploy.cli.main``): one line on
stderr, no traceback, exit 2, nothing written, and the line says how to fix it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ftdeploy.data import load_data
from ftdeploy.export import export_onnx
from ftdeploy.profiles import load_profile
from ftdeploy.training.checkpoint import load_checkpoint

from _quick_model import quick_checkpoint
from conftest import run_main




def _refused(monkeypatch, capsys, *argv) -> str:
    """The one error line (without its ``error: `` prefix) of a command refused as bad input."""
    code, out, err = run_main(monkeypatch, capsys, *argv)
    assert code == 2, (out, err)
    assert "Traceback" not in err and len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err.removeprefix("error: ").rstrip("\n")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run folder holding a (quick, pretrain-format) model.pt."""
    folder = tmp_path_factory.mktemp("run")
    quick_checkpoint(load_data(None), load_profile("demo").target, folder)
    return folder


@pytest.fixture(scope="module")
def exported(run) -> Path:
    out = run / "model.onnx"
    export_onnx(load_checkpoint(run / "model.pt"), load_profile("demo"), out)
    return out


# --- 1. a checkpoint where an export is expected, and the other way round -------------------


def test_verify_of_a_checkpoint_gives_the_export_command(run, tmp_path, monkeypatch, capsys):
    """Told by the file's bytes, not its name: a checkpoint called .onnx is still a checkpoint."""
    monkeypatch.chdir(run)
    line = _refused(monkeypatch, capsys, "verify", "model.pt", "--profile", "demo", "--out", tmp_path / "r")
    assert line == ("model.pt: a training checkpoint, not an ONNX export; export it first: "
                    "ftdeploy export model.pt --profile demo -o model.onnx (then verify model.onnx)")  # fmt: skip
    assert not (tmp_path / "r").exists()
    disguised = tmp_path / "weights.onnx"
    disguised.write_bytes((run / "model.pt").read_bytes())
    line = _refused(monkeypatch, capsys, "verify", disguised, "--profile", "demo")
    assert f"a training checkpoint, not an ONNX export; export it first: ftdeploy export {disguised} --profile demo " \
           f"-o {tmp_path / 'weights-export.onnx'}" in line, "the suggested export must not overwrite its own input"


def test_verify_of_a_resume_file_exports_the_runs_model(tmp_path, monkeypatch, capsys):
    torch.save({"format": "ftdeploy-resume/1", "step": 3}, tmp_path / "resume.pt")
    line = _refused(monkeypatch, capsys, "verify", tmp_path / "resume.pt", "--profile", "demo")
    assert line.startswith(f"{tmp_path / 'resume.pt'}: a run's resume file, not an ONNX export; export it first: "
                           f"ftdeploy export {tmp_path / 'model.pt'} --profile demo -o {tmp_path / 'model.onnx'}")  # fmt: skip


def test_verify_of_another_pytorch_file_says_what_it_takes(tmp_path, monkeypatch, capsys):
    torch.save({"weight": torch.zeros(2)}, tmp_path / "state.pt")
    line = _refused(monkeypatch, capsys, "verify", tmp_path / "state.pt", "--profile", "demo")
    assert line == f"{tmp_path / 'state.pt'}: a PyTorch file, not an ONNX export; verify signs off the ONNX file that " \
                   "`ftdeploy export` writes from an ftdeploy checkpoint"


@pytest.mark.parametrize("command", [
    ["export", "FILE", "--profile", "demo", "-o", "OUT/again.onnx"],
    ["train", "--profile", "demo", "--from", "FILE", "--out", "OUT/run"],
    ["sweep", "--from", "FILE", "--profile", "demo", "--out", "OUT/sweep"],
    ["prune", "FILE", "--profile", "demo", "--method", "magnitude", "--sparsity", "0.5", "--out", "OUT/run"],
])  # fmt: skip
def test_an_onnx_file_given_for_a_checkpoint_is_already_an_export(command, exported, tmp_path, monkeypatch, capsys):
    argv = [str(exported) if a == "FILE" else a.replace("OUT", str(tmp_path)) for a in command]
    line = _refused(monkeypatch, capsys, *argv)
    assert line.startswith(f"{exported}: an ONNX file, not a checkpoint: it is already exported; give the checkpoint"), line
    assert f"ftdeploy verify {exported} --profile" in line
    assert not any(tmp_path.iterdir())


def test_a_pickled_module_is_one_line_and_is_not_unpickled(tmp_path, monkeypatch, capsys):
    """weights_only's refusal runs to several styled lines of advice to allowlist the class."""
    torch.save(torch.nn.Linear(2, 2), tmp_path / "whole.pt")
    line = _refused(monkeypatch, capsys, "export", tmp_path / "whole.pt", "--profile", "demo", "-o", tmp_path / "m.onnx")
    assert line == (f"{tmp_path / 'whole.pt'}: not a loadable checkpoint: torch.load raised UnpicklingError: Unsupported "
                    "global: GLOBAL torch.nn.modules.linear.Linear was not an allowed global by default")  # fmt: skip


def test_a_text_file_given_for_a_checkpoint_is_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "notes.txt").write_text("not a model\n")
    line = _refused(monkeypatch, capsys, "export", tmp_path / "notes.txt", "--profile", "demo", "-o", tmp_path / "m.onnx")
    assert line.startswith(f"{tmp_path / 'notes.txt'}: not a loadable checkpoint: torch.load raised ")


@pytest.mark.parametrize("command, expected", [
    (["export", "DIR", "--profile", "demo", "-o", "OUT/m.onnx"], "DIR: a folder, expected a checkpoint file; did you mean DIR/model.pt?"),
    (["sweep", "--from", "DIR", "--profile", "demo", "--out", "OUT/s"],
     "--from: DIR: a folder, expected a checkpoint file; did you mean DIR/model.pt?"),
    (["verify", "DIR", "--profile", "demo", "--out", "OUT/r"], "DIR: a folder, expected the ONNX file that ftdeploy export wrote"),
])  # fmt: skip
def test_a_folder_given_for_a_file_says_so(command, expected, run, tmp_path, monkeypatch, capsys):
    """Not 'file not found' for a folder that is there: a run folder given for its model.pt."""
    argv = [a.replace("DIR", str(run)).replace("OUT", str(tmp_path)) for a in command]
    assert _refused(monkeypatch, capsys, *argv) == expected.replace("DIR", str(run))
    assert not any(tmp_path.iterdir())


# --- 2. unknown profile and target names ----------------------------------------------------

BUILTIN_PROFILES = "chen2015, chen2015-folded, chen2015-inverted, chen2015-tuned, demo, strict"
BUILTIN_TARGETS = "diff8-folded, mlc2-bitsliced, offset-8, paper-diff8, paper-diff8-inverted"


@pytest.mark.parametrize("command", [
    ["verify", "model.onnx", "--profile", "demoo", "--out", "OUT/r"],
    ["train", "--profile", "demoo", "--method", "pretrain", "--out", "OUT/run"],
    ["demo", "--profile", "demoo", "--out", "OUT/demo"],
    ["profile", "show", "demoo"],
])  # fmt: skip
def test_an_unknown_profile_name_lists_the_built_in_ones_and_the_closest(command, tmp_path, monkeypatch, capsys):
    line = _refused(monkeypatch, capsys, *[a.replace("OUT", str(tmp_path)) for a in command])
    assert line == (f"no built-in profile 'demoo' (did you mean demo?); built-in profiles: {BUILTIN_PROFILES}; "
                    "or give the path of a profile .yaml file")  # fmt: skip
    assert not any(tmp_path.iterdir())


def test_a_name_close_to_none_lists_them_without_a_guess(monkeypatch, capsys):
    assert _refused(monkeypatch, capsys, "profile", "show", "production").startswith(
        f"no built-in profile 'production'; built-in profiles: {BUILTIN_PROFILES}; ")


def test_an_unknown_target_in_a_profile_lists_the_targets(tmp_path, monkeypatch, capsys):
    profile = tmp_path / "mine.yaml"
    profile.write_text("name: mine\nextends: demo\ntarget: paper-dif8\n")
    line = _refused(monkeypatch, capsys, "profile", "validate", profile)
    assert line == (f"{profile}: target: no built-in target 'paper-dif8' (did you mean paper-diff8?); built-in targets: "
                    f"{BUILTIN_TARGETS}; or give the path of a target .yaml file")  # fmt: skip


def test_an_unknown_base_profile_lists_the_profiles(tmp_path, monkeypatch, capsys):
    profile = tmp_path / "mine.yaml"
    profile.write_text("name: mine\nextends: chen2051\n")
    line = _refused(monkeypatch, capsys, "profile", "show", profile)
    assert line.startswith(f"{profile}: extends: no built-in profile 'chen2051' (did you mean chen2015?); built-in profiles: ")


# --- 3. --model package.module:factory --------------------------------------------------------


@pytest.fixture(scope="module")
def bundle():
    return load_data(None)


@pytest.fixture
def embedded(bundle, monkeypatch):
    """load_data as the embedded set, decoded once for the module."""
    import ftdeploy.data

    monkeypatch.setattr(ftdeploy.data, "load_data", lambda spec=None, val_split=None, image_size=32, stream=None: bundle)


@pytest.fixture
def user_package(tmp_path, monkeypatch) -> str:
    """A user's package (unique name: imported modules stay cached) in tmp_path/code, not yet
    on the path: ``build`` a factory, ``WIDTH`` a number, ``needs`` a module whose import fails."""
    name = f"ftd_user_{abs(hash(tmp_path)) % 10**8}"
    package = tmp_path / "code" / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text("import torch.nn as nn\nWIDTH = 8\n\ndef build(num_classes=10):\n"
                                       "    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))\n")  # fmt: skip
    (package / "needs.py").write_text("import ftd_not_installed_dependency\n")
    return name


def _train_model(monkeypatch, capsys, tmp_path, spec) -> str:
    line = _refused(monkeypatch, capsys, "train", "--profile", "demo", "--method", "pretrain", "--epochs", 1, "--model", spec,
                    "--device", "cpu", "--out", tmp_path / "run")  # fmt: skip
    assert not (tmp_path / "run").exists(), "nothing written"
    return line


def test_a_factory_module_not_on_the_path_says_set_pythonpath(user_package, embedded, tmp_path, monkeypatch, capsys):
    line = _train_model(monkeypatch, capsys, tmp_path, f"{user_package}.models:build")
    assert line == (f"model '{user_package}.models:build': cannot import module '{user_package}.models' (No module named "
                    f"'{user_package}'); is its folder on PYTHONPATH? set PYTHONPATH to the folder that holds {user_package}/ "
                    f"(or {user_package}.py): PYTHONPATH=. when run from there")  # fmt: skip


def test_a_factory_module_whose_import_fails_names_what_it_lacks(user_package, embedded, tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    line = _train_model(monkeypatch, capsys, tmp_path, f"{user_package}.needs:build")
    assert line == (f"model '{user_package}.needs:build': module '{user_package}.needs' failed to import: No module named "
                    "'ftd_not_installed_dependency', which it imports; install it, or put its folder on PYTHONPATH")  # fmt: skip
    line = _train_model(monkeypatch, capsys, tmp_path, f"{user_package}.modles:build")
    assert line.startswith(f"model '{user_package}.modles:build': cannot import module '{user_package}.modles' (No module "
                           f"named '{user_package}.modles') (the package imported is {tmp_path / 'code' / user_package}")  # fmt: skip


def test_a_factory_that_is_missing_or_not_callable_says_so(user_package, embedded, tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    module_file = tmp_path / "code" / user_package / "models.py"
    line = _train_model(monkeypatch, capsys, tmp_path, f"{user_package}.models:biuld")
    assert line == (f"model '{user_package}.models:biuld': module '{user_package}.models' ({module_file}) has no attribute "
                    f"'biuld'; did you mean {user_package}.models:build?")  # fmt: skip
    line = _train_model(monkeypatch, capsys, tmp_path, f"{user_package}.models:WIDTH")
    assert line == (f"model '{user_package}.models:WIDTH': {user_package}.models.WIDTH is not a function (type int); expected a "
                    "factory fn(num_classes=...) -> torch.nn.Module")  # fmt: skip


@pytest.mark.parametrize("spec", [":build", "pkg.models:", ".models:build"])
def test_a_malformed_factory_spec_says_the_form(spec, embedded, tmp_path, monkeypatch, capsys):
    assert _train_model(monkeypatch, capsys, tmp_path, spec) == (
        f"model '{spec}': expected package.module:factory (a module's full dotted name, a colon, a function in it)")


# --- 4. train --out onto a folder that holds a run ---------------------------------------------


@pytest.fixture
def small(bundle, monkeypatch):
    """load_data as every 50th training and 20th validation image of the embedded set: a 1-epoch
    run in about a second."""
    import dataclasses

    import ftdeploy.data

    small = dataclasses.replace(bundle, train_x=bundle.train_x[::50], train_y=bundle.train_y[::50],
                                val_x=bundle.val_x[::20], val_y=bundle.val_y[::20])  # fmt: skip
    monkeypatch.setattr(ftdeploy.data, "load_data", lambda spec=None, val_split=None, image_size=32, stream=None: small)


def _snapshot(folder: Path) -> dict:
    """Every file under ``folder``: its bytes and modification time."""
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


PRETRAIN = ("train", "--profile", "demo", "--method", "pretrain", "--device", "cpu")


def _train(monkeypatch, capsys, *argv) -> str:
    code, out, err = run_main(monkeypatch, capsys, *argv)
    assert code == 0, (out, err)
    return out


def test_a_finished_run_is_refused_without_force_or_resume(small, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    _train(monkeypatch, capsys, *PRETRAIN, "--epochs", 1, "--out", run)
    before = _snapshot(run)
    line = _refused(monkeypatch, capsys, *PRETRAIN, "--epochs", 1, "--out", run)
    assert line == (f"--out: {run} holds a finished pretrain run (model.pt, 1 of 1 epochs); --force retrains from scratch, "
                    "replacing it; --resume keeps it as it is; or choose another --out")  # fmt: skip
    line = _refused(monkeypatch, capsys, *PRETRAIN, "--epochs", 2, "--out", run)
    assert line == (f"--out: {run} holds a pretrain run trained otherwise (epochs: 1 there, 2 now); --force replaces it; "
                    "or choose another --out"), "--resume would refuse another run's settings: not offered"  # fmt: skip
    line = _refused(monkeypatch, capsys, *PRETRAIN, "--epochs", 1, "--out", run, "--resume", "--force")
    assert line.startswith("--resume and --force: choose one")
    assert _snapshot(run) == before, "refusing touched nothing"

    _train(monkeypatch, capsys, *PRETRAIN, "--epochs", 1, "--out", run, "--resume")
    assert _snapshot(run) == before, "--resume keeps a finished run as it is"

    _train(monkeypatch, capsys, *PRETRAIN, "--epochs", 2, "--out", run, "--force")
    assert load_checkpoint(run / "model.pt")["epochs_done"] == 2, "--force trained the new run in its place"
    rows = (run / "log.jsonl").read_text().splitlines()
    assert len(rows) == 2 and '"started": "fresh"' in rows[0]


def test_an_interrupted_run_is_refused_and_resume_is_offered(small, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    _train(monkeypatch, capsys, *PRETRAIN, "--epochs", 2, "--out", run)
    ckpt = load_checkpoint(run / "model.pt")
    torch.save(dict(ckpt, epochs_done=1), run / "model.pt")  # as if stopped after epoch 1 (resume.pt lost)
    (run / "resume.pt").unlink()
    before = _snapshot(run)
    line = _refused(monkeypatch, capsys, *PRETRAIN, "--epochs", 2, "--out", run)
    assert line == (f"--out: {run} holds an interrupted pretrain run (model.pt after epoch 1 of 2); --resume continues it; "
                    "--force starts again from scratch, replacing it; or choose another --out")  # fmt: skip
    assert _snapshot(run) == before
    _train(monkeypatch, capsys, *PRETRAIN, "--epochs", 2, "--out", run, "--resume")
    assert load_checkpoint(run / "model.pt")["epochs_done"] == 2


def test_a_run_folder_with_only_resume_pt_or_a_torn_model_pt_is_refused(small, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "resume.pt").write_bytes(b"")
    line = _refused(monkeypatch, capsys, *PRETRAIN, "--epochs", 1, "--out", run)
    assert line.startswith(f"--out: {run} holds an interrupted run (resume.pt, no model.pt yet); --resume continues it")
    (run / "model.pt").write_text("my notes, not a checkpoint\n")
    line = _refused(monkeypatch, capsys, *PRETRAIN, "--epochs", 1, "--out", run)
    assert line.startswith(f"--out: {run} holds a model.pt that is not a readable checkpoint (")
    assert line.endswith("); --force trains there anyway, replacing it; or choose another --out")
    assert (run / "model.pt").read_text() == "my notes, not a checkpoint\n"


def test_a_finished_pretraining_before_the_retraining_is_refused_too(small, tmp_path, monkeypatch, capsys):
    """train without --from pretrains in OUT/pretrain first: that run is not silently redone either."""
    from conftest import demo_profile_with

    profile = demo_profile_with(tmp_path, training=dict(pretrain_epochs=1))
    run = tmp_path / "run"
    _train(monkeypatch, capsys, "train", "--profile", profile, "--method", "pretrain", "--device", "cpu", "--out", run / "pretrain")
    before = _snapshot(run)
    line = _refused(monkeypatch, capsys, "train", "--profile", profile, "--epochs", 1, "--device", "cpu", "--out", run)
    assert line == (f"--out: {run / 'pretrain'} holds a finished pretrain run (model.pt, 1 of 1 epochs); --force retrains "
                    "from scratch, replacing it; --resume keeps it and retrains from it; or choose another --out")  # fmt: skip
    assert _snapshot(run) == before


# --- 5. other obvious bad input: one line each, nothing written -------------------------------


@pytest.mark.parametrize("command, expected", [
    (["verify", "ONNX", "--profile", "demo", "--data", "embedded:cifar", "--out", "OUT/r"],
     "--data: expected embedded, cifar10:DIR, cifar100:DIR, imagefolder:DIR or npz:FILE, found 'embedded:cifar'"),
    (["verify", "ONNX", "--profile", "demo", "--data", "imagefolder:/nonexistent", "--out", "OUT/r"],
     "imagefolder:/nonexistent: folder not found (expected DIR/<class>/<image files>)"),
    (["verify", "ONNX", "--profile", "demo", "--data", "cifar10:CORRUPT", "--out", "OUT/r"],
     "cifar10:CORRUPT: cifar-10-batches-py/ is incomplete or corrupted (its files fail torchvision's checksums); "
     "unpack the cifar-10-batches-py archive there again (no download at run time)"),
    (["verify", "ONNX", "--profile", "demo", "--chips", "0", "--out", "OUT/r"], "--chips: expected at least 1, found 0"),
    (["sweep", "--from", "CKPT", "--profile", "demo", "--chips", "0", "--no-train", "--out", "OUT/s"],
     "--chips: expected at least 1, found 0"),
    (["verify", "OUT/missing.onnx", "--profile", "demo"], "OUT/missing.onnx: file not found"),
    (["export", "OUT/missing.pt", "--profile", "demo", "-o", "OUT/m.onnx"], "OUT/missing.pt: checkpoint not found"),
    (["verify", "ONNX", "--profile", "BADYAML"], "BADYAML:2:1: not valid YAML: "),
    (["verify", "ONNX", "--profile", "BINARY"], "BINARY: cannot read: 'utf-8' codec can't decode byte "),
    (["verify", "ONNX", "--profile", "OUT"], "OUT: a folder, expected a YAML file"),
])  # fmt: skip
def test_other_bad_input_is_one_line(command, expected, run, exported, tmp_path, monkeypatch, capsys):
    (tmp_path / "corrupt" / "cifar-10-batches-py").mkdir(parents=True)
    (tmp_path / "corrupt" / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"truncated")
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    (tmp_path / "binary.yaml").write_bytes(bytes(range(128, 256)))
    names = {"ONNX": exported, "CKPT": run / "model.pt", "CORRUPT": tmp_path / "corrupt", "BADYAML": tmp_path / "bad.yaml",
             "BINARY": tmp_path / "binary.yaml", "OUT": tmp_path}  # fmt: skip

    def fill(text: str) -> str:
        for name, value in names.items():
            text = text.replace(name, str(value))
        return text

    before = sorted(tmp_path.rglob("*"))
    line = _refused(monkeypatch, capsys, *map(fill, command))
    assert line.startswith(fill(expected)), line
    assert sorted(tmp_path.rglob("*")) == before, "nothing written"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is here")
@pytest.mark.parametrize("command", [["train", "--profile", "demo", "--method", "pretrain"], ["demo"]])
def test_cuda_on_a_machine_without_it_is_one_line(command, tmp_path, monkeypatch, capsys):
    line = _refused(monkeypatch, capsys, *command, "--device", "cuda", "--out", tmp_path / "run")
    assert line == "--device: cuda asked for, but this machine has no usable CUDA device; use cpu or auto"
    assert not (tmp_path / "run").exists()
