"""How a study's grid folders are named: reproduce_cifar10.py names each grid it trains by the
settings it differs in, render_results.py finds the grids again by the same names. Both read
them here, so a new kind of grid, or a renamed one, is one change in one file. Both also read
here what a manifest's recorded command gave an option (:func:`option_of`), such as its folder.

A run folder keeps the settings it was started with (a resumed run refuses others), so every
setting studied gets a folder of its own and the grids sit side by side."""

from __future__ import annotations

#: What --train-seed N adds to a grid's folder.
TRAIN_SEED = "-train-seed-"
#: What --epochs-in-folder adds to a grid's folder, before its --epochs (bn-train's own length
#: variants end `-N-epochs` instead: they predate this and are a kind of grid of their own).
EPOCHS = "-epochs-"
#: What --progressive-blocks each adds to a grid's folder (the plain grid's own such branch,
#: blocks-each, keeps its folder `progressive-each`).
BLOCKS_EACH = "-progressive-each"
#: What the pruned model's grid retrained with a recipe of its own has before the dense grid's name.
PRUNED = "pruned-"

#: What --pretrain-seeds N names the model pretrained from seed N; its baseline sweep's folder
#: adds PRETRAIN_SEED_BASELINE (not `baseline-*`: those are the study's model on other targets).
PRETRAIN_SEED = "pretrain-seed-"
PRETRAIN_SEED_BASELINE = "-baseline"

#: What --pretrain-lengths E names the model pretrained as the study's (same seed), for E epochs;
#: its baseline sweep's folder adds PRETRAIN_SEED_BASELINE too.
PRETRAIN_LENGTH = "pretrain-length-"

#: What --retrain-from RUN adds to a grid's folder, before RUN: the grid retrained from another
#: pretrained model of the study (pretrain-seed-N, pretrain-length-E) instead of its own.
RETRAINED_FROM = "-from-"

#: Where the collapse branch measures each pretrained model's baseline on more chips: under
#: COLLAPSE + chips, one folder per model, named as the model's run folder.
COLLAPSE = "collapse-chips-"

#: The patterns render_results.py lists each kind of grid by.
BN_TRAIN_GLOB = "bn-train*"
RETRAIN_LR_GLOB = "retrain-lr-*"
WEIGHT_CLIP_GLOB = "weight-clip-*"
CLEAN_STEPS_GLOB = "clean-steps*"  # the clipped ones too: render_results tells them apart by their table
CLEAN_STEPS_CLIP_GLOB = "clean-steps-*-weight-clip-*"
PRUNED_GLOB = f"{PRUNED}*"
TRAIN_SEED_GLOB = f"*{TRAIN_SEED}*"
EPOCHS_GLOB = f"*{EPOCHS}*"
BLOCKS_EACH_GLOB = f"*{BLOCKS_EACH}"
PRETRAIN_SEED_BASELINE_GLOB = f"{PRETRAIN_SEED}*{PRETRAIN_SEED_BASELINE}"
PRETRAIN_LENGTH_BASELINE_GLOB = f"{PRETRAIN_LENGTH}*{PRETRAIN_SEED_BASELINE}"
RETRAINED_FROM_GLOB = f"*{RETRAINED_FROM}*"


def option_of(command: str, name: str) -> str | None:
    """The value a recorded command line gave option ``name`` (None: not given), e.g. the folder
    a step wrote to (`--out`)."""
    words = command.split()
    return words[words.index(name) + 1] if name in words[:-1] else None


def with_train_seed(folder: str, seed: int) -> str:
    """`FOLDER-train-seed-N`: ``folder``'s grid retrained from training seed ``seed``."""
    return f"{folder}{TRAIN_SEED}{seed}"


def split_train_seed(folder: str) -> tuple[str, int]:
    """`FOLDER-train-seed-N` -> (FOLDER, N): the grid it retrains and the seed."""
    grid, seed = folder.rsplit(TRAIN_SEED, 1)
    return grid, int(seed)


def pretrain_seed(seed: int) -> str:
    """`pretrain-seed-N`: the run folder of the model pretrained as the study's, from seed ``seed``."""
    return f"{PRETRAIN_SEED}{seed}"


def pretrain_seed_baseline(seed: int) -> str:
    """`pretrain-seed-N-baseline`: the sweep folder of that model's baseline (no retraining)."""
    return pretrain_seed(seed) + PRETRAIN_SEED_BASELINE


def seed_of_pretrain_baseline(folder: str) -> int:
    """`pretrain-seed-N-baseline` -> N."""
    return int(folder.removeprefix(PRETRAIN_SEED).removesuffix(PRETRAIN_SEED_BASELINE))


def pretrain_length(epochs: int) -> str:
    """`pretrain-length-E`: the run folder of the model pretrained as the study's, for ``epochs`` epochs."""
    return f"{PRETRAIN_LENGTH}{epochs}"


def pretrain_length_baseline(epochs: int) -> str:
    """`pretrain-length-E-baseline`: the sweep folder of that model's baseline (no retraining)."""
    return pretrain_length(epochs) + PRETRAIN_SEED_BASELINE


def other_pretrained(run: str) -> tuple[str, int] | None:
    """`pretrain-seed-N` -> (PRETRAIN_SEED, N), `pretrain-length-E` -> (PRETRAIN_LENGTH, E): a model
    pretrained again by the study, which a grid may be retrained from instead of the study's own;
    None for any other run folder."""
    for prefix in (PRETRAIN_SEED, PRETRAIN_LENGTH):
        if run.startswith(prefix) and run.removeprefix(prefix).isdigit():
            return prefix, int(run.removeprefix(prefix))
    return None


def retrained_from(folder: str, run: str) -> str:
    """`FOLDER-from-RUN`: ``folder``'s grid retrained from the study's pretrained model ``run``
    (:func:`other_pretrained`) instead of its own; the other variants' suffixes follow."""
    return f"{folder}{RETRAINED_FROM}{run}"


def split_retrained_from(folder: str) -> tuple[str, str]:
    """`FOLDER-from-RUN[-SUFFIX]` -> (FOLDER[-SUFFIX], RUN): the grid as the study's own model has
    it, and the pretrained model this one was retrained from (three words: `pretrain-seed-N`,
    `pretrain-length-E`)."""
    grid, rest = folder.split(RETRAINED_FROM, 1)
    words = rest.split("-")
    return "-".join([grid, *words[3:]]), "-".join(words[:3])


def collapse(chips: int) -> str:
    """`collapse-chips-N`: the folder of the baselines measured on ``chips`` chips per rate."""
    return f"{COLLAPSE}{chips}"


def with_epochs(folder: str, epochs: int) -> str:
    """`FOLDER-epochs-N`: ``folder``'s grid retrained for ``epochs`` per model, beside the same
    grid of the study's usual length (say, one-shot as long as Algorithm 1's progressive)."""
    return f"{folder}{EPOCHS}{epochs}"


def split_epochs(folder: str) -> tuple[str, int]:
    """`FOLDER-epochs-N` -> (FOLDER, N): the grid it retrains for longer, and its length."""
    grid, epochs = folder.rsplit(EPOCHS, 1)
    return grid, int(epochs)


def with_blocks_each(folder: str) -> str:
    """`FOLDER-progressive-each`: ``folder``'s grid with progressive as the paper's Algorithm 1
    (every rate of the list a retraining of --epochs of its own)."""
    return folder + BLOCKS_EACH


def of_blocks_each(folder: str) -> str:
    """`FOLDER-progressive-each` -> FOLDER: the grid whose split schedule it is compared with."""
    return folder.removesuffix(BLOCKS_EACH)


def is_variant(folder: str) -> bool:
    """A grid retrained from another seed, for another length, with Algorithm 1's blocks or from
    another pretrained model: listed by its own kind's pattern, not by the pattern of the grid it
    varies (`clean-steps*` matches both)."""
    return TRAIN_SEED in folder or EPOCHS in folder or folder.endswith(BLOCKS_EACH) or RETRAINED_FROM in folder


def bn_train(lr: float | None = None, epochs: int | None = None) -> str:
    """`bn-train`, with `-lr-LR` for a learning rate and `-N-epochs` for a length other than the
    study's (None: the study's)."""
    folder = "bn-train" if lr is None else f"bn-train-lr-{lr:g}"
    return folder if epochs is None else f"{folder}-{epochs}-epochs"


def retrain_lr(lr: float) -> str:
    return f"retrain-lr-{lr:g}"


def weight_clip(sigmas: float) -> str:
    return f"weight-clip-{sigmas:g}"


def clean_steps(fraction: float) -> str:
    """`clean-steps` for the first fraction studied (0.5), `clean-steps-F` for any other."""
    return "clean-steps" if fraction == 0.5 else f"clean-steps-{fraction:g}"


def clean_steps_clip(fraction: float, sigmas: float) -> str:
    """Named for both settings, the fraction always shown."""
    return f"clean-steps-{fraction:g}-{weight_clip(sigmas)}"


def pruned(grid: str) -> str:
    """The pruned model retrained as the dense grid ``grid`` was."""
    return PRUNED + grid


def dense_of_pruned(folder: str) -> str:
    """The dense grid retrained as the pruned grid ``folder`` was: what its section compares with."""
    return folder.removeprefix(PRUNED)
