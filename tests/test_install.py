"""ftdeploy as users install it: an sdist of this checkout, a wheel built from that sdist (as
``python -m build`` does), the wheel installed with pip into a fresh virtual environment, and the
installed ``ftdeploy`` run from a folder outside the checkout, so that nothing is found in the
checkout by accident.

Built offline and without build isolation: the setuptools this interpreter has builds it. The
environment borrows this interpreter's installed packages (torch, ONNX Runtime...) through a
``.pth`` file that lists their site-packages folders, instead of ``--system-site-packages``:
that would also run the ``.pth`` files there, and an editable install of ftdeploy there (a
developer's, or CI's ``pip install -e .``) puts a finder on ``sys.meta_path`` that serves any
ftdeploy module the wheel lacks from the checkout, hiding exactly what this test looks for. A
``.pth`` line that is a folder only extends ``sys.path``; the ``.pth`` files in it do not run.

About 35 s on two busy cores, most of it the quick model's training; the full demo in the
installed package is the one slow test."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from _quick_model import quick_checkpoint

from ftdeploy.data import load_data
from ftdeploy.profiles import load_target

REPO = Path(__file__).resolve().parent.parent
BUILTIN = {kind: sorted(p.name for p in (REPO / kind).glob("*.yaml")) for kind in ("targets", "profiles")}

#: A deployment of a user's own next to the model, outside the checkout: it extends a built-in
#: profile and takes another built-in target, both by name; sign-off on 2 chips, 200 images.
MINE = """\
name: wheel-check
extends: demo
target: offset-8
signoff:
  rates: [0.01]
  chips: 2
  max_images: 200
  acceptance:
    - rate: 0.01
      max_acc_drop_pct: 100.0
"""


def _env() -> dict[str, str]:
    """This environment without what would point Python at the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    return {**env, "COLUMNS": "200"}


def _run(cmd: list, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


#: What the build reads. Copied, not built in place: a build leaves ftdeploy.egg-info (its
#: SOURCES.txt) and build/ in the tree, and the next build takes files from them, so a YAML file
#: dropped from the package data would still reach the wheel after one good build.
SOURCES = ("pyproject.toml", "README.md", "ftdeploy", "targets", "profiles")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src, dist = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, src / name)
    # The sdist first, as python -m build does: a file that reaches the wheel only when built in
    # the checkout would be missing from a wheel built from PyPI's sdist.
    _run([sys.executable, "-c", "import sys; from setuptools import build_meta; build_meta.build_sdist(sys.argv[1])", dist], src)
    (sdist,) = dist.glob("ftdeploy-*.tar.gz")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", dist, sdist], dist)
    (whl,) = dist.glob("ftdeploy-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", "--without-pip", root], root)
    python = root / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    paths = _run([python, "-c", "import sysconfig; p = sysconfig.get_paths(); print(p['purelib']); print(p['scripts'])"], root)
    purelib, scripts = map(Path, paths.stdout.splitlines())
    host = [*site.getsitepackages(), *([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])]
    (purelib / "_host_site_packages.pth").write_text("".join(f"{p}\n" for p in host))
    # --ignore-installed: pip in the environment sees the host's ftdeploy metadata through the
    # .pth and must neither take it for this install nor try to uninstall it.
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", wheel], root)
    work = tmp_path_factory.mktemp("work")
    assert REPO not in work.parents and REPO != work
    return {"python": python, "purelib": purelib, "ftdeploy": scripts / "ftdeploy", "work": work}


def test_wheel_carries_every_module_the_builtin_yaml_and_the_embedded_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for kind, files in BUILTIN.items():
        assert files and {f"ftdeploy/builtin/{kind}/{f}" for f in files} <= names, kind
    assert "ftdeploy/data/cifar10-demo.npz" in names
    # [tool.setuptools] packages lists the packages: a new subpackage must be added there.
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "ftdeploy").rglob("*.py") if "__pycache__" not in p.parts}
    assert modules - names == set(), "not in the wheel; add their packages to [tool.setuptools] packages in pyproject.toml"


def test_the_installed_package_is_the_wheels(venv):
    code = "import sys, ftdeploy, ftdeploy.profiles as p; print(ftdeploy.__file__, p.PROFILES_DIR, p.TARGETS_DIR, sep='\\n')"
    found = _run([venv["python"], "-c", code], venv["work"]).stdout.splitlines()
    assert found == [str(venv["purelib"] / "ftdeploy" / "__init__.py"), str(venv["purelib"] / "ftdeploy/builtin/profiles"),
                     str(venv["purelib"] / "ftdeploy/builtin/targets")]  # fmt: skip
    assert _run([venv["ftdeploy"], "--version"], venv["work"]).stdout == "ftdeploy 0.1.0\n"


def test_profile_list_and_show(venv):
    listed = _run([venv["ftdeploy"], "profile", "list"], venv["work"]).stdout
    for kind, files in BUILTIN.items():
        for f in files:
            assert f"  {Path(f).stem} " in listed, (kind, f, listed)
    assert "extends chen2015" in listed  # a built-in extending another by name
    shown = yaml.safe_load(_run([venv["ftdeploy"], "profile", "show", "demo"], venv["work"]).stdout)
    assert shown["profile"]["name"] == "demo" and shown["target"]["name"] == shown["profile"]["target"] == "paper-diff8"


def test_export_and_verify_with_a_profile_of_ones_own(venv):
    """A profile beside the model extends a built-in and names a built-in target; a quick model is
    exported and signed off with the installed command on the installed embedded data."""
    work, ftdeploy = venv["work"], venv["ftdeploy"]
    (work / "mine.yaml").write_text(MINE)
    assert "ok mine.yaml: profile wheel-check, target offset-8" in _run([ftdeploy, "profile", "validate", "mine.yaml"], work).stdout
    quick_checkpoint(load_data(None), load_target("offset-8")[0], work)
    exported = _run([ftdeploy, "export", "model.pt", "--profile", "mine.yaml", "-o", "model.onnx"], work)
    assert exported.stdout.startswith("wrote model.onnx: ") and "warning" not in exported.stderr, exported.stderr
    # A pretrained model is its own reference: Acc_pretrain measured on the 200 images signed off.
    verified = _run([ftdeploy, "verify", "model.onnx", "--profile", "mine.yaml", "--reference", "model.onnx", "--out", "report"], work)
    assert "PASSED" in verified.stdout, verified.stdout
    report = yaml.safe_load((work / "report" / "report.json").read_text())
    assert report["signoff"]["chips"] == 2 and report["data"]["images"] == 200, report["signoff"]


def test_demo_on_a_short_profile(venv):
    """The demo command from the wheel, its whole path (train, export, sign-off of every model, the
    table) on a profile of one's own that shortens the built-in demo's training and sign-off."""
    work, out = venv["work"], venv["work"] / "short-out"
    (work / "short-demo.yaml").write_text("name: short-demo\nextends: demo\ntraining:\n  pretrain_epochs: 1\n  epochs: 1\n"
                                          "signoff:\n  chips: 2\n  max_images: 200\n")  # fmt: skip
    proc = _run([venv["ftdeploy"], "demo", "--profile", "short-demo.yaml", "--device", "cpu", "--out", "short-out"], work,
                timeout=1200)  # fmt: skip
    assert "reports in short-out/reports" in proc.stdout, proc.stdout
    for name in ("baseline", "equalized", "one-shot", "progressive"):  # the demo's target keeps BN in the periphery
        assert (out / f"{name}.onnx").is_file()
        report = yaml.safe_load((out / "reports" / name / "report.json").read_text())
        assert report["signoff"]["chips"] == 2 and report["profile"]["name"] == "short-demo"
    lines = proc.stdout.splitlines()
    for name in ("baseline", "progressive"):  # each model's row ends with the verdict its report.json holds
        verdict = yaml.safe_load((out / "reports" / name / "report.json").read_text())["verdict"]["passed"]
        row = next(line for line in lines if line.split() and line.split()[0] == name)
        assert row.split()[-1] == ("PASS" if verdict else "FAIL"), row
    assert sum("the baseline under faults" in line for line in lines) == 2, "one line per retrained model"
    assert any(line.startswith("equalized: the baseline with its channel ranges equalised") for line in lines)


# About 90 s on two idle cores, over 15 minutes on a busy shared box (even a 1-epoch demo took 76 s
# there). The short demo above covers the same path from the wheel.
@pytest.mark.slow
def test_demo(venv):
    """The full demo, as a user runs it first."""
    proc = _run([venv["ftdeploy"], "demo", "--device", "cpu", "--out", "demo-out"], venv["work"], timeout=3600)
    assert "reports in demo-out/reports" in proc.stdout, proc.stdout
