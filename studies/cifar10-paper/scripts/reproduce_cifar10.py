"""Reproduce the paper's CIFAR-10 / ResNet-20 study with ftdeploy's own commands, then render
studies/cifar10-paper/RESULTS.md. Every step is an `ftdeploy` command line, recorded in
OUT/manifest.json with its wall time, so each figure in RESULTS.md names the command that made it.
Run it from the repository root, as every recorded command was:

    python studies/cifar10-paper/scripts/reproduce_cifar10.py --data npz:../shared/data/cifar10-train-jpeg.npz --out runs/cifar10

Its defaults (--data: ../shared/data/cifar10-train-jpeg.npz beside the repository; --out:
runs/cifar10 and --results-md: the study's RESULTS.md) are found from the repository root
wherever it is started from; paths given on the command line are taken as usual, from the
working directory.

Steps (each resumable: rerunning skips finished work, and a training cut short by the end of an
accelerator window continues from its last finished epoch):
  1. pretrain ResNet-20 (no faults) on the training part of the split;
  2. at once, as separate processes sharing the accelerator:
     a. dense sweep: one-shot and progressive retraining at P_sa^T in {0.01, 0.05, 0.1};
     b. 70 % magnitude pruning + masked fine-tuning, then progressive retraining of the pruned
        model at P_sa^T in {0.05, 0.1};
     c. recipe ablations: the same grid at P_sa^T in {0.01, 0.05} (or --methods / --train-rates)
        with BatchNorm in training mode, at --retrain-lr into bn-train or at --bn-train-lr into
        bn-train-lr-LR, for --epochs or (--bn-train-epochs N) into a folder ending -N-epochs;
        one-shot P_sa^T = 0.05 with the gradient passed straight through stuck cells;
     d. the pretrained model's collapse on both BatchNorm placements (profiles chen2015 and
        chen2015-folded), no training;
     e. the dense grid again with distillation from the pretrained model (--distill);
     f. "long": P_sa^T = 0.05 retrained for --long-epochs (the paper retrains 160 epochs);
     g. "unbiased": the dense grid with each training chip's weights divided by their expected
        shrink under faults (--unbias-faults);
     h. "clean-steps": as g, with a fraction of the steps on a fault-free chip (--clean-steps,
        default 0.5: every other step);
     i. "blocks-each": the dense grid with progressive retraining as in the paper's Algorithm 1,
        --epochs at every rate of the list (--progressive-blocks each);
     j. "equalized": the pretrained model with its channel ranges equalised for the target
        (ftdeploy equalize, BatchNorm in the periphery), then the dense grid retrained from it;
     k. "inverted": the dense grid retrained on the paper's cells programmed down from g_on;
     l. "retrain-lr": the dense grid retrained at another peak learning rate (--lr-study; the
        paper retrains at 0.1), into retrain-lr-LR;
     m. "weight-clip": the dense grid with every layer's weights clipped to ± K standard deviations
        after each retraining step (--weight-clip K), into weight-clip-K;
     n. "clean-steps-clip": h and m together (--clean-steps F --weight-clip K), into
        clean-steps-F-weight-clip-K;
     o. "pruned-clean-steps-clip": the pruned grid of b retrained as n, into
        pruned-clean-steps-F-weight-clip-K (the clip's spread taken over the surviving weights),
        at the rates --train-rates names (b's rates when it names none);
     p. "pretrain-seeds": the pretraining again from each seed of --pretrain-seeds, into
        pretrain-seed-N, and each such model's baseline on the study's profile, into
        pretrain-seed-N-baseline: how much of the baseline's collapse is the one pretrained model;
     q. "collapse": the baseline of the study's pretrained model and of each --pretrain-seeds one
        (pretrained first where missing) on --collapse-chips chips per rate (the paper's 100) at
        the rates the issue asks the collapse at, into collapse-chips-N/MODEL-FOLDER;
  3. ONNX export and ONNX Runtime sign-off of the progressive P_sa^T = 0.05 model (chen2015);
  4. render_results.py (beside this script) writes --results-md from the tables.
`--progressive-blocks each` retrains the chosen branches as i does, into FOLDER-progressive-each.
`--train-seed N` retrains the chosen branches from another training seed, on the same chips, into
FOLDER-train-seed-N: how far one training's luck moves a row.
`--epochs-in-folder` retrains the chosen branches into FOLDER-epochs-N (N: --epochs), beside the
grid of another length: e.g. one-shot for as many epochs as Algorithm 1's progressive model had.
`--retrain-from RUN` retrains the chosen branches from another pretrained model of the study
(pretrain-seed-N, pretrain-length-E; pretrained first where missing) into FOLDER-from-RUN, on the
same chips: whether the recipe meets the limits from a model that collapses otherwise.
Pretraining and pruning inject no faults, so they serve any target: `--reuse EARLIER_OUT` starts
a study on another target from an earlier study's pretrained and pruned models (copied, and
recorded in the manifest with the command that made them there).
Test accuracies are on the held-out validation part (5,000 images, stratified, seed 0) of the
CIFAR-10 training split; the official test split is not used.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from ftdeploy.files import exclusive_lock, sha256_file  # the installed package (README's install command)

import study_folders  # beside this script: the grid folders' names, shared with render_results.py
import study_paths  # beside this script: the study's folders and the shared data, found from the repository root

TEST_RATES = "0,0.001,0.005,0.01,0.02,0.05,0.1"
BRANCHES = ("dense", "distill", "pruned", "bn-train", "ablation-grad", "baselines", "long", "unbiased", "clean-steps",
            "blocks-each", "equalized", "inverted", "retrain-lr", "weight-clip", "clean-steps-clip", "pruned-clean-steps-clip",
            "pretrain-seeds", "pretrain-lengths", "collapse")
#: Profiles whose baseline collapse is compared: BatchNorm in the periphery (the paper's fault
#: model), folded into the cells, and the paper's cells programmed down from g_on.
BASELINE_PROFILES = ("chen2015", "chen2015-folded", "chen2015-inverted")

#: The run folder of the pretrained model with its channel ranges equalised (ftdeploy equalize).
EQUALIZED = "pretrain-eq"

#: chen2015 on the paper's cells programmed down from g_on (mapping differential-inverted).
INVERTED_PROFILE = "chen2015-inverted"

#: The dense and distill grids' methods and training rates when --methods / --train-rates are not given.
FULL_GRID = ("one-shot,progressive", "0.01,0.05,0.1")

#: The bn-train grid when --methods / --train-rates are not given (an ablation: the two rates the
#: issue sets limits for).
BN_TRAIN_GRID = ("one-shot,progressive", "0.01,0.05")


@dataclass(frozen=True)
class SweepBranch:
    """One sweep folder of the study. Training and --evaluate-only both read this one definition,
    so a tabulation pass asks for exactly the grid, options and starting model the training had."""

    branch: str  # the --only name
    folder: str  # under OUT
    step: str  # manifest step of its training
    start: str  # the run folder under OUT whose model.pt it retrains: "pretrain", "pruned70" or EQUALIZED
    methods: str
    rates: str
    extra: tuple[str, ...] = ()  # sweep options of its own (a recipe ablation, distillation)
    jobs: int | None = None  # retrainings at once, at most --jobs; None: --jobs
    epochs: int | None = None  # retraining epochs; None: --epochs
    follows_grid: bool = False  # methods and rates come from --methods / --train-rates
    profile: str | None = None  # a profile of its own (another target); None: --profile
    lr: float | None = None  # retraining peak learning rate; None: --retrain-lr

    def step_name(self, whole_grid: bool) -> str:
        """Its manifest step. A part of a grid (say, one rate trained on another machine) is a step
        of its own, named for the part it trains, so the manifest keeps the command of every part
        that trained into the same folder."""
        return self.step if whole_grid or not self.follows_grid else f"{self.step}:{self.methods}@{self.rates}"

    def start_model(self, out: Path) -> Path:
        return out / self.start / "model.pt"

    def argv(self, args) -> list[str]:
        return ["sweep", *sweep_options(args, self.epochs or args.epochs, self.profile, self.lr), *self.extra, "--from", str(self.start_model(args.out)),
                "--methods", self.methods, "--train-rates", self.rates, "--jobs", str(min(self.jobs or args.jobs, args.jobs)),
                "--out", str(args.out / self.folder)]  # fmt: skip


def sweep_options(args, epochs: int, profile: str | None = None, lr: float | None = None, chips: int | None = None,
                  test_rates: str = TEST_RATES) -> list[str]:  # fmt: skip
    """What every sweep of the study shares: data, device, test rates, chips, images, recipe;
    on the study's profile, retraining learning rate, chips and test rates unless others are named."""
    options = ["--profile", profile or args.profile, "--data", args.data, "--device", args.device, "--batch-size", str(args.batch_size),
               "--test-rates", test_rates, "--chips", str(chips or args.chips), "--epochs", str(epochs),
               "--lr", str(lr if lr is not None else args.retrain_lr)]  # fmt: skip
    options += ["--max-images", str(args.max_images)] if args.max_images else []
    return options + (["--no-train"] if args.evaluate_only else [])


def sweep_branches(args, methods: str, rates: str) -> list[SweepBranch]:
    """The study's sweeps for a grid of ``methods`` × ``rates`` (the plain pruned grid takes the
    rates >= 0.05, the paper's Table II setting; the recipe's pruned grid the rates named); with
    --retrain-from RUN, those of the study's pretrained model retrained from RUN into a folder of
    their own (:func:`with_retrained_from`); with --train-seed N, each one retrained from another
    training seed into a folder of its own (:func:`with_train_seed`); with --epochs-in-folder, for
    --epochs into a folder of its own (:func:`with_epochs`)."""
    branches = _sweep_branches(args, methods, rates)
    if args.retrain_from:  # parse_args refuses it for the other branches
        branches = [with_retrained_from(b, args.retrain_from) if b.start == "pretrain" else b for b in branches]
    if args.progressive_blocks == "each":
        branches = [with_blocks_each(b) for b in branches]
    if args.epochs_in_folder:
        branches = [with_epochs(b, b.epochs or args.epochs) for b in branches]
    return branches if args.train_seed is None else [with_train_seed(b, args.train_seed) for b in branches]


def with_retrained_from(branch: SweepBranch, run: str) -> SweepBranch:
    """``branch`` retrained from the study's other pretrained model ``run`` (pretrain-seed-N,
    pretrain-length-E) into FOLDER-from-RUN: its baseline row is that model's, on the same chips."""
    return replace(branch, folder=study_folders.retrained_from(branch.folder, run), start=run,
                   step=study_folders.retrained_from(branch.step, run))


def retrainable_branches(args) -> set[str]:
    """The sweep branches --retrain-from can start from another pretrained model: those that
    retrain the study's own (not the pruned or the equalised model)."""
    return {b.branch for b in _sweep_branches(args, *FULL_GRID) if b.start == "pretrain"}


def with_blocks_each(branch: SweepBranch) -> SweepBranch:
    """``branch`` with progressive as the paper's Algorithm 1 (--epochs at every rate of the list),
    into FOLDER-progressive-each beside its split grid; the blocks-each branch already is."""
    if "--progressive-blocks" in branch.extra:
        return branch
    return replace(branch, folder=study_folders.with_blocks_each(branch.folder),
                   step=study_folders.with_blocks_each(branch.step), extra=(*branch.extra, "--progressive-blocks", "each"))


def with_epochs(branch: SweepBranch, epochs: int) -> SweepBranch:
    """``branch`` retrained for ``epochs`` per model into FOLDER-epochs-N: a run folder keeps the
    length it was started with, so grids of two lengths need two folders."""
    return replace(branch, folder=study_folders.with_epochs(branch.folder, epochs),
                   step=study_folders.with_epochs(branch.step, epochs))


def with_train_seed(branch: SweepBranch, seed: int) -> SweepBranch:
    """``branch`` retrained from training seed ``seed`` on the same chips, into FOLDER-train-seed-N:
    a run folder keeps the seed it was trained with, so the seeds' grids sit side by side."""
    return replace(branch, folder=study_folders.with_train_seed(branch.folder, seed),
                   step=study_folders.with_train_seed(branch.step, seed), extra=(*branch.extra, "--train-seed", str(seed)))


def _sweep_branches(args, methods: str, rates: str) -> list[SweepBranch]:
    high = ",".join(r for r in rates.split(",") if float(r) >= 0.05)
    named_grid, bn_folder = (methods, rates) != FULL_GRID, bn_train_folder(args)
    # The recipe's pruned grid trains the rates --train-rates names (the table asks for
    # 0.01 too); the whole grid's pruned rows follow the paper's Table II (P_sa^T >= 0.05).
    pruned_recipe_rates = rates if rates != FULL_GRID[1] else high
    # The recipe of the clean-steps-clip grid, and of the pruned model retrained alike.
    clean_steps_clip = ("--unbias-faults", "--clean-steps", f"{args.clean_steps:g}", "--weight-clip", f"{args.weight_clip:g}")
    return [
        SweepBranch("dense", "dense", "sweep-dense", "pretrain", methods, rates, follows_grid=True),
        SweepBranch("distill", "distill", "sweep-distill", "pretrain", methods, rates, ("--distill", str(args.distill)),
                    follows_grid=True),
        SweepBranch("pruned", "pruned", "sweep-pruned", "pruned70", "progressive", high, jobs=2, follows_grid=True),
        # Does BatchNorm in training mode (batch statistics every step, running statistics
        # averaged over the training chips) keep the clean accuracy, and at what robustness?
        # The ablation grid (P_sa^T 0.01 and 0.05) unless --methods / --train-rates name a part,
        # at --retrain-lr unless --bn-train-lr names another (the paper retrains at 0.1), for
        # --epochs unless --bn-train-epochs names more (the paper retrains 160).
        SweepBranch("bn-train", bn_folder, f"sweep-{bn_folder}", "pretrain", *((methods, rates) if named_grid else BN_TRAIN_GRID),
                    ("--bn", "train"), jobs=None if named_grid else 4, follows_grid=True, lr=args.bn_train_lr,
                    epochs=args.bn_train_epochs),
        SweepBranch("ablation-grad", "ablation-stuck-pass", "ablation-stuck-pass", "pretrain", "one-shot", "0.05",
                    ("--stuck-grad", "pass"), jobs=1),
        # Is the clean accuracy P_sa^T = 0.05 costs a matter of retraining length? (The paper
        # retrains 160 epochs.) Same grid, only longer.
        SweepBranch("long", "dense-long", "sweep-long", "pretrain", methods, "0.05", epochs=args.long_epochs),
        # Is it the gain? A chip at rate P holds on average (1 − P)·W: a model retrained at P_sa^T
        # fits that gain, and the fault-free chip is (1 − P_sa^T)^-1 too loud. Same grid, each
        # training chip divided by its expected shrink (--unbias-faults).
        SweepBranch("unbiased", "unbiased", "sweep-unbiased", "pretrain", methods, rates, ("--unbias-faults",),
                    follows_grid=True),
        # Does a model trained at P_sa^T keep its clean accuracy when it also trains fault-free?
        # Every other step on a fault-free chip (the loss then averages clean and faulty, as in
        # Stutz et al. 2021's random bit error training), on unbiased chips so both kinds of
        # step see the same average weights.
        SweepBranch("clean-steps", study_folders.clean_steps(args.clean_steps), f"sweep-{study_folders.clean_steps(args.clean_steps)}",
                    "pretrain", methods, rates, ("--unbias-faults", "--clean-steps", f"{args.clean_steps:g}"),
                    follows_grid=True),
        # The paper's Algorithm 1 runs M_epoch at every rate of the progressive list, so its
        # progressive model ends with as many epochs at P_sa^T as the one-shot model has, after
        # the lower rates; the dense grid splits the same epochs among the rates. Same grid,
        # each rate a retraining of --epochs of its own.
        SweepBranch("blocks-each", "progressive-each", "sweep-progressive-each", "pretrain", methods, rates,
                    ("--progressive-blocks", "each"), follows_grid=True),
        # Does a stuck-on cell cost less when every channel spans its layer's full code range? The
        # pretrained model equalised for the target (the same function; the periphery BatchNorm
        # takes the channel gains), its baseline measured and the grid retrained from it.
        SweepBranch("equalized", "equalized", "sweep-equalized", EQUALIZED, methods, rates, follows_grid=True),
        # What does retraining add when the common stuck-on fault no longer costs full scale? The
        # same pretrained model retrained on the same cells programmed down from g_on.
        SweepBranch("inverted", "inverted", "sweep-inverted", "pretrain", methods, rates, follows_grid=True,
                    profile=INVERTED_PROFILE),
        # Is the clean accuracy P_sa^T = 0.05 costs a matter of how far retraining may move? The
        # paper retrains at its pretraining rate, 0.1; the study at --retrain-lr. Same grid, only
        # the peak learning rate differs.
        SweepBranch("retrain-lr", study_folders.retrain_lr(args.lr_study), f"sweep-{study_folders.retrain_lr(args.lr_study)}", "pretrain",
                    methods, rates, follows_grid=True, lr=args.lr_study),
        # Does a stuck-on cell cost less clean accuracy to train against when the layer's peak is
        # held near its spread from the first step? Retraining flattens the weights by itself
        # (crest factor 2.2-3.6 before, 1.4-2.3 after); clipping imposes it (Rasch et al. 2023's
        # hardware-aware training clips so). Same grid, weights clipped after every step.
        SweepBranch("weight-clip", study_folders.weight_clip(args.weight_clip), f"sweep-{study_folders.weight_clip(args.weight_clip)}",
                    "pretrain", methods, rates, ("--weight-clip", f"{args.weight_clip:g}"), follows_grid=True),
        # Do the two levers that each moved a model along the trade-off add up? Fault-free steps
        # keep clean accuracy; clipping bought a little at every rate on the same chips.
        SweepBranch("clean-steps-clip", clean_steps_clip_folder(args), f"sweep-{clean_steps_clip_folder(args)}",
                    "pretrain", methods, rates, clean_steps_clip, follows_grid=True),
        # Does the pruned model, more fragile and the plain recipe's worst loser of clean
        # accuracy, keep it under the recipe that kept the dense model's? The pruned grid
        # (progressive at P_sa^T >= 0.05, or the named methods at the named rates) retrained as n.
        SweepBranch("pruned-clean-steps-clip", study_folders.pruned(clean_steps_clip_folder(args)),
                    f"sweep-{study_folders.pruned(clean_steps_clip_folder(args))}", "pruned70", methods if named_grid else "progressive",
                    pruned_recipe_rates, clean_steps_clip, follows_grid=True),
    ]  # fmt: skip


def bn_train_folder(args) -> str:
    """The bn-train branch's folder: `bn-train` at the study's --retrain-lr and --epochs, with
    `-lr-LR` for any other --bn-train-lr and `-N-epochs` for any other --bn-train-epochs, so the
    grids sit side by side (a run folder keeps the settings it was started with)."""
    lr, epochs = args.bn_train_lr, args.bn_train_epochs
    return study_folders.bn_train(None if lr == args.retrain_lr else lr, None if epochs == args.epochs else epochs)


def clean_steps_clip_folder(args) -> str:
    """The clean-steps-clip branch's folder, named for both settings."""
    return study_folders.clean_steps_clip(args.clean_steps, args.weight_clip)


def baseline_steps(args, pretrained: Path) -> list[tuple[str, list[str]]]:
    """The pretrained model alone on each of BASELINE_PROFILES."""
    return [(f"baseline-{p}", baseline_argv(args, pretrained, args.out / f"baseline-{p}", profile=p)) for p in BASELINE_PROFILES]


def baseline_argv(args, pretrained: Path, out: Path, profile: str | None = None, **measured) -> list[str]:
    """A sweep of ``pretrained`` alone (no run folders: --no-train tabulates the baseline only);
    ``measured``: chips or test rates other than the study's (:func:`sweep_options`)."""
    return ["sweep", *sweep_options(args, args.epochs, profile=profile, **measured), "--no-train", "--from", str(pretrained),
            "--methods", "progressive", "--train-rates", "0.05", "--out", str(out)]  # fmt: skip


def pretrain_argv(args, out: Path, seed: int | None = None, epochs: int | None = None) -> list[str]:
    """The study's pretraining into ``out``, from the profile's training seed or ``seed``, for
    --pretrain-epochs or ``epochs``."""
    return ["train", "--profile", args.profile, "--data", args.data, "--device", args.device, "--batch-size", str(args.batch_size),
            *(["--model", args.model] if args.model else []), "--method", "pretrain", "--epochs", str(epochs or args.pretrain_epochs),
            "--lr", str(args.lr), *(["--train-seed", str(seed)] if seed is not None else []), "--out", str(out), "--resume"]  # fmt: skip


def pretrain_seed_steps(args) -> list[tuple]:
    """Pretrain again from each of --pretrain-seeds (same data, recipe and length as the study's
    pretrained model), and measure each model's baseline on the study's chips and images: the
    issue's baseline collapse is a property of one pretrained model, and this says how far it
    moves from one model to the next."""
    steps = []
    for seed in parse_seeds(args.pretrain_seeds):
        name, argv, model = pretrain_seed_step(args, seed)
        steps += [(name, argv, model),
                  (study_folders.pretrain_seed_baseline(seed), baseline_argv(args, model, args.out / study_folders.pretrain_seed_baseline(seed)))]
    return steps


def pretrain_seed_step(args, seed: int) -> tuple[str, list[str], Path]:
    """The study's pretraining from ``seed`` into pretrain-seed-N (skipped once its model is done)."""
    model = args.out / study_folders.pretrain_seed(seed) / "model.pt"
    return study_folders.pretrain_seed(seed), pretrain_argv(args, model.parent, seed), model


def pretrain_length_steps(args) -> list[tuple]:
    """Pretrain as the study did (same data, recipe and seed) for each of --pretrain-lengths
    epochs, and measure each model's baseline on the study's chips and images: the paper's
    baseline is a model trained far longer than the study's, and this says whether the collapse
    deepens with the length of pretraining."""
    steps = []
    for epochs in parse_counts(args.pretrain_lengths):
        name, argv, model = pretrain_length_step(args, epochs)
        steps += [(name, argv, model), (study_folders.pretrain_length_baseline(epochs),
                                        baseline_argv(args, model, args.out / study_folders.pretrain_length_baseline(epochs)))]  # fmt: skip
    return steps


def pretrain_length_step(args, epochs: int) -> tuple[str, list[str], Path]:
    """The study's pretraining for ``epochs`` epochs into pretrain-length-E (skipped once its model is done)."""
    model = args.out / study_folders.pretrain_length(epochs) / "model.pt"
    return study_folders.pretrain_length(epochs), pretrain_argv(args, model.parent, epochs=epochs), model


def other_pretrained_step(args, run: str) -> tuple[str, list[str], Path]:
    """The pretraining step of ``run`` (pretrain-seed-N or pretrain-length-E), as its own branch
    runs it: a grid retrained from that model (--retrain-from) makes it first where it is missing."""
    prefix, number = study_folders.other_pretrained(run)
    return pretrain_seed_step(args, number) if prefix == study_folders.PRETRAIN_SEED else pretrain_length_step(args, number)


#: The test rates the collapse branch measures: clean, and the two the issue asks the collapse at.
COLLAPSE_RATES = "0,0.005,0.01"


def collapse_steps(args, pretrained: Path) -> list[tuple]:
    """The baseline of the study's pretrained model, and of each --pretrain-seeds and
    --pretrain-lengths one (its pretraining first, skipped when done), on --collapse-chips chips
    at COLLAPSE_RATES: ten chips leave a baseline's mean at P = 0.01 uncertain by about ±5 to ±9
    points, too loose to say which side of the issue's 35 % a model falls."""
    folder = args.out / study_folders.collapse(args.collapse_chips)

    def measure(model: Path) -> tuple[str, list[str]]:
        return f"{folder.name}:{model.parent.name}", baseline_argv(args, model, folder / model.parent.name,
                                                                   chips=args.collapse_chips, test_rates=COLLAPSE_RATES)  # fmt: skip

    steps = [measure(pretrained)]
    others = [pretrain_seed_step(args, seed) for seed in parse_seeds(args.pretrain_seeds)]
    others += [pretrain_length_step(args, epochs) for epochs in parse_counts(args.pretrain_lengths)]
    for name, argv, model in others:
        steps += [(name, argv, model), measure(model)]
    return steps


def parse_seeds(text: str) -> list[int]:
    """`1,2` -> [1, 2]; ValueError on anything but distinct non-negative integers."""
    seeds = [int(s) for s in text.split(",")]
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(text)
    return seeds


def parse_counts(text: str) -> list[int]:
    """`60,90` -> [60, 90], `` -> []; ValueError on anything but distinct positive integers."""
    counts = parse_seeds(text) if text else []
    if 0 in counts:
        raise ValueError(text)
    return counts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=study_paths.default_data(),
                    help="ftdeploy data spec; default: the shared packed split beside the repository (%(default)s)")
    ap.add_argument("--out", type=Path, default=Path(study_paths.shown(study_paths.RUNS / "cifar10")),
                    help="the study's run folder; default: runs/cifar10 in the repository root")
    ap.add_argument("--profile", default="chen2015")
    ap.add_argument("--model", default=None, help="model to pretrain; default: the profile's (resnet20)")
    ap.add_argument("--pretrain-epochs", type=int, default=40)
    ap.add_argument("--epochs", type=int, default=20, help="retraining epochs of every fault-tolerant model")
    ap.add_argument("--prune-epochs", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1, help="pretraining peak learning rate")
    ap.add_argument("--retrain-lr", type=float, default=0.02)
    ap.add_argument("--chips", type=int, default=50, help="simulated chips per test rate")
    ap.add_argument("--jobs", type=int, default=None,
                    help="retrainings at once in each sweep (at most); default: 6 with an accelerator, 1 on the CPU")
    ap.add_argument("--signoff-chips", type=int, default=30)
    ap.add_argument("--deadline-s", type=float, default=None, help="skip the ONNX sign-off step past this many seconds")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--results-md", type=Path, default=Path(study_paths.shown(study_paths.STUDY / "RESULTS.md")),
                    help="the page rendered at the end; default: the study's RESULTS.md (%(default)s)")
    ap.add_argument("--max-images", type=int, default=None, help="evaluate sweeps on a stratified subset of the validation images")
    ap.add_argument("--only", default=None, help=f"comma-separated branches to run ({', '.join(BRANCHES)}); "
                    "default: all. E.g. a CPU session finishing the dense grid")
    ap.add_argument("--methods", default=FULL_GRID[0], help="retraining methods of the dense and distill grids")
    ap.add_argument("--distill", type=float, default=0.9,
                    help="distillation weight of the distill branch (the dense grid uses the profile's recipe)")
    ap.add_argument("--long-epochs", type=int, default=75,
                    help="retraining epochs of the long branch (P_sa^T = 0.05 retrained for longer, into dense-long)")
    ap.add_argument("--clean-steps", type=float, default=0.5,
                    help="fraction of fault-free steps of the clean-steps branch (into clean-steps, or clean-steps-F "
                    "for F other than 0.5) and of the clean-steps-clip branch")
    ap.add_argument("--lr-study", type=float, default=0.1,
                    help="peak retraining learning rate of the retrain-lr branch (into retrain-lr-LR; the paper's: 0.1)")
    ap.add_argument("--weight-clip", type=float, default=2.5,
                    help="standard deviations the weight-clip branch clips every layer's weights to (into weight-clip-K), "
                    "and the clean-steps-clip branch")
    ap.add_argument("--bn-train-lr", type=float, default=None,
                    help="peak retraining learning rate of the bn-train branch (default --retrain-lr, into bn-train; "
                    "another into bn-train-lr-LR)")
    ap.add_argument("--bn-train-epochs", type=int, default=None,
                    help="retraining epochs of the bn-train branch (default --epochs; others into a folder ending -N-epochs)")
    ap.add_argument("--train-rates", default=FULL_GRID[1], help="P_sa^T of the dense grid; the plain pruned grid takes those >= 0.05, the recipe's pruned grid the named ones")
    ap.add_argument("--train-seed", type=int, default=None,
                    help="retrain the chosen branches from this training seed (on the same chips) into FOLDER-train-seed-N; "
                    "default: the chip seed, as every archived grid")
    ap.add_argument("--epochs-in-folder", action="store_true",
                    help="retrain the chosen branches into FOLDER-epochs-N (N: their --epochs), beside the grid of "
                    "another length (a run folder keeps the length it was started with)")
    ap.add_argument("--progressive-blocks", choices=("split", "each"), default="split",
                    help="each: retrain the chosen branches' progressive models as the paper's Algorithm 1 (--epochs at "
                    "every rate of the list) into FOLDER-progressive-each; default split: the rates share --epochs")
    ap.add_argument("--pretrain-seeds", default="1",
                    help="comma-separated seeds the pretrain-seeds branch pretrains again from, each into pretrain-seed-N")
    ap.add_argument("--pretrain-lengths", default="",
                    help="comma-separated epoch counts the pretrain-lengths branch pretrains again for (the study's seed), "
                    "each into pretrain-length-E; the collapse branch measures these models too")
    ap.add_argument("--collapse-chips", type=int, default=100,
                    help="chips per rate of the collapse branch's baselines (into collapse-chips-N; the paper's: 100)")
    ap.add_argument("--retrain-from", default=None, metavar="RUN",
                    help="retrain the chosen branches from another pretrained model of the study (pretrain-seed-N, "
                    "pretrain-length-E; pretrained first where missing) into FOLDER-from-RUN; default: the study's own")
    ap.add_argument("--reuse", type=Path, default=None,
                    help="an earlier study's folder whose pretrained and pruned models this one starts from")
    ap.add_argument("--evaluate-only", action="store_true",
                    help="train nothing: tabulate the checkpoints an earlier (interrupted) run left, as they are")
    args = ap.parse_args(argv)
    if args.jobs is None:
        args.jobs = default_jobs(args.device)
    elif args.jobs < 1:
        ap.error(f"--jobs: expected at least 1, got {args.jobs}")
    unknown = set(args.only.split(",")) - set(BRANCHES) if args.only else set()
    if unknown:  # before any step runs
        ap.error(f"--only: unknown branch {', '.join(sorted(unknown))}; expected some of {', '.join(BRANCHES)}")
    if args.reuse and not (args.reuse / "pretrain" / "model.pt").is_file():  # else the study would pretrain anew, silently
        ap.error(f"--reuse: {args.reuse} holds no pretrain/model.pt to start from "
                 f"(a study folder, or its archive in {study_paths.repo_relative(study_paths.RESULTS)})")
    if not args.lr_study > 0:
        ap.error(f"--lr-study: expected a positive learning rate, got {args.lr_study:g}")
    if args.bn_train_lr is not None and not args.bn_train_lr > 0:
        ap.error(f"--bn-train-lr: expected a positive learning rate, got {args.bn_train_lr:g}")
    if args.bn_train_epochs is not None and args.bn_train_epochs < 1:
        ap.error(f"--bn-train-epochs: expected a positive number of epochs, got {args.bn_train_epochs}")
    if not args.weight_clip > 0:
        ap.error(f"--weight-clip: expected a positive number of standard deviations, got {args.weight_clip:g}")
    try:
        parse_seeds(args.pretrain_seeds)
    except ValueError:
        ap.error(f"--pretrain-seeds: expected distinct non-negative integers separated by commas, got {args.pretrain_seeds!r}")
    try:
        parse_counts(args.pretrain_lengths)
    except ValueError:
        ap.error(f"--pretrain-lengths: expected distinct positive epoch counts separated by commas, got {args.pretrain_lengths!r}")
    if args.only and "pretrain-lengths" in args.only.split(",") and not args.pretrain_lengths:
        ap.error("--only pretrain-lengths: expected --pretrain-lengths (the epoch counts to pretrain for, e.g. 60)")
    if args.retrain_from is not None:
        if study_folders.other_pretrained(args.retrain_from) is None:
            ap.error(f"--retrain-from: expected a pretrained model of the study, pretrain-seed-N or pretrain-length-E, "
                     f"got {args.retrain_from!r}")
        chosen, retrainable = set(args.only.split(",")) if args.only else set(), retrainable_branches(args)
        if not chosen or chosen - retrainable:
            ap.error(f"--retrain-from: expected --only naming branches that retrain the study's pretrained model "
                     f"({', '.join(sorted(retrainable))}), got {args.only or 'every branch'}")
    if args.collapse_chips < 2:
        ap.error(f"--collapse-chips: expected at least 2 chips (a confidence interval needs two), got {args.collapse_chips}")
    if not 0 < args.clean_steps < 1:
        ap.error(f"--clean-steps: expected a fraction in (0, 1), got {args.clean_steps:g}")
    return args


def default_jobs(device: str) -> int:
    """Retrainings at once when --jobs is not given: six ResNet-20 trainings share an accelerator
    well, while on a CPU each extra one only divides the same cores (and multiplies the memory)."""
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return 1 if device == "cpu" else 6


def main() -> int:
    args = parse_args()
    if args.reuse:
        restore_own_manifest(args.reuse, args.out)
    run = Runner(args.out)
    stop_on_signals(run)
    # Every invocation that worked on this folder, in order (a resumed or evaluate-only run adds one).
    run.append("_invocations", "python " + " ".join([sys.argv[0], *sys.argv[1:]]))
    if args.reuse:
        reuse_fault_free_models(run, args.reuse)
    t_start = time.perf_counter()
    pre = args.out / "pretrain" / "model.pt"
    if args.evaluate_only:
        return evaluate_only(run, args, t_start)
    run("pretrain", pretrain_argv(args, pre.parent), done=pre)

    branches = branch_steps(args, pre)
    with ThreadPoolExecutor(len(branches)) as pool:
        failures = [f for f in pool.map(lambda steps: run.chain(steps), branches.values()) if f]

    model = args.out / "dense" / "runs" / "progressive-0.05" / "model.pt"
    onnx_path = args.out / "signoff" / "progressive-0.05.onnx"
    if args.deadline_s is not None and time.perf_counter() - t_start > args.deadline_s:
        print(f"[reproduce] past the {args.deadline_s:.0f} s deadline: ONNX sign-off skipped", flush=True)
    elif model.is_file():
        reference = args.out / "signoff" / "pretrain.onnx"  # Acc_pretrain measured on the images signed off
        run("export", ["export", str(model), "--profile", args.profile, "-o", str(onnx_path)], done=onnx_path)
        run("export-reference", ["export", str(pre), "--profile", args.profile, "-o", str(reference)], done=reference)
        run("verify", ["verify", str(onnx_path), "--profile", args.profile, "--data", args.data, "--reference", str(reference),
                       "--chips", str(args.signoff_chips), "--out", str(args.out / "signoff" / "report")], ok_codes=(0, 1))  # fmt: skip
    run.save()
    subprocess.run([sys.executable, str(Path(__file__).with_name("render_results.py")), str(args.out), "-o", str(args.results_md)], check=False)
    print(f"[reproduce] total {time.perf_counter() - t_start:.0f} s; failures: {failures or 'none'}", flush=True)
    return 1 if failures else 0


def stop_on_signals(run: "Runner") -> None:
    """SIGTERM (a deadline, a scheduler, kill) and SIGINT (Ctrl-C) stop the running steps cleanly
    and start no more; the manifest and RESULTS still get written. Left to Python, Ctrl-C raised
    KeyboardInterrupt in the main thread, whose thread pool then waited for the running step
    anyway and ended on a traceback, RESULTS not rendered."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: run.stop())


def branch_steps(args, pre: Path) -> dict[str, list[tuple]]:
    """The steps of each branch the study runs (--only, else every one), in order; each list is
    one chain, the chains running side by side. ``pre``: the study's pretrained model."""
    base = ["--profile", args.profile, "--data", args.data, "--device", args.device]
    pruned = args.out / "pruned70" / "model.pt"
    equalized = args.out / EQUALIZED / "model.pt"
    whole_grid = (args.methods, args.train_rates) == FULL_GRID
    sweeps = {s.branch: s for s in sweep_branches(args, args.methods, args.train_rates)}

    def sweep_step(branch: str) -> tuple[str, list[str]]:
        return sweeps[branch].step_name(whole_grid), sweeps[branch].argv(args)

    # Both pruned branches start from it; the Runner runs it once when both are asked for.
    prune = ("prune", ["prune", str(pre), *base, "--method", "magnitude", "--sparsity", "0.7",
                       "--epochs", str(args.prune_epochs), "--out", str(pruned.parent), "--resume"], pruned)  # fmt: skip
    branches = {
        "dense": [sweep_step("dense")],
        "distill": [sweep_step("distill")],
        "pruned": [prune, sweep_step("pruned")],
        "bn-train": [sweep_step("bn-train")],
        "ablation-grad": [sweep_step("ablation-grad")],
        "baselines": baseline_steps(args, pre),
        "long": [sweep_step("long")],
        "unbiased": [sweep_step("unbiased")],
        "clean-steps": [sweep_step("clean-steps")],
        "blocks-each": [sweep_step("blocks-each")],
        "equalized": [
            ("equalize", ["equalize", str(pre), "--profile", args.profile, "--data", args.data,
                          "-o", str(equalized)], equalized),
            sweep_step("equalized"),
        ],
        "inverted": [sweep_step("inverted")],
        "retrain-lr": [sweep_step("retrain-lr")],
        "weight-clip": [sweep_step("weight-clip")],
        "clean-steps-clip": [sweep_step("clean-steps-clip")],
        "pruned-clean-steps-clip": [prune, sweep_step("pruned-clean-steps-clip")],
        "pretrain-seeds": pretrain_seed_steps(args),
        "pretrain-lengths": pretrain_length_steps(args),
        "collapse": collapse_steps(args, pre),
    }  # fmt: skip
    assert tuple(branches) == BRANCHES
    if args.retrain_from:  # the model they start from first: pretrained where missing, skipped once done
        start = other_pretrained_step(args, args.retrain_from)
        branches = {name: [start, *steps] if name in retrainable_branches(args) else steps for name, steps in branches.items()}
    if args.only:
        branches = {name: steps for name, steps in branches.items() if name in args.only.split(",")}
    return branches


def evaluate_only(run: "Runner", args, t_start: float) -> int:
    """Tabulate what an interrupted run left (e.g. when the accelerator window closed), in the
    same folders, under the `eval-` step names, with the chips and images given now; with
    --only, just those branches' folders."""
    failures = [folder for name, folder, argv in evaluation_steps(args) if not run(name, argv)]
    run.save()
    subprocess.run([sys.executable, str(Path(__file__).with_name("render_results.py")), str(args.out), "-o", str(args.results_md)], check=False)
    print(f"[reproduce] evaluate-only: {time.perf_counter() - t_start:.0f} s; failures: {failures or 'none'}", flush=True)
    return 1 if failures else 0


def evaluation_steps(args) -> list[tuple[str, str, list[str]]]:
    """(step, folder, argv) of each sweep folder an earlier run trained into (of the --only
    branches), asking for the branch's whole grid: --no-train tabulates whichever of its
    checkpoints exist."""
    wanted = set(args.only.split(",")) if args.only else set(BRANCHES)
    return [(f"eval-{s.folder}", s.folder, s.argv(args)) for s in sweep_branches(args, *FULL_GRID)
            if s.branch in wanted and (args.out / s.folder / "runs").is_dir() and s.start_model(args.out).is_file()]  # fmt: skip


#: Fault-free steps whose run folder another study may reuse: (folder, manifest step).
REUSABLE = (("pretrain", "pretrain"), ("pruned70", "prune"))


def reuse_fault_free_models(run: "Runner", source: Path) -> None:
    """Copy ``source``'s pretrained and pruned run folders into this study when it has none, and
    record each as that study's step, with where it came from. A folder this study already has
    is recorded only if its model is the very same file (same SHA-256). The baseline sweeps'
    results files come along, so the baselines are not measured twice on the same chips."""
    earlier = json.loads((source / "manifest.json").read_text())["steps"] if (source / "manifest.json").is_file() else {}
    for folder, step in REUSABLE:
        src, dst = source / folder, run.out / folder
        if not (src / "model.pt").is_file():
            continue
        if not dst.exists():
            shutil.copytree(src, dst)
        digest = sha256_file(src / "model.pt")
        if sha256_file(dst / "model.pt") != digest:
            print(f"[reproduce] --reuse: {dst} differs from {src}; keeping this study's own", flush=True)
            continue
        made = earlier.get(step) or {"command": None, "returncode": 0, "seconds": None}
        if made_in(made, dst):  # this study's own archive: the model is restored, not another study's
            run.record(step, {k: v for k, v in made.items() if k != "reused_from"} | {"model_sha256": digest})
            print(f"[reproduce] {step}: restored from {src}, where this study archived it", flush=True)
            continue
        # Reused at second hand, it names the study that first lent it.
        run.record(step, {**made, "returncode": 0, "reused_from": made.get("reused_from", str(source)), "model_sha256": digest})
        print(f"[reproduce] {step}: reused from {src}", flush=True)
    # The baseline sweeps' measurements, as a cache: each results file records the checkpoint
    # hash, target, chips, seed and images it was measured with, and the sweep measures again
    # whatever differs here.
    for results in sorted(source.glob("baseline-*/results")):
        dst = run.out / results.parent.name / "results"
        if not dst.exists():
            shutil.copytree(results, dst)


def restore_own_manifest(source: Path, out: Path) -> None:
    """A study restored from its own archive into a folder without a manifest takes the archive's:
    its record (each step's command, the invocations) goes on there, and the pages rendered from
    the folder name the commands of the figures made before, not only of those made now."""
    manifest = source / "manifest.json"
    if (out / "manifest.json").is_file() or not manifest.is_file():
        return
    if made_in(json.loads(manifest.read_text())["steps"].get("pretrain") or {}, out / "pretrain"):
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy2(manifest, out / "manifest.json")
        print(f"[reproduce] --reuse: {source} is this study's own archive; its manifest goes on in {out}", flush=True)


def made_in(step: dict, folder: Path) -> bool:
    """Whether ``step``'s command wrote its model into ``folder``: then a study restoring
    ``folder`` from its own archive made that step itself."""
    out = study_folders.option_of(step.get("command") or "", "--out")
    return out is not None and Path(out).resolve() == folder.resolve()


class Runner:
    """Runs `python -m ftdeploy ...` steps, logs each to OUT/logs/NAME.log, records the manifest."""

    def __init__(self, out: Path):
        self.out = out
        (out / "logs").mkdir(parents=True, exist_ok=True)
        self.manifest_path = out / "manifest.json"
        # Reentrant: the SIGTERM handler (stop) runs in the main thread, which may hold it.
        self._lock = threading.RLock()
        # One per step: two branches that share a step (the pruning) run it once, the later one
        # waiting and then finding it done.
        self._step_locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self._children: set[subprocess.Popen] = set()
        self.stopped = False
        self.steps = self._read()
        self._mine: set[str] = set()  # steps this invocation ran: the only ones it writes back
        self._appended: dict[str, list] = {"_invocations": [], "_environments": []}
        self._saved_count = {key: 0 for key in self._appended}
        # Where each invocation ran (training on an accelerator, a later evaluation elsewhere).
        self.append("_environments", _environment())

    def _read(self) -> dict:
        return json.loads(self.manifest_path.read_text())["steps"] if self.manifest_path.is_file() else {}

    def append(self, key: str, value) -> None:
        self.steps.setdefault(key, []).append(value)
        self._appended[key].append(value)

    def stop(self) -> None:
        """Stop the steps running now (each ftdeploy command ends as on Ctrl-C: exit 130, its
        finished epochs saved, recorded as such) and start no more."""
        self.stopped = True
        with self._lock:
            for proc in self._children:
                proc.terminate()

    def __call__(self, name: str, argv: list[str], done: Path | None = None, ok_codes=(0,)) -> bool:
        with self._lock:
            step_lock = self._step_locks[name]
        with step_lock:
            return self._run_step(name, argv, done, ok_codes)

    def _run_step(self, name: str, argv: list[str], done: Path | None, ok_codes) -> bool:
        command = "ftdeploy " + " ".join(argv)
        if self.stopped:
            print(f"[reproduce] {name}: not started (stopped)", flush=True)
            return False
        if done is not None and done.is_file() and name in self.steps and self.steps[name].get("returncode") == 0:
            print(f"[reproduce] {name}: already done", flush=True)
            return True
        print(f"[reproduce] {name}: {command}", flush=True)
        self._mine.add(name)
        earlier = _attempts(self.steps.get(name))
        history = {"earlier": earlier} if earlier else {}
        self.steps[name] = {"command": command, "returncode": None, "seconds": None, **history}  # a killed step stays visible
        self.save()
        t0 = time.perf_counter()
        # Appended, not overwritten: an attempt stopped with an accelerator window keeps its log.
        with open(self.out / "logs" / f"{name}.log", "a") as log:
            log.write(f"[reproduce] attempt {len(earlier) + 1} ({time.strftime('%Y-%m-%d %H:%M:%S %Z')}): {command}\n")
            log.flush()
            proc = subprocess.Popen([sys.executable, "-m", "ftdeploy", *argv], stdout=log, stderr=subprocess.STDOUT)
            with self._lock:
                self._children.add(proc)
                if self.stopped:  # stop() came between the check above and the start
                    proc.terminate()
            rc = proc.wait()
            with self._lock:
                self._children.discard(proc)
        seconds = time.perf_counter() - t0
        self.steps[name] = {"command": command, "returncode": rc, "seconds": round(seconds, 1), **history}
        self.save()
        print(f"[reproduce] {name}: exit {rc} after {seconds:.0f} s", flush=True)
        if rc not in ok_codes:
            print((self.out / "logs" / f"{name}.log").read_text()[-3000:], flush=True)
        return rc in ok_codes

    def record(self, name: str, entry: dict) -> None:
        """Record a step this invocation did not run (e.g. reused from another study)."""
        self._mine.add(name)
        self.steps[name] = entry
        self.save()

    def chain(self, steps) -> str | None:
        """Run steps in order; a (name, argv, done) step is skipped when its output exists."""
        for name, argv, *done in steps:
            if not self(name, argv, done=done[0] if done else None):
                return name
        return None

    def save(self) -> None:
        """Merge this invocation's steps into the manifest on disk: branches run in threads, and
        two invocations (say, the dense grid and the pruned one) may share one output folder."""
        with self._lock, exclusive_lock(self.manifest_path.with_suffix(".lock")):
            merged = self._read()
            merged.update({name: self.steps[name] for name in self._mine})
            for key, values in self._appended.items():  # each own entry added once, on the first save after it
                merged[key] = merged.get(key, []) + values[self._saved_count[key]:]
                self._saved_count[key] = len(values)
            tmp = self.manifest_path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"steps": merged}, indent=1))
            tmp.replace(self.manifest_path)


def _attempts(entry: dict | None) -> list[dict]:
    """A step's attempts before the one starting now, oldest first: the manifest keeps every
    attempt's command, exit code and time (a step stopped with a window and rerun included), not
    only the last one. A step reused from another study was not attempted here."""
    if not entry or entry.get("reused_from") or "command" not in entry:
        return []
    return [*entry.get("earlier", []), {k: entry.get(k) for k in ("command", "returncode", "seconds")}]


def _environment() -> dict:
    import platform

    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": __import__("os").cpu_count()}
    if torch.cuda.is_available():
        env["device"] = torch.cuda.get_device_name(0)
    else:
        env["device"] = f"CPU ({platform.processor() or platform.machine()})"
    return env


if __name__ == "__main__":
    sys.exit(main())
