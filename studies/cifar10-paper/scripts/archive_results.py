"""Copy the small artefacts of a reproduce_cifar10.py run folder (manifest, step logs, sweep
tables and per-model results with every chip's accuracy, per-epoch training logs and configs)
into the repository, so the study's pages (studies/cifar10-paper/RESULTS*.md) can be re-rendered
and audited from a checkout. From the repository root:

    python studies/cifar10-paper/scripts/archive_results.py runs/c10c studies/cifar10-paper/results/c10c
    python studies/cifar10-paper/scripts/render_results.py studies/cifar10-paper/results/c10c \\
        -o studies/cifar10-paper/RESULTS.md ...   (the study's README: each page's command)

Of the checkpoints, only the fault-free models come along (the pretrained and the pruned model,
and any pretrained again from another seed or for longer, about 1 MB each): run folders are not committed, and
without them a later session could not continue the study (`reproduce_cifar10.py --reuse
studies/cifar10-paper/results/c10 ...`). Retrained checkpoints, resume files and ONNX files stay
behind, and so does the model.pt of a run stopped before its last epoch (train writes one after
every epoch): it is no finished model.

The manifest is merged into the archived one, not copied over it: a study restored from its own
archive (`--out runs/X --reuse studies/cifar10-paper/results/X`) starts a manifest of its own,
holding only what it runs now, and copying that over the archive would drop the commands of every
figure made before.
"""

import argparse
import json
import shutil
from pathlib import Path

import yaml

PATTERNS = ("*.json", "logs/*.log", "*/table.*", "*/results/*.json", "*/runs/*/log.jsonl",
            "*/runs/*/summary.csv", "*/runs/*/config.yaml", "*/log.jsonl", "*/summary.csv", "*/config.yaml",
            "*/runs/*/train.log", "warmup-check/*/table.*", "warmup-check/*/results/*.json",
            "warmup-check/*/runs/*/log.jsonl", "collapse-chips-*/*/table.*", "collapse-chips-*/*/results/*.json")  # fmt: skip
#: The fault-free models, each copied only if its run finished.
MODELS = ("pretrain/model.pt", "pruned70/model.pt", "pretrain-seed-*/model.pt", "pretrain-length-*/model.pt")


def finished(run: Path) -> bool:
    """Whether the run in ``run`` trained every epoch its config.yaml asks for (a run folder
    without the two files predates them and is taken as it is)."""
    config, log = run / "config.yaml", run / "log.jsonl"
    if not (config.is_file() and log.is_file()):
        return True
    lines = log.read_text().splitlines()
    return bool(lines) and json.loads(lines[-1])["epoch"] >= yaml.safe_load(config.read_text())["epochs"]


#: The manifest's lists with one entry per invocation of the study, in order, side by side.
INVOCATION_LISTS = ("_invocations", "_environments")


def merge_manifests(archived: dict, new: dict) -> dict:
    """The manifest ``new`` (a run folder's) merged into ``archived`` (the archive's): every step
    of either, ``new``'s where both have one (it ran them again, or later); the invocations
    ``new`` adds after those the archive has (a run folder that continued the archive repeats
    them, one restored from it begins afresh)."""
    steps = {**archived, **new}
    old_runs, new_runs = _invocations(archived), _invocations(new)
    runs = new_runs if _contains(new_runs, old_runs) else old_runs + new_runs[_overlap(old_runs, new_runs):]
    for i, key in enumerate(INVOCATION_LISTS):
        if key in archived or key in new:
            steps[key] = [run[i] for run in runs]
    return steps


def _invocations(steps: dict) -> list[tuple]:
    """The invocations of a manifest, each (command line, environment)."""
    lists = [steps.get(key, []) for key in INVOCATION_LISTS]
    if len({len(values) for values in lists}) > 1:
        raise SystemExit(f"manifest: {' and '.join(INVOCATION_LISTS)} differ in length ({', '.join(str(len(v)) for v in lists)})")
    return list(zip(*lists))


def _overlap(old: list, new: list) -> int:
    """The length of the longest end of ``old`` that ``new`` begins with."""
    return next((n for n in range(min(len(old), len(new)), 0, -1) if old[-n:] == new[:n]), 0)


def _contains(outer: list, inner: list) -> bool:
    """Whether ``inner`` is one unbroken stretch of ``outer``."""
    return any(outer[i:i + len(inner)] == inner for i in range(len(outer) - len(inner) + 1))


def archive_manifest(src: Path, dst: Path) -> None:
    """Write ``src``'s manifest merged into ``dst``'s (:func:`merge_manifests`)."""
    new = json.loads((src / "manifest.json").read_text())["steps"]
    target = dst / "manifest.json"
    archived = json.loads(target.read_text())["steps"] if target.is_file() else {}
    kept = sorted(set(archived) - set(new))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps({"steps": merge_manifests(archived, new)}, indent=1))
    tmp.replace(target)
    if kept:
        print(f"{target}: kept {len(kept)} steps {src} does not have")


def main(src: str, dst: str) -> None:
    src_p, dst_p = Path(src), Path(dst)
    archive_manifest(src_p, dst_p)
    copied = 1
    models = [path for pattern in MODELS for path in src_p.glob(pattern) if finished(path.parent)]
    files = [p for pattern in PATTERNS for p in src_p.glob(pattern) if p != src_p / "manifest.json"]
    for path in files + models:
        target = dst_p / path.relative_to(src_p)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        copied += 1
    print(f"copied {copied} files to {dst_p}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", help="a reproduce_cifar10.py --out folder")
    ap.add_argument("dst", help="where the artefacts go, e.g. studies/cifar10-paper/results/c10")
    args = ap.parse_args()
    if not (Path(args.src) / "manifest.json").is_file():
        ap.error(f"{args.src}: no manifest.json (expected a reproduce_cifar10.py --out folder)")
    main(args.src, args.dst)
