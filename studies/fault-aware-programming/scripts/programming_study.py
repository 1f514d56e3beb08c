"""What fault-aware programming buys on tested chips: ResNet-20 / CIFAR-10, the pretrained baseline
and a fault-tolerant model, each signed off on the same simulated tested chips with and without
programming each chip around its own fault map, then with field faults on top.

Three subcommands, run from the repository root:

* ``run``     every step an ``ftdeploy`` command, recorded in OUT/manifest.json with its exit code
              and wall time; a step whose output exists is skipped, so a stopped run continues;
* ``archive`` copies a run folder's small artefacts (manifest, lot reports, the trained model)
              into the study's ``results/``;
* ``render``  writes the results page from a run folder or its archive; nothing on the page is
              typed by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
STUDY = SCRIPTS.parent
REPO_ROOT = STUDY.parents[1]
RESULTS = STUDY / "results"
PROFILE = STUDY / "profiles" / "programming-study.yaml"
#: The same deployment on paper-diff8 with row routing (the study's targets/paper-diff8-rows.yaml):
#: what the chips allow there is programming with each tile's rows permuted.
PROFILE_ROWS = STUDY / "profiles" / "programming-study-rows.yaml"
#: The fault-free ResNet-20 of the paper study (60 epochs), archived there with its log.
PRETRAINED = REPO_ROOT / "studies" / "cifar10-paper" / "results" / "c10c" / "pretrain-length-60" / "model.pt"
#: The packed CIFAR-10 training split beside the repository (the official test split is not used).
SHARED_DATA = REPO_ROOT.parent / "shared" / "data" / "cifar10-train-jpeg.npz"

RATES = (0.005, 0.01, 0.02, 0.05)
MODELS = ("baseline", "fault-tolerant")
#: How each tested chip is programmed: in place (every weight on its own cells, the study's
#: profile), or with each tile's rows permuted first (`--permute-rows`, on the row-routing target).
IN_PLACE, ROWS_PERMUTED = "in-place", "rows-permuted"
VARIANTS = (IN_PLACE, ROWS_PERMUTED)
FT_RUN = "ft-one-shot-0.05"
#: The fault-tolerant retraining: the tuned recipe of the paper study (one-shot at P = 0.05,
#: three quarters of the steps fault-free, unbiased faults, weights clipped to 2 sigma), 12 epochs
#: from the 60-epoch pretrained model, as that study's run of the same name.
FT_TRAINING = ["--profile", "chen2015", "--device", "cpu", "--batch-size", "256", "--method", "one-shot",
               "--target-rate", "0.05", "--epochs", "12", "--lr", "0.02", "--unbias-faults", "--clean-steps", "0.75",
               "--weight-clip", "2"]  # fmt: skip


def rel(path: Path) -> str:
    """``path`` as commands and pages name it: relative to the repository root where inside it."""
    path = Path(path).resolve()
    try:
        return path.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return os.path.relpath(path, REPO_ROOT)


def rate_folder(rate: float) -> str:
    return f"P-{rate:g}"


def field_folder(rate: float, field: float | None) -> str:
    return rate_folder(rate) + (f"-field-{field:g}" if field else "")


def lots_folder(variant: str) -> str:
    """Where a variant's lot reports go in a run folder or archive: lots/MODEL/P-…/ (in place),
    lots-rows-permuted/MODEL/P-…/ (rows permuted)."""
    return "lots" if variant == IN_PLACE else f"lots-{variant}"


def lot_step(model: str, rate: float, field: float | None, variant: str = IN_PLACE) -> str:
    """The manifest's name of a lot's sign-off."""
    return f"lot-{model}-{field_folder(rate, field)}" + ("" if variant == IN_PLACE else f"-{variant}")


def model_file(models: Path, model: str, variant: str = IN_PLACE) -> Path:
    """A model's export for a variant's target: models/NAME.onnx (paper-diff8), models/rows-permuted/
    NAME.onnx (paper-diff8-rows; verify takes only a file exported for the profile's chips)."""
    return models / f"{model}.onnx" if variant == IN_PLACE else models / variant / f"{model}.onnx"


@dataclass(frozen=True)
class Step:
    name: str
    argv: list[str]
    done: Path  # the step's product: when it exists (and the step ended well) the step is skipped
    ok_codes: tuple[int, ...] = (0,)


def study_steps(args) -> list[Step]:
    out, data = Path(args.out), f"npz:{rel(Path(args.data))}"
    models = out / "models"
    ft_model = out / FT_RUN / "model.pt"
    variants = [v for v in VARIANTS if v in getattr(args, "variants", VARIANTS)]
    rows = ROWS_PERMUTED in variants

    def export(model: str, source: Path) -> list[Step]:
        # the same checkpoint exported for each variant's target: the same cells and levels, only the target differs
        steps = [Step(f"export-{model}", ["export", rel(source), "--profile", "chen2015", "--out", rel(model_file(models, model))],
                      model_file(models, model))]  # fmt: skip
        if rows:
            target = model_file(models, model, ROWS_PERMUTED)
            steps.append(Step(f"export-{model}-{ROWS_PERMUTED}", ["export", rel(source), "--profile", rel(PROFILE_ROWS), "--out", rel(target)], target))
        return steps

    steps = export("baseline", PRETRAINED)
    if "fault-tolerant" in args.models:
        steps += [Step("train-fault-tolerant", ["train", *FT_TRAINING, "--data", data, "--from", rel(PRETRAINED), "--out", rel(out / FT_RUN), "--resume"], ft_model),
                  *export("fault-tolerant", ft_model)]  # fmt: skip
    for rate in args.rates:
        maps = out / "maps" / rate_folder(rate)
        # One lot per rate, shared by both models (same network, same target, so the same cells):
        # the comparison is chip for chip. The row-routing target places the model on the same
        # cells (same tiles; a map records only the tile geometry), so it reads the same maps.
        steps.append(Step(f"maps-{rate:g}", ["faultmap", "simulate", rel(models / "baseline.onnx"), "--profile", rel(PROFILE),
                                             "--rate", f"{rate:g}", "--chips", str(args.chips), "--format", "npz",
                                             "--out", rel(maps)], maps / f"chip-{args.chips - 1:04d}.npz"))  # fmt: skip
        for model in (m for m in MODELS if m in args.models):
            for variant in variants:
                # One sign-off gives the three figures of each chip: unprogrammed, programmed, and
                # programmed with field faults on top (as shipped).
                lot = out / lots_folder(variant) / model / field_folder(rate, args.field_rate)
                profile, permute = (PROFILE, []) if variant == IN_PLACE else (PROFILE_ROWS, ["--permute-rows"])
                argv = ["verify", rel(model_file(models, model, variant)), "--profile", rel(profile), "--fault-maps", rel(maps), "--program",
                        *permute, "--reference", rel(model_file(models, "baseline", variant)), "--data", data,
                        "--max-images", str(args.max_images), *(["--field-rate", f"{args.field_rate:g}"] if args.field_rate else []),
                        "--out", rel(lot)]  # fmt: skip
                # exit 1 is a lot that fails its chip spec: a result, not an error
                steps.append(Step(lot_step(model, rate, args.field_rate, variant), argv, lot / "report.json", ok_codes=(0, 1)))
    return steps


class Runner:
    """Runs ``python -m ftdeploy`` steps one after another, each logged to OUT/logs/NAME.log and
    recorded in OUT/manifest.json (command, exit code, seconds) as soon as it ends."""

    def __init__(self, out: Path):
        self.out = out
        (out / "logs").mkdir(parents=True, exist_ok=True)
        self.manifest_path = out / "manifest.json"
        self.steps = json.loads(self.manifest_path.read_text())["steps"] if self.manifest_path.is_file() else {}

    def run(self, step: Step) -> bool:
        command = "ftdeploy " + " ".join(step.argv)
        recorded = self.steps.get(step.name, {})
        if step.done.is_file() and recorded.get("returncode") in step.ok_codes:
            print(f"[study] {step.name}: already done", flush=True)
            return True
        print(f"[study] {step.name}: {command}", flush=True)
        t0 = time.perf_counter()
        with open(self.out / "logs" / f"{step.name}.log", "a") as log:
            rc = subprocess.call([sys.executable, "-m", "ftdeploy", *step.argv], stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        self.steps[step.name] = {"command": command, "returncode": rc, "seconds": round(time.perf_counter() - t0, 1)}
        self._save()
        print(f"[study] {step.name}: exit {rc} after {self.steps[step.name]['seconds']:.0f} s", flush=True)
        # A crash exits 1 too (Python's own code for an uncaught exception): a step ended well only
        # when it also left its product.
        return rc in step.ok_codes and step.done.is_file()

    def _save(self) -> None:
        tmp = self.manifest_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"steps": self.steps}, indent=1))
        tmp.replace(self.manifest_path)


def run(args) -> int:
    runner = Runner(Path(args.out))
    for step in study_steps(args):
        if not runner.run(step):
            print(f"[study] stopped at {step.name}: see {rel(Path(args.out) / 'logs' / (step.name + '.log'))}", file=sys.stderr)
            return 1
    return 0


def archive(args) -> int:
    """Copy what the page is rendered from: the manifest, every lot's report.json and report.md
    (both variants),
    and the fault-tolerant model with its training log (the baseline is archived by the paper study)."""
    src, dst = Path(args.out), Path(args.to)
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    shutil.copy2(src / "manifest.json", dst / "manifest.json")
    for report in sorted(r for variant in VARIANTS for r in (src / lots_folder(variant)).glob("*/*/report.*")):
        if report.suffix in (".json", ".md"):
            target = dst / report.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(report, target)
    manifest = json.loads((src / "manifest.json").read_text())["steps"]
    trained = manifest.get("train-fault-tolerant", {}).get("returncode") == 0  # not a model still training
    for name in ("model.pt", "config.yaml", "log.jsonl", "summary.csv"):
        if trained and (src / FT_RUN / name).is_file():
            (dst / FT_RUN).mkdir(exist_ok=True)
            shutil.copy2(src / FT_RUN / name, dst / FT_RUN / name)
    print(f"[study] archived {src} in {rel(dst)}")
    return 0


# --- the page ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lot:
    """One lot report, reduced to what the tables show."""

    model: str
    rate: float
    field: float | None
    variant: str  # IN_PLACE or ROWS_PERMUTED
    clean: float  # the model on a fault-free chip, same images (Acc_retrain)
    pretrain: float  # the pretrained baseline, same images (--reference)
    threshold: float
    chips: int
    images: int
    unprogrammed: list[float]
    programmed: list[float]
    yield_unprogrammed: dict
    yield_programmed: dict
    field_accs: list[float] | None
    yield_field: dict | None


def read_lot(path: Path, model: str, rate: float, field: float | None, variant: str = IN_PLACE) -> Lot:
    """A lot signed off with --program (and field faults where ``field``): each chip's accuracy is
    the as-shipped one; with field faults, ``accuracy_without_field`` is the programmed chip's.
    The report must say its rows were permuted exactly where ``variant`` (its folder) says so."""
    report = json.loads(path.read_text())
    lot, chips = report["lot"], report["lot"]["chips"]
    if bool(lot.get("rows_permuted", False)) != (variant == ROWS_PERMUTED):
        raise SystemExit(f"{path}: rows_permuted is {lot.get('rows_permuted', False)}, but it lies among the {variant} lots")
    with_field = "yield_without_field" in lot
    programmed = [c["accuracy_without_field"] if with_field else c["accuracy"] for c in chips]
    return Lot(model=model, rate=rate, field=field, variant=variant, clean=report["figures"]["acc_retrain"],
               pretrain=report["figures"]["acc_pretrain"], threshold=lot["yield"]["threshold_pct"],
               chips=len(chips), images=report["data"]["images"],
               unprogrammed=[c["accuracy_unprogrammed"] for c in chips], programmed=programmed,
               yield_unprogrammed=lot["yield_unprogrammed"], yield_programmed=lot["yield_without_field"] if with_field else lot["yield"],
               field_accs=[c["accuracy"] for c in chips] if with_field else None,
               yield_field=lot["yield"] if with_field else None)  # fmt: skip


def lots_in(folder: Path) -> list[Lot]:
    """Every lot report of a run folder or archive, in place and with rows permuted."""
    found = []
    for variant in VARIANTS:
        for path in sorted((folder / lots_folder(variant)).glob("*/P-*/report.json")):
            model, name = path.parts[-3], path.parts[-2]
            rate_text, _, field_text = name.removeprefix("P-").partition("-field-")
            found.append(read_lot(path, model, float(rate_text), float(field_text) if field_text else None, variant))
    return found


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def accs_cell(values: list[float]) -> str:
    return f"{mean(values):.2f} ({min(values):.2f})"


def yield_cell(y: dict) -> str:
    return f"{y['yield_pct']:.0f} % [≥ {y['lower_bound_pct']:.0f} %]"


def _by_key(lots: list[Lot]) -> dict[tuple[str, float, str], Lot]:
    return {(lot.model, lot.rate, lot.variant): lot for lot in lots}


def _grid(lots: list[Lot]) -> list[tuple[float, str]]:
    """The (rate, model) pairs measured in either variant, in the tables' order."""
    return sorted({(lot.rate, lot.model) for lot in lots}, key=lambda key: (key[0], MODELS.index(key[1])))


def programming_table(lots: list[Lot]) -> list[str]:
    """One row per rate and model: unprogrammed, programmed in place, programmed with rows
    permuted (the same chips; "–" where a variant was not measured)."""
    by_key = _by_key(lots)
    rows = ["| P | model | clean % | unprogrammed: mean % (worst chip) | yield | programmed in place: mean % (worst chip) | yield "
            "| recovered, points | programmed, rows permuted: mean % (worst chip) | yield | rows permuted over in place, points |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for rate, model in _grid(lots):
        fixed, permuted = by_key.get((model, rate, IN_PLACE)), by_key.get((model, rate, ROWS_PERMUTED))
        first = fixed or permuted
        cells = [f"{rate:g}", model, f"{first.clean:.2f}", accs_cell(first.unprogrammed), yield_cell(first.yield_unprogrammed)]
        cells += ([accs_cell(fixed.programmed), yield_cell(fixed.yield_programmed), f"{mean(fixed.programmed) - mean(fixed.unprogrammed):+.2f}"]
                  if fixed else ["–", "–", "–"])  # fmt: skip
        cells += [accs_cell(permuted.programmed), yield_cell(permuted.yield_programmed)] if permuted else ["–", "–"]
        cells.append(f"{mean(permuted.programmed) - mean(fixed.programmed):+.2f}" if fixed and permuted else "–")
        rows.append("| " + " | ".join(cells) + " |")
    return rows


VARIANT_NAMES = {IN_PLACE: "in place", ROWS_PERMUTED: "rows permuted"}


def field_table(lots: list[Lot]) -> list[str]:
    with_field = sorted((lot for lot in lots if lot.field_accs is not None),
                        key=lambda lot: (lot.rate, MODELS.index(lot.model), VARIANTS.index(lot.variant)))  # fmt: skip
    if not with_field:
        return []
    rows = ["| P (tested) | field rate | model | programming | programmed, tested faults only: mean % | programmed + field faults: mean % (worst chip) | yield as shipped | lost to field faults, points |",
            "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for lot in with_field:
        rows.append(f"| {lot.rate:g} | {lot.field:g} | {lot.model} | {VARIANT_NAMES[lot.variant]} | {mean(lot.programmed):.2f} | {accs_cell(lot.field_accs)} "
                    f"| {yield_cell(lot.yield_field)} | {mean(lot.field_accs) - mean(lot.programmed):+.2f} |")  # fmt: skip
    return rows


def missing_lines(lots: list[Lot]) -> list[str]:
    """A line naming the lots of the study's grid this folder does not hold yet (a run stopped
    early), so a partial page says what it lacks."""
    measured = set(_by_key(lots))
    missing = [f"{model} at P = {rate:g} ({VARIANT_NAMES[variant]})" for variant in VARIANTS for model in MODELS for rate in RATES
               if (model, rate, variant) not in measured]  # fmt: skip
    return [f"Not measured yet: {', '.join(missing)}.", ""] if missing else []


#: The goals set for fault-aware programming: (model, rate, largest allowed gap to the model's own
#: clean accuracy in points).
GOALS = (("baseline", 0.005, 1.0), ("baseline", 0.01, 3.0), ("fault-tolerant", 0.05, 2.0))


def _gap(lot: Lot, gap: float) -> str:
    measured = lot.clean - mean(lot.programmed)
    side = f"{measured:.2f} points below it" if round(measured, 2) >= 0 else f"{-measured:.2f} points above it"
    return f"{VARIANT_NAMES[lot.variant]}, {side} ({'met' if measured <= gap else 'not met'})"


def goal_lines(lots: list[Lot]) -> list[str]:
    """Each goal judged on the best programming the chips allow: rows permuted where measured
    (a chip family that routes its rows), else in place; the other variant's figure follows."""
    by_key = _by_key(lots)
    lines = []
    for model, rate, gap in GOALS:
        goal = f"- {model}, programmed, within {gap:g} point{'' if gap == 1 else 's'} of its clean accuracy at P = {rate:g}"
        judged = [by_key[key] for key in ((model, rate, ROWS_PERMUTED), (model, rate, IN_PLACE)) if key in by_key]
        if not judged:
            lines.append(f"{goal}: not measured")
            continue
        beside = f" [{_gap(judged[1], gap)}]" if len(judged) > 1 else ""
        lines.append(f"{goal}: {_gap(judged[0], gap)}{beside}")
    return lines


def render(folder: Path) -> str:
    lots = lots_in(folder)
    if not lots:
        raise SystemExit(f"{folder}: no lot reports (lots/*/P-*/report.json)")
    manifest = json.loads((folder / "manifest.json").read_text())["steps"]
    first = lots[0]
    commands = [f"    {step['command']}    # exit {step['returncode']}, {step['seconds']:.0f} s" for step in manifest.values()]
    page = [
        "# Fault-aware programming: what it buys on tested chips",
        "",
        f"Rendered from `{rel(folder)}` by `python studies/fault-aware-programming/scripts/programming_study.py render "
        f"{rel(folder)}`; nothing below is typed by hand.",
        "",
        f"**Data.** Top-1 accuracy on {first.images:,} images held out from the CIFAR-10 *training* split "
        "(the official test split is not available here), the same images for every figure. "
        f"**Chips.** {first.chips} simulated tested chips per rate P (the profile's stuck-off : stuck-on split, "
        "seed 0), written as fault maps by `ftdeploy faultmap simulate`; both models are measured on the same chips. "
        "**Chip spec.** A chip ships when its accuracy is within 3 points of the pretrained baseline's on the same images "
        f"(threshold {first.threshold:.2f} %); yields are given with their one-sided 95 % Clopper-Pearson lower bound.",
        "",
        "**Models.** *baseline*: the paper study's 60-epoch pretrained ResNet-20 "
        f"(`{rel(PRETRAINED)}`); *fault-tolerant*: retrained from it one-shot at P = 0.05 with the tuned recipe, "
        "12 epochs " + ("(archived here, with its training log)." if (folder / FT_RUN / "model.pt").is_file() else "(not in this archive yet)."),
        "",
        "**Programmed in place** means each chip was programmed around its own fault map (`verify --fault-maps DIR --program`, "
        "what `ftdeploy program` writes for one chip): a weight with a stuck cell gets the healthy cells' levels that "
        "read closest to its code. **Rows permuted** is the same chip programmed the same way after each tile's rows were "
        "routed to the physical rows where its stuck cells cost the weights least (`verify --fault-maps DIR --program "
        "--permute-rows`, what `ftdeploy program --permute-rows` writes): a chip family that can route any input to any row "
        "of its tile, here the study's target `paper-diff8-rows` (paper-diff8 with `row_permutation: true`; both models "
        "exported for it too, the same cells and levels, the same maps). **Unprogrammed** is the same chip given the file's "
        "levels (the same in both variants).",
        "",
        "## Accuracy and yield, with and without programming",
        "",
        *programming_table(lots),
        "",
        *missing_lines(lots),
        "## Goals",
        "",
        "Each goal is judged on the best programming the chips allow: with rows permuted, on a chip family that routes its "
        "rows; the figure in place (rows fixed, as on paper-diff8) follows in brackets.",
        "",
        *goal_lines(lots),
        "",
    ]
    field = field_table(lots)
    if field:
        page += ["## Field faults on top of programmed chips", "",
                 "Cells that fail after programming (random stuck-at faults at the field rate, the profile's split, "
                 "drawn per chip on its physical cells, the same in both variants) are unknown to the programming: what remains is what "
                 "fault-tolerant training must absorb.",
                 "", *field, ""]  # fmt: skip
    page += ["## Commands", "", "Every step, in order, run from the repository root (exit 1 is a lot that fails its chip spec):",
             "", *commands, ""]  # fmt: skip
    return "\n".join(page)


def parse_rates(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="run (or continue) the study")
    p_run.add_argument("--out", default="runs/programming", help="run folder (default: runs/programming)")
    p_run.add_argument("--data", default=str(SHARED_DATA), help="the packed CIFAR-10 training split")
    p_run.add_argument("--rates", type=parse_rates, default=list(RATES), help="tested stuck-at rates, comma separated")
    p_run.add_argument("--field-rate", type=float, default=0.001, help="field faults added on top of the programmed chips (0: none)")
    p_run.add_argument("--models", type=lambda t: [m for m in t.split(",") if m], default=list(MODELS),
                       help=f"models measured, comma separated (default: {','.join(MODELS)})")
    p_run.add_argument("--variants", type=lambda t: [v for v in t.split(",") if v], default=list(VARIANTS),
                       help=f"how each chip is programmed, comma separated (default: {','.join(VARIANTS)})")
    p_run.add_argument("--chips", type=int, default=20, help="tested chips per rate")
    p_run.add_argument("--max-images", type=int, default=1000, help="held-out images measured")
    p_archive = sub.add_parser("archive", help="copy a run folder's small artefacts into results/")
    p_archive.add_argument("out", help="the run folder")
    p_archive.add_argument("--to", default=str(RESULTS), help="archive folder (default: the study's results/)")
    p_render = sub.add_parser("render", help="write the results page from a run folder or its archive")
    p_render.add_argument("folder", help="run folder or archive")
    p_render.add_argument("-o", "--output", default=str(STUDY / "RESULTS.md"))
    args = parser.parse_args(argv)
    if args.command == "run":
        return run(args)
    if args.command == "archive":
        return archive(args)
    output = Path(args.output)
    output.write_text(render(Path(args.folder)))
    print(f"[study] wrote {rel(output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
