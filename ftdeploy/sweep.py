"""A Table I-style sweep: from one pretrained model, retrain a grid of (method × training rate),
then test every model, the baseline included, on the same simulated chips at every test rate.

Resumable: a cell whose run folder holds a finished checkpoint is not retrained, and a cell
whose results file measured the same checkpoint, target, chips and images is not re-evaluated,
so an interrupted sweep picks up where it stopped (a cell interrupted mid-training continues from its last finished epoch, see
``training.loop.train(resume=True)``). Evaluation uses
the torch fast path (:class:`chip.DeployedNetwork`) with the verifier's chip streams, so its
chips are the chips ``ftdeploy verify`` simulates for the same seed.

Each training holds its run folder (:func:`files.run_folder_lock`); the training processes of
``--jobs`` end with the sweep, even one killed outright (:func:`files.die_with_parent`), and a
rerun refuses a cell another process still trains (:func:`refuse_runs_in_use`; see
docs/run-folders.md).

The table describes the folder, not one invocation: sweeps sharing a folder (one training rate
per machine, say) each add the rows the others measured alike (:func:`rows_from_other_sweeps`).
Each row also says whether the profile's sign-off limits hold on the sweep's chips
(:func:`signoff_screen`), so the table names the models worth exporting and signing off.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import io
import json
import math
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import torch

from .chip import DeployedNetwork
from .choices import RetrainMethod
from .data import DataBundle
from .errors import ConfigError, ModelError
from .figures import judge, rate_figures, stability_score, summarize_chips
from .files import PARENT_PID_ENV, exclusive_lock, lock_holder, remove_stale_temps, sha256_file, write_atomic
from .population import SimulatedChips, chip_accuracies
from .profiles import ResolvedProfile, rate_label
from .devices import pick_device
from .models import TRUST_MODEL_CODE, check_model_code_allowed
from .training.checkpoint import checkpoint_image_size, load_checkpoint, model_from_checkpoint, run_differences
from .training.config import RESUME_MAY_DIFFER, TrainConfig, config_yaml, progressive_rates_for
from .training.loop import train
from .verify import check_chip_counts, subset_indices, subset_size


@dataclass(frozen=True)
class Cell:
    """One row of the table: the baseline (no retraining) or one retrained model."""

    method: str  # "baseline", "one-shot" or "progressive"
    train_rate: float | None

    @property
    def key(self) -> str:
        return "baseline" if self.method == "baseline" else f"{self.method}-{self.train_rate:g}"

    @property
    def label(self) -> str:
        return "baseline" if self.method == "baseline" else f"{self.method} P^T={self.train_rate:g}"

    @classmethod
    def from_key(cls, key: str) -> Cell | None:
        """The retrained cell a results file's name stands for ("one-shot-0.05"), None for any other."""
        method, _, rate = key.rpartition("-")
        try:
            return cls(method, float(rate)) if method in METHODS else None
        except ValueError:
            return None


#: Retraining methods, in the order the table lists them at each training rate.
METHODS = get_args(RetrainMethod)


def plan(methods: list[str], train_rates: list[float]) -> list[Cell]:
    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"--methods: expected one-shot and/or progressive, found {m!r}")
    return [Cell("baseline", None)] + [Cell(m, r) for r in train_rates for m in methods]


#: TrainConfig fields each cell of the grid sets for itself; every other field is the recipe
#: the grid shares (SweepSettings.recipe).
PER_CELL_FIELDS = frozenset({"model", "method", "target_rate", "progressive_rates", "faults"})


#: Test rates whose Stability Score a table shows unless others are named (Table II's).
DEFAULT_SS_RATES = (0.01, 0.02)


@dataclass
class SweepSettings:
    """Everything the grid shares: the starting model, the chips it is tested on and the
    retraining recipe."""

    pretrained: Path
    profile: ResolvedProfile
    test_rates: list[float]
    chips: int
    seed: int  # of the chip population (the recipe's seed draws the training's own faults)
    recipe: TrainConfig  # every retraining's config but its PER_CELL_FIELDS
    data_spec: str | None
    val_split: int | None
    ss_rates: tuple[float, ...] = DEFAULT_SS_RATES
    max_images: int | None = None  # evaluate on a stratified subset of the validation images
    train: bool = True  # False: tabulate the checkpoints already in runs/ as they are, train nothing
    allow_model_import: bool = False  # the user allowed the checkpoint's package.module:factory (--trust-model-code)
    chip_batch: int = 1  # chips per forward pass of the evaluation (signoff.chip_batch, --chip-batch)
    ray: str | None = None  # measure the chips on Ray workers: "local" (a Ray started here) or a cluster's address (--ray)
    ray_workers: int | None = None  # Ray actors measuring chips (default: one per CPU of the cluster)

    def __post_init__(self):
        # Refused here, before any folder or training: a bad count would otherwise surface as a
        # traceback from the first evaluation, after the grid had trained.
        check_chip_counts(self.chips, self.max_images)
        if self.ray is not None:  # a missing extra is one line now, not a traceback after the trainings
            from .distributed import require_ray

            require_ray()
            if self.ray_workers is not None and self.ray_workers < 1:
                raise ConfigError(f"--ray-workers: expected at least 1, found {self.ray_workers}")

    def train_config(self, cell: Cell) -> TrainConfig:
        return self.recipe.model_copy(update=dict(
            model=self.start_model, image_size=checkpoint_image_size(self.pretrained_checkpoint), method=cell.method,
            target_rate=cell.train_rate,
            progressive_rates=progressive_rates_for(cell.train_rate, self.profile.profile.training),
            faults=self.profile.profile.training_faults,
        ))  # fmt: skip

    def run_epochs(self, cell: Cell) -> int:
        """Epochs the cell's whole run takes (progressive blocks of their own take one per rate)."""
        return self.train_config(cell).run_epochs

    @functools.cached_property
    def pretrained_checkpoint(self) -> dict:
        """The starting checkpoint, loaded once per sweep; its model refused here, before any
        work, where it would import code the user did not allow."""
        ckpt = load_checkpoint(self.pretrained)
        check_model_code_allowed(ckpt["model"], str(self.pretrained), self.allow_model_import)
        return ckpt

    @property
    def start_model(self) -> str:
        """The model every cell retrains: the starting checkpoint's (as ``train --from`` keeps it)."""
        return self.pretrained_checkpoint["model"]

    @functools.cached_property
    def pretrained_sha256(self) -> str:
        return sha256_file(self.pretrained)


def _finished(run_dir: Path, epochs: int) -> bool:
    """Whether ``run_dir`` holds a checkpoint that trained all ``epochs`` (of its whole run)."""
    path = run_dir / "model.pt"
    if not path.is_file():
        return False
    try:
        return load_checkpoint(path).get("epochs_done") == epochs
    except ModelError:
        return False


#: The config a sweep starts each cell's ``ftdeploy train`` process with, in the cell's run folder
#: (beside the run's own config.yaml, which a resumed run keeps as it was started).
CELL_CONFIG = "cell-config.yaml"


def _train_command(s: SweepSettings, cell: Cell, run_dir: Path) -> list[str]:
    """The ``ftdeploy train`` process that trains ``cell`` with the config the in-process path
    uses: written (atomically) to run_dir/cell-config.yaml and read back by ``train --config``."""
    config = write_atomic(run_dir / CELL_CONFIG, config_yaml(s.train_config(cell)), ConfigError)
    cmd = [sys.executable, "-m", "ftdeploy", "train", "--config", str(config), "--profile", str(s.profile.profile_path),
           "--from", str(s.pretrained), "--out", str(run_dir), "--resume"]  # fmt: skip
    if s.data_spec:
        cmd += ["--data", s.data_spec]
    if s.val_split is not None:
        cmd += ["--val-split", str(s.val_split)]
    if s.allow_model_import:
        cmd += [TRUST_MODEL_CODE]
    return cmd


def train_cells(s: SweepSettings, cells: list[Cell], out: Path, data: DataBundle, jobs: int, log=print,
                on_done=lambda cell: None) -> None:  # fmt: skip
    """Train every unfinished cell; ``jobs`` > 1 runs that many ``ftdeploy train`` processes at
    once (a small CIFAR model leaves a GPU mostly idle, so several share it well).
    ``on_done(cell)`` runs as each cell finishes (the sweep evaluates it then)."""
    pre = s.pretrained_checkpoint
    todo = [c for c in cells if c.method != "baseline" and not _finished(out / "runs" / c.key, s.run_epochs(c))]
    for c in cells:
        if c.method != "baseline" and c not in todo:
            log(f"[sweep] {c.label}: finished checkpoint found, not retrained")
            on_done(c)
    refuse_runs_in_use([out / "runs" / c.key for c in todo])
    if jobs <= 1:
        for c in todo:
            log(f"[sweep] training {c.label}")
            train(s.train_config(c), data, s.profile.target, out / "runs" / c.key, init=pre,
                  profile_name=s.profile.profile.name, resume=True, allow_model_import=s.allow_model_import)  # fmt: skip
            on_done(c)
        return
    running: list[tuple[Cell, subprocess.Popen, object]] = []
    try:
        _schedule(s, list(todo), running, out, jobs, log, on_done)
    except BaseException:
        # Interrupted (Ctrl-C, SIGTERM): stop the trainings this sweep started, each at its last
        # saved epoch, instead of leaving them running unwatched; a rerun resumes them.
        for _, proc, logf in running:
            proc.terminate()
        for _, proc, logf in running:
            proc.wait()
            logf.close()
        raise


#: How long a sweep waits for a run folder that another process holds before refusing it: the
#: trainings of a sweep just killed take a few seconds to save and stop.
IN_USE_WAIT_S = 30.0


def refuse_runs_in_use(run_dirs: list[Path], wait_s: float | None = None) -> None:
    """Refuse (one line naming the folder and the pid) a run folder that a live process still
    trains: a training left from an interrupted sweep, or another sweep training the same cell.
    Waits up to ``wait_s`` (:data:`IN_USE_WAIT_S`) first, for trainings that are stopping."""
    deadline = time.monotonic() + (IN_USE_WAIT_S if wait_s is None else wait_s)
    for run_dir in run_dirs:
        while (pid := lock_holder(run_dir)) is not None:
            if time.monotonic() >= deadline:
                who = f"process {pid}" if pid > 0 else "another process"
                raise ConfigError(f"{run_dir}: still being trained by {who} (a training of an earlier sweep, or "
                                  "another sweep's); wait for it to end, or stop it, and run the sweep again")  # fmt: skip
            time.sleep(0.2)


def _schedule(s: SweepSettings, todo: list[Cell], running: list, out: Path, jobs: int, log, on_done) -> None:
    """Keep ``jobs`` training processes busy until ``todo`` is empty and all have finished."""
    failed = []
    while todo or running:
        while todo and len(running) < jobs:
            c = todo.pop(0)
            run_dir = out / "runs" / c.key
            run_dir.mkdir(parents=True, exist_ok=True)
            logf = open(run_dir / "train.log", "a")  # a resumed run adds to its log
            log(f"[sweep] training {c.label} (log: {run_dir / 'train.log'})")
            # The child ends with this process, even one killed outright (files.die_with_parent).
            env = dict(os.environ, **{PARENT_PID_ENV: str(os.getpid())})
            running.append((c, subprocess.Popen(_train_command(s, c, run_dir), stdout=logf, stderr=subprocess.STDOUT, env=env),
                            logf))  # fmt: skip
        time.sleep(1.0)
        for item in list(running):
            c, proc, logf = item
            if proc.poll() is not None:
                logf.close()
                running.remove(item)
                log(f"[sweep] {c.label}: {'done' if proc.returncode == 0 else f'FAILED (exit {proc.returncode})'}")
                if proc.returncode:
                    failed.append(c)
                else:
                    on_done(c)
    if failed:
        raise ModelError(f"sweep: training failed for {', '.join(c.label for c in failed)}; see runs/*/train.log")


def evaluation_subset(data: DataBundle, max_images: int | None) -> DataBundle:
    """The validation images the table is measured on: all, or a stratified subset (--max-images).
    ``data`` may be a ValidationSet too (the probe scripts measure on the same subset)."""
    idx = subset_indices(data.val_y.numpy(), max_images)
    if idx is None:
        return data
    idx_t = torch.from_numpy(idx)
    return dataclasses.replace(data, val_x=data.val_x[idx_t], val_y=data.val_y[idx_t])


def evaluate_cells(s: SweepSettings, cells: list[Cell], out: Path, data: DataBundle, log=print,
                   on_chip: Callable[[], None] | None = None) -> dict[str, dict]:  # fmt: skip
    """Measure each cell's model on the sweep's chips and images, writing its results file; a
    results file measured alike is kept. ``on_chip`` runs after each chip (the background
    evaluator's stop check). With ``s.ray``, each rate's chips are measured on Ray workers
    (:func:`_ray_chips`; the fault-free accuracy here), giving the same figures."""
    device = pick_device(s.recipe.device)
    data = evaluation_subset(data, s.max_images)
    results = {}
    faults = s.profile.profile.fault_model
    for c in cells:
        path = out / "results" / f"{c.key}.json"
        ckpt_path = s.pretrained if c.method == "baseline" else out / "runs" / c.key / "model.pt"
        measured = _measurement(s, ckpt_path, data)
        if path.is_file():
            earlier = json.loads(path.read_text())
            if earlier.get("measured") == measured:
                results[c.key] = earlier
                continue
            log(f"[sweep] {c.label}: model, chips or images changed since it was evaluated; evaluating again")
        ckpt = load_checkpoint(ckpt_path)
        net = DeployedNetwork(model_from_checkpoint(ckpt, allow_import=s.allow_model_import, source=str(ckpt_path)), s.profile.target,
                              device)  # fmt: skip
        norm = ckpt["normalization"]  # preprocess exactly as the model was trained
        backend = net.backend(data.val_x, data.val_y, norm["mean"], norm["std"], chip_batch=s.chip_batch)
        t0 = time.perf_counter()
        # The workers start (and build their model) while the fault-free accuracy is measured here.
        pool = _ray_chips(s, ckpt, ckpt_path, data, backend) if s.ray is not None else None
        try:
            clean = backend.accuracy()
            tests = {}
            for rate in s.test_rates:
                at_rate = faults.at_rate(rate)
                if pool is not None and not at_rate.is_identity:
                    accs = _measure_in_rounds(pool, at_rate, rate, s.seed, s.chips, s.chip_batch, on_chip)
                else:
                    chips = SimulatedChips(at_rate, rate, s.seed, 1 if at_rate.is_identity else s.chips)
                    accs = chip_accuracies(backend, chips, on_chip=on_chip)
                tests[f"{rate:g}"] = {**summarize_chips(accs), "chips": accs}
        finally:  # the workers' CPUs are free again after each row, stopped or failed alike
            if pool is not None:
                pool.close()
        res = {"label": c.label, "method": c.method, "train_rate": c.train_rate, "acc_clean": clean, "recipe": _recipe(s),
               "epochs": None if c.method == "baseline" else ckpt.get("epochs"),
               "epochs_done": None if c.method == "baseline" else ckpt.get("epochs_done"), "schedule": ckpt.get("schedule"),
               "tests": tests, "measured": measured}  # fmt: skip
        write_atomic(path, json.dumps(res, indent=1))
        log(f"[sweep] evaluated {c.label}: clean {clean:.2f} % ({time.perf_counter() - t0:.0f} s)")
        results[c.key] = res
    return results


def _ray_chips(s: SweepSettings, ckpt: dict, ckpt_path: Path, data: DataBundle, backend):
    """Ray actors measuring one row's chips (:meth:`ftdeploy.distributed.RayChips.torch`): its
    model and the evaluation images go to the object store once, and each worker evaluates them
    on the CPU in the batches of images and chips ``backend`` (the row's own) uses."""
    from .distributed import RayChips, connect

    return RayChips.torch(connect(s.ray), ckpt, s.profile.target, data.val_x.numpy(), data.val_y.numpy(), backend.batch_size,
                          s.chip_batch, s.allow_model_import, str(ckpt_path), s.ray_workers)  # fmt: skip


def _measure_in_rounds(pool, faults, rate: float, seed: int, chips: int, chip_batch: int, on_chip) -> list[float]:
    """Chips 0..chips-1 of ``faults`` at ``rate`` on the Ray workers, in rounds of one group of
    ``chip_batch`` chips per worker: ``on_chip`` (the evaluator's stop check) runs after each
    round's chips, so a stopped sweep waits for one round, not for the whole rate."""
    step = len(pool.actors) * chip_batch
    accs: list[float] = []
    for start in range(0, chips, step):
        accs += pool.measure(faults, rate, seed, start, min(start + step, chips), on_chip=on_chip)
    return accs


def _measurement(s: SweepSettings, ckpt_path: Path, data: DataBundle) -> dict:
    """What a row's figures depend on. A results file measured otherwise (a checkpoint trained
    further since, another target, other chips or images) is stale and evaluated again."""
    return {
        "checkpoint_sha256": sha256_file(ckpt_path),
        "target": s.profile.target.model_dump(mode="json"),
        "split": list(s.profile.profile.fault_model.at_rate(0.0).stuck.ratio),
        # other kinds only where there are any, so stuck-at rows measured before they existed still match
        **({"faults": s.profile.profile.fault_model.describe_at("P")} if _has_other_kinds(s) else {}),
        "test_rates": [f"{r:g}" for r in s.test_rates],
        "chips": s.chips,
        "seed": s.seed,
        "val_sha256": hashlib.sha256(data.val_x.numpy().tobytes() + data.val_y.numpy().tobytes()).hexdigest(),
    }


def _has_other_kinds(s: SweepSettings) -> bool:
    return any(k.kind != "stuck-at" for k in s.profile.profile.fault_model.active)


#: Recipe fields every results file records, under the names the first tables gave them.
FIRST_RECIPE_FIELDS = {"lr": "lr", "batch_size": "batch_size", "bn": "bn", "stuck_grad": "stuck_grad",
                       "rate_warmup": "rate_warmup_epochs", "distill": "distill"}  # fmt: skip
#: Shared fields that are not the recipe: how long (each row records its own epochs), where and
#: how closely each epoch is checked, and the seed (part of what a row measured).
NOT_RECIPE_FIELDS = frozenset({"epochs", "seed"}) | RESUME_MAY_DIFFER


def recipe_fields(recipe: TrainConfig) -> dict:
    """The grid's shared training options, under the names tables and results files use."""
    first = {name: getattr(recipe, field) for name, field in FIRST_RECIPE_FIELDS.items()}
    rest = [f for f in TrainConfig.model_fields if f not in PER_CELL_FIELDS | NOT_RECIPE_FIELDS | set(FIRST_RECIPE_FIELDS.values())]
    return first | {f: getattr(recipe, f) for f in rest}


def _recipe(s: SweepSettings) -> dict:
    """The starting model and training options a row was tabulated under (its epochs are its
    own). Fields beyond the first ones are recorded only where they differ from TrainConfig's
    default, so a row measured before a field existed (with the default) still matches."""
    first = set(FIRST_RECIPE_FIELDS)
    fields = {k: v for k, v in recipe_fields(s.recipe).items() if k in first or v != TrainConfig.model_fields[k].default}
    return {"pretrained_sha256": s.pretrained_sha256, **fields}


def rows_from_other_sweeps(s: SweepSettings, out: Path, cells: list[Cell], results: dict[str, dict]) -> dict[str, dict]:
    """Rows that another sweep measured in this folder (say, a second grid trained beside this one
    into the same folder) on the same chips and images, from the same starting model with the same
    recipe, and whose checkpoint has not changed since: the table describes the folder, so two
    sweeps sharing one leave one table with both grids. Anything measured otherwise stays out (it
    is not re-evaluated here; a sweep whose grid holds it does that). A row whose checkpoint is
    gone stays as measured, its checkpoint's sha256 with it: a folder restored from its archive
    (scripts/archive_results.py keeps results, not retrained checkpoints) must not lose the rows
    of the grids trained into it before."""
    if "baseline" not in results:
        return {}
    ours = {k: v for k, v in results["baseline"]["measured"].items() if k != "checkpoint_sha256"}
    recipe, own = _recipe(s), {c.key for c in cells}
    found = {}
    for path in sorted((out / "results").glob("*.json")):
        cell, ckpt = Cell.from_key(path.stem), out / "runs" / path.stem / "model.pt"
        if cell is None or cell.key in own:
            continue
        try:
            row = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # not a results file this sweep can vouch for
        measured = dict(row.get("measured") or {})
        sha = measured.pop("checkpoint_sha256", None)
        if (ckpt.is_file() and sha != sha256_file(ckpt)) or measured != ours or row.get("recipe") != recipe:
            continue
        found[cell.key] = row
    return found


def signoff_screen(s: SweepSettings, result: dict, acc_pretrain: float) -> dict:
    """Whether one model meets the profile's sign-off limits on the sweep's own chips and images:
    the verifier's judgement (:func:`verify.judge`) of the figures the sweep measured, so a grid
    says which models are worth exporting. It is a screen, not the sign-off: that is
    `ftdeploy verify` on the exported file, on the profile's chips. ``"untested"`` where the
    grid's test rates lack a rate a limit is set at, or a limit needs a confidence interval and
    the grid has one chip per rate."""
    faults, acceptance = s.profile.profile.fault_model, s.profile.profile.signoff.acceptance
    pairs = [rate_label(lim.rate) for lim in acceptance if isinstance(s.profile.profile.signoff.rate_for(lim), tuple)]
    if pairs:  # the grid tests totals split with the profile's ratio, not a pair given as measured
        return {"verdict": "untested", "why": f"sign-off rates given as [stuck_off, stuck_on] pairs: {', '.join(pairs)}"}
    needed = sorted({lim.total for lim in acceptance})
    missing = [f"{rate:g}" for rate in needed if f"{rate:g}" not in result["tests"]]
    if missing:
        return {"verdict": "untested", "why": f"not tested at P={', '.join(missing)}"}
    if s.chips < 2 and any(lim.min_acc_defect_lower_ci_pct is not None for lim in acceptance):
        return {"verdict": "untested", "why": "min_acc_defect_lower_ci_pct needs 2 or more chips per rate"}
    clean = result["acc_clean"]
    signoff = s.profile.profile.signoff
    figures = {"acc_retrain": clean, "rates": [rate_figures(rate, faults.at_rate(rate).stuck, result["tests"][f"{rate:g}"]["chips"],
                                                            acc_pretrain, clean, seed=s.seed, signoff=signoff) for rate in needed]}  # fmt: skip
    verdict = judge(figures, s.profile)
    failed = [c.name if c.rate is None else f"{c.name}@{c.rate:g}" for c in verdict.checks if not c.passed]
    return {"verdict": "PASS" if verdict.passed else "FAIL", "failed": failed}


def screen_passes(table: dict, out: Path) -> list[tuple[str, Path]]:
    """The models whose row passed :func:`signoff_screen`, each with the checkpoint to export."""
    def checkpoint(row: dict) -> Path:
        cell = Cell(row["method"], row["train_rate"])
        return Path(table["pretrained"]) if cell.method == "baseline" else out / "runs" / cell.key / "model.pt"
    return [(row["model"], checkpoint(row)) for row in table["rows"] if row["signoff_screen"]["verdict"] == "PASS"]


def signoff_limits(s: SweepSettings) -> dict:
    """The limits :func:`signoff_screen` applied, and on which chips, for the table's reader."""
    signoff = s.profile.profile.signoff
    limits = [f"min_acc_retrain_pct {signoff.min_acc_retrain_pct:g}"] if signoff.min_acc_retrain_pct is not None else []
    limits += [f"{name} {limit:g} at P={rate_label(lim.rate)}" for lim in signoff.acceptance for name, limit in lim.limits().items()]
    return {"profile": s.profile.profile.name, "limits": limits, "chips": s.chips, "signoff_chips": signoff.chips, "seed": s.seed}


def build_table(s: SweepSettings, cells: list[Cell], results: dict[str, dict]) -> dict:
    acc_pretrain = results["baseline"]["acc_clean"]
    pre = s.pretrained_checkpoint
    rows = []
    for c in cells:
        r = results[c.key]
        defect = {k: v["mean"] for k, v in r["tests"].items()}
        ss = {f"{p:g}": stability_score(r["acc_clean"], acc_pretrain, defect[f"{p:g}"]) for p in s.ss_rates if f"{p:g}" in defect}
        rows.append({"model": c.label, "method": c.method, "train_rate": c.train_rate, "acc_clean": r["acc_clean"],
                     "epochs": r.get("epochs"), "epochs_done": r.get("epochs_done"),
                     "acc_defect": defect, "ci95": {k: v["ci95"] for k, v in r["tests"].items()}, "ss": ss,
                     "signoff_screen": signoff_screen(s, r, acc_pretrain)})  # fmt: skip
    return {
        "schema": "ftdeploy-sweep/1",
        "acc_pretrain": acc_pretrain,
        "pretrained": str(s.pretrained),
        "model": pre["model"],
        "sparsity": pre.get("sparsity"),
        "profile": s.profile.profile.name,
        "target": s.profile.target.name,
        "target_config": s.profile.target.model_dump(mode="json"),
        "data": s.data_spec or "embedded",
        "val_images": None,
        "chips": s.chips,
        "seed": s.seed,
        "train_seed": s.recipe.seed,  # of the retrainings (sweep --train-seed; by default the chip seed)
        "epochs": s.recipe.epochs,
        **recipe_fields(s.recipe),
        "test_rates": [f"{r:g}" for r in s.test_rates],
        "ss_rates": [f"{r:g}" for r in s.ss_rates],
        "signoff_limits": signoff_limits(s),
        "rows": rows,
    }


def _fmt_ss(v: float) -> str:
    return "inf" if math.isinf(v) else f"{v:.2f}"


def _fmt_screen(row: dict) -> str:
    screen = row["signoff_screen"]
    why = {"PASS": "", "FAIL": ", ".join(screen.get("failed", [])), "untested": screen.get("why", "")}[screen["verdict"]]
    return f"{screen['verdict']}: {why}" if why else screen["verdict"]


def ss_columns(table: dict) -> list[str]:
    """The SS rates the table can show: those among its test rates (an SS rate the grid did not
    test has no figure, and no column)."""
    return [r for r in table["ss_rates"] if r in table["test_rates"]]


def render_markdown(table: dict) -> str:
    rates, ss_rates = table["test_rates"], ss_columns(table)
    head = ["model", *rates, *[f"SS@{r}" for r in ss_rates], "sign-off limits"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table["rows"]:
        cells = [row["model"]] + [f"{row['acc_defect'][r]:.2f}" for r in rates] + [_fmt_ss(row["ss"][r]) for r in ss_rates]
        lines.append("| " + " | ".join([*cells, _fmt_screen(row)]) + " |")
    return "\n".join(lines) + "\n\n" + screen_note(table) + "\n"


def screen_note(table: dict) -> str:
    """What the sign-off limits column is: which limits, on which chips, and what decides."""
    screen = table["signoff_limits"]
    return (f"Sign-off limits: profile {screen['profile']}'s ({'; '.join(screen['limits']) or 'none set'}), applied to the "
            f"{screen['chips']} chips per rate above (seed {screen['seed']}). A screen: the sign-off is `ftdeploy verify` on the "
            f"exported file, on the profile's {screen['signoff_chips']} chips.")  # fmt: skip


def render_csv(table: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    ss_rates = ss_columns(table)
    w.writerow(["model", "acc_clean", *[f"acc_defect@{r}" for r in table["test_rates"]], *[f"ss@{r}" for r in ss_rates],
                "signoff_screen"])  # fmt: skip
    for row in table["rows"]:
        w.writerow([row["model"], f"{row['acc_clean']:.4f}", *[f"{row['acc_defect'][r]:.4f}" for r in table["test_rates"]],
                    *[_fmt_ss(row["ss"][r]) for r in ss_rates], _fmt_screen(row)])  # fmt: skip
    return buf.getvalue()


def run_sweep(s: SweepSettings, methods: list[str], train_rates: list[float], out: Path, data: DataBundle,
              jobs: int = 1, log=print) -> dict:  # fmt: skip
    """Train, evaluate and tabulate; returns the table dict (also written as table.{md,csv,json}).
    Each model is evaluated as soon as it is trained and the table rewritten with the rows done
    so far, so an interrupted sweep still leaves every finished row on disk. Evaluation runs
    beside the trainings (:class:`_BackgroundEvaluator`): a row being measured never keeps the
    next training waiting."""
    cells = plan(methods, train_rates)
    s.pretrained_checkpoint  # a file that is no checkpoint is refused before OUT is made
    check_runs_are_this_grids(s, cells, out)
    if s.train:  # before any work: a cell another process still trains is refused, not trained twice
        refuse_runs_in_use([out / "runs" / c.key for c in cells[1:]])
    if s.ray is not None:  # once per sweep, here: a cluster that cannot be reached is refused before any work
        from .distributed import connect

        connect(s.ray)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)  # what writers killed mid-write left (their pids dead; a live one's are kept)
    results: dict[str, dict] = {}

    def evaluate(cell: Cell, on_chip: Callable[[], None]) -> None:
        results.update(evaluate_cells(s, [cell], out, data, log, on_chip=on_chip))
        _write_tables(s, [c for c in cells if c.key in results], results, out, data)

    evaluator = _BackgroundEvaluator(evaluate)
    try:
        evaluator.submit(cells[0])  # the baseline first: every row's SS needs it
        for cell in cells[1:]:  # rows already evaluated by an earlier, interrupted run
            if (out / "results" / f"{cell.key}.json").is_file() and _finished(out / "runs" / cell.key, s.run_epochs(cell)):
                evaluator.submit(cell)
        if s.train:
            train_cells(s, cells, out, data, jobs, log, on_done=evaluator.submit)
        else:  # an interrupted sweep, tabulated as far as it got: every checkpoint, however many epochs it had
            for cell in cells[1:]:
                if (out / "runs" / cell.key / "model.pt").is_file():
                    evaluator.submit(cell)
        evaluator.finish()
    except BaseException:
        evaluator.stop()  # interrupted (Ctrl-C, SIGTERM) or failed: the row in measurement is dropped
        raise
    return _write_tables(s, [c for c in cells if c.key in results], results, out, data)


def check_runs_are_this_grids(s: SweepSettings, cells: list[Cell], out: Path) -> None:
    """Refuse a folder whose run of a cell was trained otherwise (another recipe, training seed,
    learning rate...): the sweep would keep or resume it and tabulate it as this grid's. Checked
    before any work, for a finished run and an interrupted one alike."""
    for c in cells[1:]:
        path = out / "runs" / c.key / "model.pt"
        if path.is_file():
            differ = run_differences(load_checkpoint(path), s.train_config(c))
            if differ:
                raise ConfigError(f"{path.parent}: a run of {c.label} trained otherwise ({differ}); "
                                  "use another --out, or this run's settings")


class _Stopped(Exception):
    """Raised inside the evaluator's thread, between two chips, once the sweep asked it to stop."""


class _BackgroundEvaluator:
    """Evaluates submitted rows one after another in a background thread, in submission order,
    while the sweep goes on scheduling trainings: measuring a row takes minutes, and a training
    slot left idle that long wastes the machine. A row submitted twice is evaluated
    once. An interrupted sweep stops it (:meth:`stop`) after the chip in measurement: a thread
    still inside torch when the interpreter exits is torn down mid-operation and aborts the whole
    process (exit -6, "terminate called without an active exception"). Each results file is
    written atomically, so the row it stopped in is left out, not half-written, and the rerun
    evaluates what is missing."""

    def __init__(self, evaluate):
        self._evaluate = evaluate  # evaluate(cell, on_chip)
        self._queue: queue.Queue = queue.Queue()
        self._submitted: set[str] = set()
        self._error: BaseException | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._work, name="sweep-evaluator", daemon=True)
        self._thread.start()

    def submit(self, cell: Cell) -> None:
        if cell.key not in self._submitted:
            self._submitted.add(cell.key)
            self._queue.put(cell)

    def finish(self) -> None:
        """Wait for every submitted row; re-raise the first evaluation error here, in the caller."""
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """Stop after the chip in measurement, drop the rows not yet measured, and wait for the
        thread: a chip is one pass over the evaluation images, seconds."""
        self._stopping.set()
        self._queue.put(None)
        self._thread.join()

    def _check(self) -> None:
        if self._stopping.is_set():
            raise _Stopped

    def _work(self) -> None:
        while (cell := self._queue.get()) is not None and not self._stopping.is_set():
            if self._error is None:  # after a failure, skip the rest: finish() reports it
                try:
                    self._evaluate(cell, self._check)
                except _Stopped:
                    return
                except BaseException as exc:  # noqa: BLE001 - handed to the main thread in finish()
                    self._error = exc


def _write_tables(s: SweepSettings, cells: list[Cell], results: dict, out: Path, data: DataBundle) -> dict:
    """Write table.{json,csv,md}: this sweep's rows and those other sweeps measured alike in the
    same folder, under a lock, so two sweeps finishing at once both end up in the table."""
    with exclusive_lock(out / ".table.lock"):
        others = rows_from_other_sweeps(s, out, cells, results)
        rows = [c for c in cells if c.method == "baseline"] + sorted(
            [c for c in cells if c.method != "baseline"] + [Cell.from_key(k) for k in others],
            key=lambda c: (c.train_rate, METHODS.index(c.method)))  # fmt: skip
        table = build_table(s, rows, {**results, **others})
        table["val_images"] = subset_size(len(data.val_y), s.max_images)
        table["data_description"] = data.description
        write_atomic(out / "table.json", json.dumps(table, indent=1, default=str))
        write_atomic(out / "table.csv", render_csv(table))
        write_atomic(out / "table.md", render_markdown(table))
    return table
