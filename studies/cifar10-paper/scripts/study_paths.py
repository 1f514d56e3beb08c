"""Where the study's files are, found from this file rather than from the working directory, so
the scripts' defaults hold wherever they are started from.

The study's commands are recorded and documented as run from the repository root (the archived
manifests' `--out runs/...` and `--data npz:../shared/data/...` are relative to it); a default
is therefore written relative to the working directory when that is the root or below it (from
the root: exactly the string the recorded commands have), and absolute otherwise."""

from __future__ import annotations

import os
from pathlib import Path

#: studies/cifar10-paper/scripts, this folder.
SCRIPTS = Path(__file__).resolve().parent
#: studies/cifar10-paper: the study's pages, its archive (results/) and its tests.
STUDY = SCRIPTS.parent
#: The repository root: two levels above the study (studies/cifar10-paper).
REPO_ROOT = STUDY.parents[1]
#: The archived artefacts the pages are rendered from (results/c10, results/c10c, results/c10p).
RESULTS = STUDY / "results"
#: Where a study's run folders go by default (ignored by git: /runs/ in the root's .gitignore).
RUNS = REPO_ROOT / "runs"
#: The packed CIFAR-10 training split the study trains and measures on: ../shared/data/ beside
#: the repository, not in it (the official test split is not used).
SHARED_DATA = REPO_ROOT.parent / "shared" / "data" / "cifar10-train-jpeg.npz"


def shown(path: Path) -> str:
    """``path`` as a default is written on a command line: relative to the working directory
    when that is the repository root or below it, else absolute."""
    cwd = Path.cwd().resolve()
    if cwd == REPO_ROOT or REPO_ROOT in cwd.parents:
        return os.path.relpath(path, cwd)
    return str(path)


def repo_relative(path: Path) -> str:
    """``path`` as the study's pages and docstrings name it: relative to the repository root."""
    return Path(path).resolve().relative_to(REPO_ROOT).as_posix()


def default_data() -> str:
    """The --data default: the shared packed split, as an `npz:` data spec."""
    return f"npz:{shown(SHARED_DATA)}"
