"""Copy the small artefacts of a reproduce_cifar10.py run folder (manifest, step logs, sweep
tables and per-model results with every chip's accuracy, per-epoch training logs and configs)
into the repository, so docs/RESULTS.md can be re-rendered and audited from a checkout:

    python scripts/archive_results.py runs/c10c docs/results/c10c
    python scripts/render_results.py docs/results/c10c -o docs/RESULTS.md ...   (README: each page's command)

Of the checkpoints, only the fault-free models come along (the pretrained and the pruned model,
and any pretrained again from another seed, about 1 MB each): run folders are not committed, and
without them a later session could not continue the study (`reproduce_cifar10.py --reuse
docs/results/c10 ...`). Retrained checkpoints, resume files and ONNX files stay behind, and so does
the model.pt of a run stopped before its last epoch (train writes one after every epoch): it is
no finished model.
"""

import argparse
import json
import shutil
from pathlib import Path

import yaml

PATTERNS = ("manifest.json", "*.json", "logs/*.log", "*/table.*", "*/results/*.json", "*/runs/*/log.jsonl",
            "*/runs/*/summary.csv", "*/runs/*/config.yaml", "*/log.jsonl", "*/summary.csv", "*/config.yaml",
            "*/runs/*/train.log", "warmup-check/*/table.*", "warmup-check/*/results/*.json",
            "warmup-check/*/runs/*/log.jsonl", "collapse-chips-*/*/table.*", "collapse-chips-*/*/results/*.json")  # fmt: skip
#: The fault-free models, each copied only if its run finished.
MODELS = ("pretrain/model.pt", "pruned70/model.pt", "pretrain-seed-*/model.pt")


def finished(run: Path) -> bool:
    """Whether the run in ``run`` trained every epoch its config.yaml asks for (a run folder
    without the two files predates them and is taken as it is)."""
    config, log = run / "config.yaml", run / "log.jsonl"
    if not (config.is_file() and log.is_file()):
        return True
    lines = log.read_text().splitlines()
    return bool(lines) and json.loads(lines[-1])["epoch"] >= yaml.safe_load(config.read_text())["epochs"]


def main(src: str, dst: str) -> None:
    src_p, dst_p = Path(src), Path(dst)
    copied = 0
    models = [path for pattern in MODELS for path in src_p.glob(pattern) if finished(path.parent)]
    for path in [p for pattern in PATTERNS for p in src_p.glob(pattern)] + models:
        target = dst_p / path.relative_to(src_p)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        copied += 1
    print(f"copied {copied} files to {dst_p}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", help="a reproduce_cifar10.py --out folder")
    ap.add_argument("dst", help="where the artefacts go, e.g. docs/results/c10")
    args = ap.parse_args()
    if not (Path(args.src) / "manifest.json").is_file():
        ap.error(f"{args.src}: no manifest.json (expected a reproduce_cifar10.py --out folder)")
    main(args.src, args.dst)
