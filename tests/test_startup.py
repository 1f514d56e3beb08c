"""`ftdeploy --help` and `--version` answer at once: nothing on their path imports torch, ONNX,
ONNX Runtime or numpy (torch alone costs a second or more). Checked on the imports, not on a
clock: each case runs in a fresh interpreter under ``-X importtime`` and its imported modules
are read back from stderr."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import ftdeploy
from ftdeploy.cli import _TRAIN_DEFAULTS

#: Imported by the commands that need them, never on the way to --help or --version.
HEAVY = {"torch", "torchvision", "onnx", "onnxruntime", "onnxscript", "numpy", "PIL", "matplotlib"}


def _imported(*args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run ``python -X importtime -m ftdeploy ARGS`` on this checkout's ftdeploy (the one the
    tests import) and return the result and the top-level names of the modules it imported."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(ftdeploy.__file__).parent.parent),
                                                                      os.environ.get("PYTHONPATH")]))}  # fmt: skip
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "ftdeploy", *args], capture_output=True, text=True,
                          env=env, timeout=120)  # fmt: skip
    names = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in proc.stderr.splitlines() if line.startswith("import time:")}
    return proc, names


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["train", "--help"], ["sweep", "--help"], ["verify", "--help"],
                                  ["prune", "--help"], ["profile", "--help"]], ids=" ".join)  # fmt: skip
def test_help_and_version_import_nothing_heavy(args):
    proc, imported = _imported(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ftdeploy" in imported and "typer" in imported  # the timing lines were read
    assert not imported & HEAVY, sorted(imported & HEAVY)
    assert ("ftdeploy 0.1.0" if args == ["--version"] else "Usage") in proc.stdout


def test_package_import_is_light():
    proc = subprocess.run([sys.executable, "-c", "import sys, ftdeploy; print(sorted(set(sys.modules) & set(sys.argv[1:])))", *HEAVY],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(Path(ftdeploy.__file__).parent.parent)})  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_cli_training_defaults_are_train_configs():
    """The CLI declares these defaults without importing ftdeploy.training.config; they must stay its."""
    from ftdeploy.training.config import TrainConfig

    assert _TRAIN_DEFAULTS == {field: TrainConfig.model_fields[field].default for field in _TRAIN_DEFAULTS}


@pytest.mark.parametrize("args", [["profile", "list"], ["profile", "show", "demo"],
                                  ["profile", "validate", str(Path(ftdeploy.__file__).resolve().parent.parent / "profiles" / "demo.yaml")]],
                         ids=lambda args: " ".join(args[:2]))  # fmt: skip
def test_reading_profiles_imports_no_torch(args):
    """A profile's target is checked against the mapping registry, which imports torch only where
    a tensor is handled: listing, showing and validating profiles never load it."""
    proc, imported = _imported(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ftdeploy" in imported and "torch" not in imported
