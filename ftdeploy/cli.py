"""The ``ftdeploy`` command line. One typer app; :func:`main` is the error boundary that turns
any :class:`~ftdeploy.errors.FtdeployError` into one line on stderr and its exit code
(2: bad input, 1: sign-off failed), without a traceback."""

from __future__ import annotations

import os
import signal
import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Annotated, Optional, get_args

import typer
from typer.core import TyperCommand, TyperGroup

from . import __version__
from .choices import BatchNormMode, FaultMapForm, ProgressiveBlocks, PruneMethod, RetrainMethod, ScaleGrad, StuckGrad, TrainMethod
from .errors import ConfigError, FtdeployError
from .limits import MAX_BATCH_SIZE, MAX_CHIPS, MAX_EPOCHS, MAX_EVAL_CHIPS, MAX_IMAGE_SIDE, MAX_IMAGES, MAX_JOBS, MAX_SEED


class _FlagsTakeNoValue:
    """typer labels every flag ``<bool>`` in --help (--help itself too), as if it took a value;
    a flag takes none, so its label is left empty and --help shows the flag alone."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params


class _OptionalValues:
    """Options whose value may be left out (``--ray`` alone, or ``--ray ADDRESS``): typer's parser
    has no such option, so one given last or before another option gets its default value
    written in (``--ray=local``) before parsing. Options and values: :data:`_OPTIONAL_VALUE`."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        args = list(args)
        for i, arg in enumerate(args):
            if arg == "--":  # what follows is positional
                break
            if arg in _OPTIONAL_VALUE and (i + 1 == len(args) or args[i + 1].startswith("-")):
                args[i] = f"{arg}={_OPTIONAL_VALUE[arg]}"
        return super().parse_args(ctx, args)


class _Command(_OptionalValues, _FlagsTakeNoValue, TyperCommand):
    pass


class _Group(_FlagsTakeNoValue, TyperGroup):
    pass


class _App(typer.Typer):
    """A typer app whose commands are :class:`_Command` s."""

    def command(self, *args, **kwargs):
        kwargs.setdefault("cls", _Command)
        return super().command(*args, **kwargs)


# Markdown: a command's docstring wraps to the terminal as one paragraph, not at the line breaks
# of its source (rich mode keeps those, leaving ragged half-lines in every --help).
app = _App(cls=_Group, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode="markdown",
           help="Train, export and sign off DNNs for faulty ReRAM processing-in-memory chips.")  # fmt: skip
profile_app = _App(cls=_Group, no_args_is_help=True, rich_markup_mode="markdown", help="List, show and validate deployment profiles.")
app.add_typer(profile_app, name="profile")

# --- options several commands share, declared once ---------------------------------------------
# A default that comes from the profile names its field there; resolution: ftdeploy.resolve. The
# declarations run on every start, `--help` included, so they import nothing heavy: choices come
# from ftdeploy.choices, and these defaults are TrainConfig's (a test holds them equal; reading
# them from TrainConfig would import pydantic, numpy and torch before any --help).
_TRAIN_DEFAULTS = {"eval_chips": 3, "device": "auto"}

ProfileOpt = Annotated[str, typer.Option("--profile", "-p", help="Profile name (profiles/NAME.yaml) or path.")]
SignOpt = Annotated[Optional[Path], typer.Option("--sign", help="Sign with this private key (KEY.key from ftdeploy keygen; its passphrase, if any, in $FTDEPLOY_KEY_PASSPHRASE). See docs/signing.md.")]
TrustOpt = Annotated[Optional[list[Path]], typer.Option("--trust", help="A trusted public key file (KEY.pub; a file may hold several; repeat for more): refuse a file that no trusted key signed. See docs/signing.md.")]
TrustModelCodeOpt = Annotated[bool, typer.Option("--trust-model-code", help="Import the model factory (package.module:factory) a checkpoint, profile or --config file names: it runs that module's code. Without it only registry and tv: models load from a file.")]
#: Options that may be given without a value, and the value they then take (see _OptionalValues).
_OPTIONAL_VALUE = {"--ray": "local"}
RayOpt = Annotated[Optional[str], typer.Option("--ray", metavar="[ADDRESS]", help="Measure the chips on Ray workers (needs the ray extra; docs/ray.md): alone, a Ray started on this machine; with an ADDRESS (auto, ray://HOST:10001), that cluster. The report (verify) or the results and table (sweep) are those a single process writes.")]
StreamOpt = Annotated[Optional[bool], typer.Option("--stream/--in-memory", help="imagefolder:DIR: read the image files batch by batch for every chip (memory stays flat however many there are), or decode them into memory once. Default: stream when the decoded images would take more than 2 GiB.")]
RayWorkersOpt = Annotated[Optional[int], typer.Option("--ray-workers", help="With --ray: Ray workers measuring chips. Default: one per CPU of the cluster.")]
_DATASETS = "embedded, cifar10:DIR, cifar100:DIR, imagefolder:DIR or npz:FILE"
DataOpt = Annotated[Optional[str], typer.Option("--data", help=f"Dataset: {_DATASETS}. Default: embedded.")]
CheckpointDataOpt = Annotated[
    Optional[str], typer.Option("--data", help=f"Dataset: {_DATASETS}. Default: the one the checkpoint was trained on.")
]
# Every count option has an upper bound (ftdeploy.limits): a typo of a few zeros is one line
# before any work, not a run that never ends or a MemoryError. Lower bounds stay with the
# settings' own checks where those name the option and say what it means.
_VAL_SPLIT = "Validation images held out (stratified, seeded)."
ValSplitOpt = Annotated[
    Optional[int],
    typer.Option("--val-split", max=MAX_IMAGES, help=f"{_VAL_SPLIT} Default: the dataset's own held-out part where it has one, else a tenth of its images."),
]
CheckpointValSplitOpt = Annotated[Optional[int], typer.Option("--val-split", max=MAX_IMAGES, help=f"{_VAL_SPLIT} Default: the checkpoint's split.")]


def _checked_device(name: str | None) -> str | None:
    """--device is checked as the command line is read: a CUDA device this machine lacks is one
    line before any data loads, not a traceback from the first tensor moved there."""
    if name is not None:
        from .devices import pick_device

        pick_device(name)
    return name


def _checked_onnx_device(name: str | None) -> str | None:
    """verify's --device, checked as the command line is read: a GPU this ONNX Runtime cannot
    use is one line (exit 2) before any file or data loads."""
    if name is not None:
        from .runtime import execution_providers

        execution_providers(name)
    return name


DeviceOpt = Annotated[
    Optional[str],
    typer.Option("--device", help=f"auto (CUDA if present), cpu or cuda[:N]. Default: {_TRAIN_DEFAULTS['device']}.",
                 callback=_checked_device),
]
ChipsOpt = Annotated[Optional[int], typer.Option("--chips", max=MAX_CHIPS, help="Chips simulated per rate. Default: the profile's signoff.chips.")]
SignOffChipsOpt = Annotated[Optional[int], typer.Option("--chips", max=MAX_CHIPS, help="Most chips simulated per rate (every one with --fixed-chips). Default: the profile's signoff.chips.")]


def _max_images_opt(default: str):
    return Annotated[Optional[int], typer.Option("--max-images", max=MAX_IMAGES, help=f"Evaluate on a stratified subset of at most N validation images. Default: {default}.")]


SignOffMaxImagesOpt = _max_images_opt("the profile's signoff.max_images (all images where it sets none)")
SweepMaxImagesOpt = _max_images_opt("all of them (not the profile's signoff.max_images)")
ChipSeedOpt = Annotated[
    Optional[int],
    typer.Option("--chip-seed", min=0, max=MAX_SEED, help="Seed of the simulated chip population (same seed, same chips). Default: the profile's signoff.seed."),
]


def _train_seed_opt(default: str):
    return Annotated[Optional[int], typer.Option("--train-seed", min=0, max=MAX_SEED, help="Seed of a training's initial weights, data order and fault draws "
                                                                             f"(the validation split keeps its own). Default: {default}.")]


TrainSeedOpt = _train_seed_opt("the profile's training.seed")
# A sweep's trainings default to its chip seed: another training seed on the same chips says how
# much of a row is the luck of one training.
SweepTrainSeedOpt = _train_seed_opt("the chip seed (--chip-seed)")
BatchSizeOpt = Annotated[Optional[int], typer.Option("--batch-size", max=MAX_BATCH_SIZE, help="Images per SGD step. Default: the profile's training.batch_size.")]


# The retraining recipe's options: each defaults to the profile's training section (built-in
# defaults: ftdeploy.profiles.RetrainingRecipe), so a profile can carry the recipe it was tuned
# with; each choice option takes the values its recipe field does (ftdeploy.choices).
def _from_profile(field: str) -> str:
    return f" Default: the profile's training.{field}."


BnOpt = Annotated[Optional[BatchNormMode], typer.Option("--bn", help="Retraining BatchNorm: frozen (deployment-exact) or train." + _from_profile("bn"))]
StuckGradOpt = Annotated[
    Optional[StuckGrad], typer.Option("--stuck-grad", help="Gradient of weights with a stuck cell: block or pass." + _from_profile("stuck_grad"))
]
ScaleGradOpt = Annotated[
    Optional[ScaleGrad],
    typer.Option("--scale-grad", help="Gradient through the full scale a stuck-on cell injects: learn or detach." + _from_profile("scale_grad")),
]
UnbiasOpt = Annotated[
    Optional[bool],
    typer.Option("--unbias-faults/--raw-faults",
                 help="Training chips' weights divided by their expected shrink under faults (inverted-dropout style), or as the chip reads them." + _from_profile("unbias_faults")),
]
CleanStepsOpt = Annotated[
    Optional[float], typer.Option("--clean-steps", help="Fraction (0-1) of retraining steps on a fault-free chip, spread evenly; 0: none." + _from_profile("clean_steps"))
]
WeightClipOpt = Annotated[
    Optional[float], typer.Option("--weight-clip", help="Clip each layer's weights, as its cells hold them, to ± K standard deviations after every retraining step; 0: off." + _from_profile("weight_clip"))
]
DistillOpt = Annotated[
    Optional[float], typer.Option("--distill", help="Weight (0-1) of distillation from the --from model's clean outputs; 0: off." + _from_profile("distill"))
]
ProgressiveBlocksOpt = Annotated[
    Optional[ProgressiveBlocks],
    typer.Option("--progressive-blocks",
                 help="Progressive epochs: split among the rates, or each: --epochs at every rate, the learning rate restarting (the paper's Algorithm 1)." + _from_profile("progressive_blocks")),
]
RateWarmupOpt = Annotated[
    Optional[float], typer.Option("--rate-warmup", help="Epochs over which the fault rate ramps in from 0." + _from_profile("rate_warmup_epochs"))
]
EvalChipsOpt = Annotated[
    Optional[int], typer.Option("--eval-chips", min=0, max=MAX_EVAL_CHIPS, help="Chips at P_sa^T measured after each retraining epoch (the log's faulty column); 0: clean only. "
                                                            f"Default: {_TRAIN_DEFAULTS['eval_chips']}.")
]


def _blocking_ancestor(path: Path) -> Path | None:
    """The nearest existing part of ``path`` (itself or a parent) when it is not a folder: a
    folder cannot be made there."""
    for part in (path, *path.parents):
        if part.exists():
            return None if part.is_dir() else part
    return None


def _out_folder(path: Path | None) -> Path | None:
    """--out names a folder, made if missing: refused before any work when a file stands in its
    way (else the run would end in a traceback at its first write)."""
    if path is None:  # an optional folder not asked for
        return None
    blocking = _blocking_ancestor(path)
    if blocking == path:
        raise ConfigError(f"--out: {path} is a file; expected a folder (new or existing)")
    if blocking is not None:
        raise ConfigError(f"--out: {blocking} is a file; expected a folder there to make {path} in")
    _refuse_unwritable(path)
    return path


def _refuse_unwritable(folder: Path) -> None:
    """Refuse, before any work, an --out whose folder cannot be written (read-only permissions or
    file system): the run would otherwise fail at its first write, after the work."""
    from .files import writable_folder_problem

    problem = writable_folder_problem(folder)
    if problem:
        raise ConfigError(f"--out: {problem}")


def _writes_folders() -> bool:
    """Whether this process writes its run folder: all but the non-zero ranks of a torchrun."""
    return os.environ.get("RANK", "0") in ("", "0")


def _hold(stack, folder: Path | None, *, create: bool) -> None:
    """Hold ``folder``'s lock (:func:`ftdeploy.files.run_folder_lock`) until ``stack`` closes:
    a second process writing it is refused in one line. ``create``: make the folder where it is
    missing; without it a missing folder is left alone (taken later, once the inputs are checked:
    a run refused for its inputs leaves nothing behind)."""
    from .files import run_folder_lock

    if folder is None or not _writes_folders() or (not create and not folder.is_dir()):
        return
    if not folder.exists():  # made here: a command that fails before writing in it leaves no empty folder

        def remove_if_empty(exc_type, exc, tb) -> bool:
            if exc_type is not None:
                try:
                    folder.rmdir()
                except OSError:
                    pass  # not empty (or not ours to remove): left as it is
            return False

        stack.push(remove_if_empty)
    stack.enter_context(run_folder_lock(folder, ConfigError))


def _out_file(path: Path) -> Path:
    """--out names a file to write: refused before any work when it is a folder or a file stands
    where its folder would be made."""
    if path.is_dir():
        raise ConfigError(f"--out: {path} is a folder; expected the file to write")
    blocking = _blocking_ancestor(path.parent)
    if blocking is not None:
        raise ConfigError(f"--out: {blocking} is a file; expected a folder to write {path.name} into")
    _refuse_unwritable(path.parent)
    return path


def _version(value: bool):
    if value:
        typer.echo(f"ftdeploy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
):
    pass


def _echo(text: str = "") -> None:
    typer.echo(text)


# --- profiles -------------------------------------------------------------------------------


@profile_app.command("list")
def profile_list():
    """List the built-in profiles and targets."""
    from .profiles import builtin_profiles, builtin_targets, load_profile, load_target

    profiles = [load_profile(path) for path in builtin_profiles()]
    targets = [load_target(path)[0] for path in builtin_targets()]
    _echo("profiles:")
    # A derived profile says which one it extends: its description alone need not.
    _echo_columns([[r.profile.name, f"target {r.target.name}", _faults_column(r.profile.fault_model),
                    f"extends {r.base_paths[0].stem}" if r.base_paths else "", r.profile.description] for r in profiles])  # fmt: skip
    _echo("targets:")
    _echo_columns([[t.name, t.mapping, f"{t.bits_per_cell}-bit cells, {t.weight_bits}-bit weights", t.description]
                   for t in targets])  # fmt: skip


def _faults_column(faults) -> str:
    """``P_sa 0.01`` and any other kinds by name: what a profile's chips suffer, in one column."""
    others = [k.kind for k in faults.active if k is not faults.stuck]
    return " + ".join([f"P_sa {faults.stuck.total:g}" if faults.stuck else "P_sa 0", *others])


def _echo_columns(rows: list[list[str]]) -> None:
    """Rows indented, every column but the last padded to its widest entry."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)] if rows else []
    for row in rows:
        _echo("  " + "  ".join([cell.ljust(w) for cell, w in zip(row, widths)] + [row[-1]]))


@profile_app.command("show")
def profile_show(name: Annotated[str, typer.Argument(help="Profile name or path.")]):
    """Print a profile with its target resolved, every default filled in."""
    import yaml

    from .profiles import load_profile

    _echo(yaml.safe_dump(load_profile(name).to_dict(), sort_keys=False).rstrip())


@profile_app.command("validate")
def profile_validate(files: Annotated[list[Path], typer.Argument(help="Profile or target YAML files.")]):
    """Validate profile files (with their targets) and target files. Exit 2 with one line per error."""
    from .profiles import is_target_file, load_profile, load_target

    errors = []
    for f in files:
        try:
            if is_target_file(f):
                target, _ = load_target(f)
                _echo(f"ok {f}: target {target.name}")
                continue
            r = load_profile(f)
            _echo(f"ok {f}: profile {r.profile.name}, target {r.target.name}")
        except ConfigError as exc:
            errors.append(str(exc))
    if errors:
        raise ConfigError("\n".join(errors))


@app.command("models")
def models_cmd(pattern: Annotated[str, typer.Argument(help="Glob over registry names.")] = "*"):
    """List registered models (also: tv:NAME for torchvision, package.module:factory)."""
    from .models import list_models

    for name, desc in list_models(pattern):
        _echo(f"{name:<10} {desc}")
    _echo("tv:NAME    any torchvision classification model, e.g. tv:resnet18 (train --weights FILE: from its published weights)")
    _echo("pkg.mod:fn your own factory fn(num_classes=...) -> nn.Module")


# --- train ----------------------------------------------------------------------------------


@app.command("train")
def train_cmd(
    profile: ProfileOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder (model.pt, log.jsonl, summary.csv, config.yaml).", callback=_out_folder)],
    config: Annotated[Optional[Path], typer.Option("--config", help="A TrainConfig YAML file (a run's config.yaml): the fields it sets over the profile's defaults; options typed here over both.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Model name. Default: the --from checkpoint's, else the profile's training.model.")] = None,
    data: DataOpt = None,
    val_split: ValSplitOpt = None,
    image_size: Annotated[Optional[int], typer.Option("--image-size", min=8, max=MAX_IMAGE_SIDE, help="Side in pixels each image is resized (shorter side) and centre-cropped to: the model's input size, recorded in its checkpoint and export. Default: 32, or the --from checkpoint's.")] = None,
    stream: Annotated[Optional[bool], typer.Option("--stream/--in-memory", help="imagefolder:DIR: read the training and validation images from their files batch by batch at every epoch, decoded by DataLoader workers in the order the in-memory run takes them (memory stays flat however many there are), or decode them into memory once. Default: stream when the decoded training images would take more than 2 GiB.")] = None,
    weights: Annotated[Optional[Path], typer.Option("--weights", help="Start the pretraining from this weights file (a torchvision .pth state dict of the --model) instead of random weights; the classifier starts afresh where the data has another class count.")] = None,
    method: Annotated[Optional[TrainMethod], typer.Option("--method", help="pretrain (no faults), one-shot (P_sa^T throughout) or progressive (ascending rates). Default: the profile's training.method.")] = None,
    target_rate: Annotated[Optional[float], typer.Option("--target-rate", help="P_sa^T, the (last) training stuck-at rate. Default: the profile's training.target_rate.")] = None,
    rates: Annotated[Optional[str], typer.Option("--rates", help="Progressive rates, comma separated, ending at P_sa^T. Default: the profile's training.progressive_rates where they end there, else the two ladder rates below P_sa^T, then P_sa^T.")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", max=MAX_EPOCHS, help="Epochs of the run (per rate with --progressive-blocks each). Default: the profile's training.epochs, or training.pretrain_epochs with --method pretrain.")] = None,
    progressive_blocks: ProgressiveBlocksOpt = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate (of the pretraining too, where one runs first). Default: the profile's training.retrain_lr, or training.lr for a pretraining.")] = None,
    batch_size: BatchSizeOpt = None,
    bn: BnOpt = None,
    stuck_grad: StuckGradOpt = None,
    scale_grad: ScaleGradOpt = None,
    unbias_faults: UnbiasOpt = None,
    clean_steps: CleanStepsOpt = None,
    weight_clip: WeightClipOpt = None,
    rate_warmup: RateWarmupOpt = None,
    distill: DistillOpt = None,
    eval_chips: EvalChipsOpt = None,
    train_seed: TrainSeedOpt = None,
    from_ckpt: Annotated[Optional[Path], typer.Option("--from", help="Pretrained checkpoint to retrain; without it, pretrain first.")] = None,
    device: DeviceOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the interrupted run in --out from its last finished epoch (same settings).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Train from scratch in an --out that holds a run, finished or interrupted, replacing it (its model.pt, resume.pt and summary.csv are deleted as training starts).")] = False,
    trust_model_code: TrustModelCodeOpt = False,
):
    """Pretrain, or retrain a pretrained checkpoint fault-tolerantly (one-shot or progressive).

    Without --from and with a fault-tolerant method, pretrains first (out/pretrain) and then
    retrains (out). With --resume, an interrupted run continues exactly where it stopped (a
    finished one is kept as it is). An --out that holds a run is refused without --resume or --force."""
    from .models import check_model_code_allowed
    from .data import load_data
    from .profiles import load_profile
    from .resolve import NO_FILE, pretraining_config, train_config
    from .training.checkpoint import checkpoint_image_size, load_checkpoint
    from .training.config import read_config_file
    from .training.loop import train

    with ExitStack() as held:
        # An existing folder is held at once: a second run there is refused before any work. A new
        # one is made and held by the training itself (training.loop.train), once the model is built:
        # a run refused for its inputs leaves nothing behind.
        _hold(held, out, create=False)
        resolved = load_profile(profile)
        file = read_config_file(config) if config else NO_FILE
        init = load_checkpoint(from_ckpt) if from_ckpt else None
        # A factory typed as --model is the user's own choice; one only the --from checkpoint names is not.
        allow_import = trust_model_code or model is not None
        if init is not None:
            check_model_code_allowed(init["model"], str(from_ckpt), allow_import)
        typed = dict(model=model, image_size=image_size, weights=str(weights) if weights else None, method=method, target_rate=target_rate, progressive_rates=_parse_rates(rates, "--rates") if rates else None,
                     epochs=epochs, lr=lr, batch_size=batch_size, progressive_blocks=progressive_blocks, bn=bn, stuck_grad=stuck_grad,
                     scale_grad=scale_grad, unbias_faults=unbias_faults, clean_steps=clean_steps, weight_clip=weight_clip,
                     rate_warmup_epochs=rate_warmup, distill=distill, eval_chips=eval_chips, seed=train_seed, device=device)  # fmt: skip
        # Both configs are checked before any work: a bad value must not cost a data load or a pretraining.
        # A retraining keeps its checkpoint's model (a model given otherwise is refused here, before the data load).
        cfg = train_config(resolved.profile, typed, file, start_model=init["model"] if init else None,
                           start_image_size=checkpoint_image_size(init) if init else None)  # fmt: skip
        pre_cfg = pretraining_config(resolved.profile, typed, file) if init is None and cfg.method != "pretrain" else None
        if init is None:  # the model is built from its name: one a profile or --config file names runs no code unasked
            check_model_code_allowed(cfg.model, _model_named_by(resolved, file), allow_import)
        run_dirs = {out: cfg, **({out / "pretrain": pre_cfg} if pre_cfg is not None else {})}
        _refuse_training_over_a_run(run_dirs, resume, force)
        bundle = load_data(data, val_split, image_size=cfg.image_size, stream=stream)
        if init is not None and init.get("num_classes") not in (None, bundle.num_classes):
            from .errors import DataError

            raise DataError(f"--data: the --from checkpoint has {init['num_classes']} classes, "
                            f"{data or 'embedded'} has {bundle.num_classes}")  # fmt: skip
        _echo(f"data: {bundle.description}" + ("; streamed from its files at every epoch" if bundle.streamed else ""))
        if force:
            _discard_runs(run_dirs)
        with _progress_bar() as progress:
            if pre_cfg is not None:
                init = train(pre_cfg, bundle, resolved.target, out / "pretrain", profile_name=resolved.profile.name,
                             progress=progress, resume=resume)  # fmt: skip
                _say_initial_weights(init)
                allow_import = True  # the pretraining just run built this model from the user's own settings
                _hold(held, out, create=True)  # made by the pretraining: held from here to the end
            ckpt = train(cfg, bundle, resolved.target, out, init=init, profile_name=resolved.profile.name, progress=progress,
                         resume=resume, allow_model_import=allow_import)  # fmt: skip
        if cfg.method == "pretrain":
            _say_initial_weights(ckpt)
        _echo(f"wrote {out / 'model.pt'}: Acc_pretrain {_pct(ckpt['acc_pretrain'])}, Acc_retrain {_pct(ckpt['acc_retrain'])}")


def _say_initial_weights(ckpt: dict) -> None:
    from .weights import describe

    if ckpt.get("initial_weights"):
        _echo(describe(ckpt["initial_weights"]))


def _model_named_by(resolved, file) -> str:
    """The file (and field) a run's model name came from when not typed as --model."""
    return f"{file.path}: model" if "model" in file.fields else f"{resolved.profile_path}: training.model"


#: What a training leaves in its folder that a fresh one would write over or resume from.
RUN_FILES = ("model.pt", "resume.pt", "summary.csv")


def _run_held(folder: Path, config) -> tuple[str, str] | None:
    """(state, words) of the run an earlier training left in ``folder``: state finished,
    interrupted, other (settings other than ``config``'s, so not resumable) or unreadable; None
    where it left no checkpoint."""
    from .errors import ModelError
    from .training.checkpoint import load_checkpoint, run_differences

    if not (folder / "model.pt").is_file():
        return ("interrupted", "an interrupted run (resume.pt, no model.pt yet)") if (folder / "resume.pt").is_file() else None
    try:
        ckpt = load_checkpoint(folder / "model.pt")
    except ModelError as exc:
        return "unreadable", f"a model.pt that is not a readable checkpoint ({exc})"
    done, total, method = ckpt.get("epochs_done"), ckpt.get("epochs"), ckpt.get("method", "training")
    differ = run_differences(ckpt, config)
    if differ:
        return "other", f"a {method} run trained otherwise ({differ})"
    if isinstance(done, int) and isinstance(total, int) and done < total:
        return "interrupted", f"an interrupted {method} run (model.pt after epoch {done} of {total})"
    return "finished", f"a finished {method} run (model.pt, {done} of {total} epochs)"


def _refuse_training_over_a_run(folders: dict, resume: bool, force: bool) -> None:
    """A training never silently writes over the run in its folder (``folders``: --out, and
    --out/pretrain where a pretraining runs first, each with the config it would train): without
    --resume or --force one line says which to use, before any file there is touched."""
    if resume and force:
        raise ConfigError("--resume and --force: choose one (--resume continues the run in --out, --force starts it again "
                          "from scratch, replacing it)")  # fmt: skip
    if resume or force:
        return
    for folder, config in folders.items():
        held = _run_held(folder, config)
        if held is None:
            continue
        state, words = held
        kept = "keeps it as it is" if folder == next(iter(folders)) else "keeps it and retrains from it"
        fix = {"finished": f"--force retrains from scratch, replacing it; --resume {kept}",
               "interrupted": "--resume continues it; --force starts again from scratch, replacing it",
               "other": "--force replaces it",
               "unreadable": "--force trains there anyway, replacing it"}[state]  # fmt: skip
        raise ConfigError(f"--out: {folder} holds {words}; {fix}; or choose another --out")


def _discard_runs(folders: dict) -> None:
    """--force: the runs a fresh training replaces are deleted as it starts, so that an
    interruption cannot leave the old run's checkpoint beside the new run's config and log."""
    for folder in folders:
        for name in RUN_FILES:
            (folder / name).unlink(missing_ok=True)


def screen_pass_lines(passes: list[tuple[str, Path]], profile) -> list[str]:
    """How to sign off each model that passed the sweep's screen; a row kept from an archive
    (its checkpoint not in the folder) says so instead of naming a file that is not there."""
    lines = []
    for label, ckpt in passes:
        if ckpt.is_file():
            lines.append(f"passes the screen: {label}; sign off with: ftdeploy export {ckpt} --profile {profile} -o model.onnx "
                         f"&& ftdeploy verify model.onnx --profile {profile}")  # fmt: skip
        else:
            lines.append(f"passes the screen: {label}; its checkpoint {ckpt} is not in the folder (a row kept from an "
                         "archive): retrain it to sign it off")  # fmt: skip
    return lines


def _pct(v) -> str:
    return "n/a" if v is None else f"{v:.2f} %"


def _ss_rates(text: str | None, test_rates: list[float]) -> tuple[float, ...]:
    """The sweep's SS columns: those named, each a test rate (else it would have no figure), or
    by default 0.01 and 0.02 where the grid tests them."""
    from .sweep import DEFAULT_SS_RATES

    if text is None:
        return tuple(r for r in DEFAULT_SS_RATES if r in test_rates)
    rates = _parse_rates(text, "--ss-rates")
    untested = [f"{r:g}" for r in rates if r not in test_rates]
    if untested:
        raise ConfigError(f"--ss-rates: {', '.join(untested)} not among --test-rates ({','.join(f'{r:g}' for r in test_rates)})")
    return tuple(rates)


def _parse_rates(text: str, option: str) -> list[float]:
    """Comma-separated ascending rates in [0, 1], given as ``option``."""
    try:
        rates = [float(r) for r in text.split(",") if r.strip()]
    except ValueError:
        raise ConfigError(f"{option}: expected comma-separated numbers, found {text!r}") from None
    if not rates or rates != sorted(rates) or not all(0 <= r <= 1 for r in rates):
        raise ConfigError(f"{option}: expected ascending rates in [0, 1], found {text!r}")
    return rates


# --- equalize / export / verify -------------------------------------------------------------


@app.command("equalize")
def equalize_cmd(
    ckpt: Annotated[Path, typer.Argument(help="Checkpoint to equalize (ftdeploy model.pt).")],
    profile: ProfileOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint to write (written atomically).", callback=_out_file)],
    data: CheckpointDataOpt = None,
    val_split: CheckpointValSplitOpt = None,
    trust_model_code: TrustModelCodeOpt = False,
):
    """Equalize channel ranges for a target with BatchNorm in the periphery: each conv output
    channel scaled up to its layer's largest weight and its BatchNorm statistics with it. The
    same function, every channel on the full code range, so a stuck-on cell costs each channel
    its own full scale, not the layer's. Writes a checkpoint for train --from, sweep --from and export."""
    from .models import check_model_code_allowed
    from .data import checkpoint_data, load_validation
    from .equalize import check_equalizable, equalize_checkpoint
    from .files import sha256_file
    from .profiles import load_profile
    from .training.checkpoint import load_checkpoint, save_atomic

    resolved = load_profile(profile)
    check_equalizable(resolved.target)  # before any data is decoded
    parent = load_checkpoint(ckpt)
    check_model_code_allowed(parent["model"], str(ckpt), trust_model_code)
    val = checkpoint_data(parent.get("data"), data, val_split, loader=load_validation)
    result = equalize_checkpoint(parent, resolved.target, val, source_sha256=sha256_file(ckpt), allow_model_import=trust_model_code)
    save_atomic(result, out)
    record = result["equalization"]
    gains = [layer["median_gain"] for layer in record["layers"]]
    _echo(f"wrote {out}: {len(gains)} layers equalized for {resolved.target.name} (median channel gain per layer "
          f"{min(gains):.2f}-{max(gains):.2f}); fault-free deployed accuracy {_pct(record['acc_before'])} -> "
          f"{_pct(record['acc_after'])} on {record['images']} validation images")  # fmt: skip


@app.command("export")
def export_cmd(
    ckpt: Annotated[Path, typer.Argument(help="Checkpoint to export (ftdeploy model.pt).")],
    profile: ProfileOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="ONNX file to write (written atomically).", callback=_out_file)],
    trust_model_code: TrustModelCodeOpt = False,
    sign: SignOpt = None,
):
    """Export a checkpoint to ONNX: BatchNorm folded or kept as the target says, each weight as
    the uint8 levels of its cells (decoded by standard DequantizeLinear/Add/Sub/Mul), everything
    else in metadata."""
    from .models import check_model_code_allowed
    from .export import export_onnx
    from .profiles import load_profile
    from .training.checkpoint import load_checkpoint

    resolved = load_profile(profile)
    key = _signing_key(sign)  # a wrong passphrase must not cost an export first
    ckpt_data = load_checkpoint(ckpt)
    check_model_code_allowed(ckpt_data["model"], str(ckpt), trust_model_code)
    trained_for = (ckpt_data.get("target") or {}).get("name")
    if trained_for and trained_for != resolved.target.name:
        _err(f"warning: {ckpt} was trained for target {trained_for}, exporting for {resolved.target.name}")
    summary = export_onnx(ckpt_data, resolved, out, allow_model_import=trust_model_code, sign_with=key)
    signed = f", signed by {summary['signer'][:16]}" if summary["signer"] else ""
    _echo(f"wrote {out}: {len(summary['layers'])} crossbar layers, {summary['cells']:,} cells on {summary['tiles']} tiles "
          f"({summary['mapping']}), content sha256 {summary['content_sha256'][:16]}{signed}")  # fmt: skip
    _echo(_digital_line(summary))
    for line in summary["placement"].describe(summary["cell_names"]):
        _echo(line)


def _digital_line(summary: dict) -> str:
    """Which weights are on cells and what stays in the digital periphery, by module type."""
    by_type: dict[str, int] = {}
    for record in summary["digital"]:
        by_type[record["type"]] = by_type.get(record["type"], 0) + record["values"]
    on_cells, digital = summary["weights_on_cells"], sum(by_type.values())
    kinds = ", ".join(f"{kind} {n:,}" for kind, n in sorted(by_type.items(), key=lambda kv: -kv[1]))
    share = 100.0 * on_cells / (on_cells + digital)
    return (f"on cells: {on_cells:,} weights ({share:.1f} % of the parameters); digital: {digital:,} values"
            + (f" ({kinds})" if kinds else ""))


@app.command("verify")
def verify_cmd(
    onnx_file: Annotated[Path, typer.Argument(help="ONNX file written by ftdeploy export.")],
    profile: ProfileOpt,
    data: DataOpt = None,
    val_split: ValSplitOpt = None,
    chips: SignOffChipsOpt = None,
    chip_seed: ChipSeedOpt = None,
    max_images: SignOffMaxImagesOpt = None,
    all_images: Annotated[bool, typer.Option("--all-images", help="Measure on every image of --data (a test set of your own), not on its held-out validation part; not with --val-split.")] = False,
    reference: Annotated[Optional[Path], typer.Option("--reference", help="The fault-free starting model (the pretrained model, exported for the same target): Acc_pretrain is its accuracy on the images measured here.")] = None,
    fault_maps: Annotated[Optional[Path], typer.Option("--fault-maps", help="Measure physical chips instead: a folder of fault maps (*.csv, *.npz), one per chip, as a chip tester reports its stuck cells (docs/fault-maps.md); each chip is judged against the profile's signoff.chip_spec, one line (and one JUnit test case) per chip; exit 1 when any chip fails it.")] = None,
    program: Annotated[bool, typer.Option("--program", help="With --fault-maps: program each chip around its own map (as `ftdeploy program` does) and measure it again; the report shows each chip's accuracy and the lot's yield unprogrammed and programmed, and judges the programmed chips.")] = False,
    permute_rows: Annotated[bool, typer.Option("--permute-rows", help="With --program, on a target with row_permutation: also permute each tile's rows as `ftdeploy program --permute-rows` does.")] = False,
    field_rate: Annotated[Optional[float], typer.Option("--field-rate", min=0.0, max=1.0, help="With --fault-maps: field faults (cells failing after programming), total stuck-at probability per cell added on top of each chip's map. Default: the profile's signoff.field_rate.")] = None,
    fixed_chips: Annotated[bool, typer.Option("--fixed-chips", help="Simulate every one of --chips chips at each rate, rather than drawing them in batches and stopping a rate once its limits are decided (the profile's signoff.sequential).")] = False,
    device: Annotated[Optional[str], typer.Option("--device", help="Where ONNX Runtime runs the chips: cpu, cuda[:N] (its CUDA execution provider: pip install 'ftdeploy[gpu]'), or auto (CUDA where available, else the CPU, saying so). Default: cpu.", callback=_checked_onnx_device)] = None,
    chip: Annotated[Optional[str], typer.Option("--chip", help="Rerun one simulated chip alone, RATE:INDEX (a sign-off rate's total and the chip's index, as the report lists its worst chips); prints its accuracy and whether it meets the chip spec.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Report folder: report.json (source of truth), report.md, report.xml (JUnit, for CI) and report.html (one page with figures).", callback=_out_folder)] = None,
    trust: TrustOpt = None,
    sign: Annotated[Optional[Path], typer.Option("--sign", help="Sign the report with this private key: report.sig beside report.json (needs --out). See docs/signing.md.")] = None,
    ray: RayOpt = None,
    ray_workers: RayWorkersOpt = None,
    stream: StreamOpt = None,
):
    """Sign off an ONNX export on simulated faulty chips with ONNX Runtime. Prints one
    PASSED/FAILED line per acceptance limit; exit 0 when all pass, 1 when one fails, 2 on bad input.
    With --fault-maps, measures the chips the maps describe instead."""
    from .profiles import load_profile
    from .report import verdict_lines
    from .resolve import with_field_rate
    from .verify import verify_chip, verify_onnx

    with ExitStack() as held:
        _hold(held, out, create=False)  # an existing report folder at once: a second verify is refused before any work
        resolved = with_field_rate(load_profile(profile), field_rate)
        _refuse_a_checkpoint(onnx_file, profile)
        if reference is not None:
            _refuse_a_checkpoint(reference, profile)
        if sign is not None and out is None:
            raise ConfigError("--sign: signs the report folder; give --out DIR too")
        report_key = _signing_key(sign)
        # Before any chip runs: a file that no trusted key signed is refused, not measured.
        signature = _checked_signatures(onnx_file, reference, trust)
        if fault_maps is not None and stream is not None:
            raise ConfigError("--stream/--in-memory: for simulated chips; --fault-maps decodes its images into memory")
        if fault_maps is not None:
            _verify_fault_maps(onnx_file, resolved, fault_maps, out, data, signature=signature, report_key=report_key,
                               val_split=val_split, max_images=max_images,
                               all_images=all_images, reference=reference, program=program, permute_rows=permute_rows,
                               simulated_only={"--chips": chips, "--chip-seed": chip_seed, "--chip": chip,
                                               "--fixed-chips": fixed_chips or None, "--ray": ray, "--device": device})  # fmt: skip
            return
        if field_rate is not None:
            raise ConfigError("--field-rate: adds field faults to measured chips; give --fault-maps DIR (simulated sign-off "
                              "draws every fault at its rates)")  # fmt: skip
        if program or permute_rows:
            flag = "--program" if program else "--permute-rows"
            raise ConfigError(f"{flag}: programs each chip around its fault map; give --fault-maps DIR")
        if ray_workers is not None and ray is None:
            raise ConfigError("--ray-workers: sets the workers of --ray; give --ray too")
        if chip is not None:
            if ray is not None:
                raise ConfigError("--ray: spreads many chips over workers; --chip reruns one, here")
            one = verify_chip(onnx_file, resolved, _chip_option(chip), data, chip_seed, reference=reference, val_split=val_split,
                              max_images=max_images, all_images=all_images, stream=stream, device=device)  # fmt: skip
            _echo(one["line"])
            return
        with _progress_bar() as progress:
            log = progress.console.print if progress else _err
            report = verify_onnx(onnx_file, resolved, data, chips, chip_seed, reference=reference, val_split=val_split,
                                 max_images=max_images, all_images=all_images, progress=progress, log=log,
                                 sequential=False if fixed_chips else None, ray=ray, ray_workers=ray_workers,
                                 stream=stream, device=device)  # fmt: skip
        _record_signature(report, signature)
        _finish_verify(report, verdict_lines(report), out, report_key, "sign-off failed")


def _finish_verify(report: dict, lines: list[str], out: Path | None, report_key, failed: str) -> None:
    """The end of every verify: its verdict lines, the report written where --out says (or a line
    saying none was), and exit 1 (SignOffFailed, its message starting ``failed``) on a failed verdict."""
    from .errors import SignOffFailed
    from .report import report_files, write_report

    for line in lines:
        _echo(line)
    if out is not None:
        with ExitStack() as held:
            _hold(held, out, create=True)  # held already where it existed before the verify began
            _echo(f"wrote {', '.join(map(str, write_report(report, out, sign=report_key)))}")
    else:
        *names, last = report_files(report)
        _echo(f"no report written (give --out DIR for {', '.join(names)} and {last})")
    if not report["verdict"]["passed"]:
        where = f"; see {out / 'report.md'}" if out is not None else ""
        raise SignOffFailed(f"{failed}: {report['verdict']['summary']}{where}")


def _signing_key(path: Path | None):
    if path is None:
        return None
    from .signing import load_signing_key

    return load_signing_key(path)


def _checked_signatures(onnx_file: Path, reference: Path | None, trust: list[Path] | None) -> dict:
    """The file's signature record; with --trust, checked (the reference's too: its accuracy
    sets Acc_pretrain), raising one line for a file no trusted key signed."""
    from .signing import load_trusted_keys, onnx_signature

    trusted = load_trusted_keys(trust) if trust else None
    record = onnx_signature(onnx_file, trusted)
    if reference is not None and trusted is not None:
        record["reference_signer"] = onnx_signature(reference, trusted)["signer"]
    return record


def _record_signature(report: dict, signature: dict) -> None:
    """Put who signed the file, and whether it was checked, in the report; refuse a report of
    another file than the one checked (replaced on disk between the check and the measurement)."""
    from .errors import VerifyError

    if signature["checked"] and report["model"]["sha256"] != signature["file_sha256"]:
        raise VerifyError(f"{report['model']['file']}: changed on disk while it was verified; verify it again")
    report["model"]["signature"] = {k: v for k, v in signature.items() if k != "file_sha256"}


def _chip_option(text: str) -> tuple[float, int]:
    """``--chip RATE:INDEX`` as (rate, index)."""
    from .errors import ConfigError

    rate, sep, index = text.partition(":")
    try:
        parsed = float(rate), int(index)
    except ValueError:
        parsed = None
    if not sep or parsed is None or not 0 <= parsed[1] < MAX_CHIPS or not 0 <= parsed[0] <= 1:
        raise ConfigError(f"--chip: expected RATE:INDEX, a sign-off rate and a chip index below {MAX_CHIPS:,} (e.g. 0.01:7), found {text[:80]!r}")
    return parsed


def _refuse_a_checkpoint(path: Path, profile: str) -> None:
    """verify reads the ONNX file that export writes: a checkpoint given instead (told by its
    bytes, whatever its name) is one line with the command that exports it."""
    import shlex

    from .errors import VerifyError
    from .files import torch_file_format

    found = torch_file_format(path)
    if found is None:
        return
    if found.startswith("ftdeploy-checkpoint/"):
        what, ckpt = "a training checkpoint", path
    elif found.startswith("ftdeploy-resume/"):  # a run's resume state: the run's model.pt is what exports
        what, ckpt = "a run's resume file", path.with_name("model.pt")
    else:
        raise VerifyError(f"{path}: a PyTorch file, not an ONNX export; verify signs off the ONNX file that "
                          "`ftdeploy export` writes from an ftdeploy checkpoint")  # fmt: skip
    onnx_out = ckpt.with_suffix(".onnx") if ckpt.suffix != ".onnx" else ckpt.with_name(f"{ckpt.stem}-export.onnx")
    export = " ".join(shlex.quote(str(arg)) for arg in ("ftdeploy", "export", ckpt, "--profile", profile, "-o", onnx_out))
    raise VerifyError(f"{path}: {what}, not an ONNX export; export it first: {export} (then verify {onnx_out})")


def _err(text: str) -> None:
    typer.echo(text, err=True)


# --- signing: keys and signed reports -------------------------------------------------------


@app.command("keygen")
def keygen_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Key name: writes NAME.key (private, mode 0600) and NAME.pub (public); never overwrites.")],
):
    """Make an Ed25519 key pair for signing exports and reports. The private key stays with the
    release engineer (encrypted with $FTDEPLOY_KEY_PASSPHRASE where set); the production line
    gets only NAME.pub, to --trust. See docs/signing.md."""
    from .signing import PASSPHRASE_ENV, generate_key_pair

    key, pub, fp = generate_key_pair(out)
    how = f"encrypted with ${PASSPHRASE_ENV}" if os.environ.get(PASSPHRASE_ENV) else f"not encrypted (set {PASSPHRASE_ENV} to encrypt)"
    _echo(f"wrote {key} (private, mode 0600, {how}) and {pub} (public); fingerprint {fp}")


@app.command("verify-report")
def verify_report_cmd(
    folder: Annotated[Path, typer.Argument(help="Report folder written by verify --sign KEY --out DIR.")],
    trust: Annotated[list[Path], typer.Option("--trust", help="A trusted public key file (a file may hold several; repeat for more).")],
):
    """Check a signed report folder: report.sig names every report file with its SHA-256 and is
    signed by a trusted key. Exit 0 when it holds, 2 (one line) when it does not."""
    from .signing import check_report_folder, load_trusted_keys

    record = check_report_folder(folder, load_trusted_keys(trust))
    _echo(f"{folder}: {', '.join(record['files'])} signed by {record['signer']}: signature verified")


# --- fault maps: measured chips -----------------------------------------------------------------

faultmap_app = _App(cls=_Group, no_args_is_help=True, rich_markup_mode="markdown",
                    help="Fault maps: the stuck cells of physical chips, as a chip tester reports them (docs/fault-maps.md).")  # fmt: skip
app.add_typer(faultmap_app, name="faultmap")


@faultmap_app.command("simulate")
def faultmap_simulate_cmd(
    onnx_file: Annotated[Path, typer.Argument(help="ONNX file written by ftdeploy export: where the model's cells sit on the chip.")],
    profile: ProfileOpt,
    rate: Annotated[float, typer.Option("--rate", min=0.0, max=1.0, help="Total stuck-at probability per cell, split stuck-off : stuck-on as the profile's stuck-at entry states (as a sign-off rate is).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the maps to: chip-0000.csv, chip-0001.csv, ...", callback=_out_folder)],
    chips: Annotated[Optional[int], typer.Option("--chips", min=1, max=MAX_CHIPS, help="Maps to write, one per chip. Default: the profile's signoff.chips.")] = None,
    chip_seed: ChipSeedOpt = None,
    form: Annotated[FaultMapForm, typer.Option("--format", help="csv (what a tester writes with a spreadsheet) or npz (compact, for large chips).")] = "csv",
    tiles: Annotated[Optional[int], typer.Option("--tiles", min=1, help="Tiles of the chip. Default: the tiles the model occupies.")] = None,
):
    """Write the fault maps of simulated chips, as a chip tester would report them: map k lists
    the stuck cells of the chip that sign-off simulates as chip k at this rate and seed, so
    `verify --fault-maps` on these maps measures the very chips `verify` simulates. The chip's
    cells that hold nothing of the model are stuck at the same rates too."""
    from .measured import simulate_fault_maps
    from .placement import placement_of
    from .profiles import load_profile
    from .resolve import signoff_settings
    from .verify import load_for_profile

    resolved = load_profile(profile)
    _refuse_a_checkpoint(onnx_file, profile)
    if resolved.profile.fault_model.stuck is None and rate > 0:
        raise ConfigError(f"--rate {rate:g}: a total stuck-at rate is split with the stuck-off : stuck-on ratio of the "
                          f"stuck-at entry in the profile's faults, and {resolved.profile.name} has none; add one")  # fmt: skip
    settings = signoff_settings(resolved.profile.signoff, dict(chips=chips, seed=chip_seed))
    placement = placement_of(load_for_profile(onnx_file, resolved))
    with ExitStack() as held:
        _hold(held, out, create=True)
        written = simulate_fault_maps(placement, resolved.profile.signoff_faults(rate), rate, settings.seed, settings.chips,
                                      out, form, tiles)  # fmt: skip
    _echo(f"wrote {len(written)} fault maps to {out} ({written[0].name} ... {written[-1].name}): chips 0-{len(written) - 1} "
          f"at stuck-at rate {rate:g}, seed {settings.seed}, on {tiles or placement.tiles} tiles of "
          f"{placement.tile_rows} x {placement.tile_cols} cells")  # fmt: skip


def _verify_fault_maps(onnx_file: Path, resolved, fault_maps: Path, out: Path | None, data: str | None, *, simulated_only: dict,
                       signature: dict | None = None, report_key=None, **options) -> None:  # fmt: skip
    """``verify --fault-maps``: each measured chip PASSED/FAILED against the chip spec, then the
    lot's verdict; the report where --out says; exit 1 when a chip fails."""
    from .lot import verify_lot
    from .lot_report import lot_lines

    given = [name for name, value in simulated_only.items() if value is not None]
    if given:
        raise ConfigError(f"{', '.join(given)}: simulated chips only; --fault-maps measures the chips its maps describe")
    with _progress_bar() as progress:
        log = progress.console.print if progress else _err
        report = verify_lot(onnx_file, resolved, fault_maps, data, progress=progress, log=log, **options)
    if signature is not None:
        _record_signature(report, signature)
    _finish_verify(report, lot_lines(report), out, report_key, "measured chips failed")


@app.command("program")
def program_cmd(
    onnx_file: Annotated[Path, typer.Argument(help="ONNX file written by ftdeploy export.")],
    profile: ProfileOpt,
    fault_map: Annotated[Path, typer.Option("--fault-map", help="The chip's fault map (*.csv, *.npz), as its tester reports its stuck cells (docs/fault-maps.md).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="ONNX file to write for this chip (written atomically).", callback=_out_file)],
    permute_rows: Annotated[bool, typer.Option("--permute-rows", help="Also route each tile's rows to the physical rows where the chip's stuck cells cost its weights least (a target with row_permutation: true); the file records where each row goes (docs/fault-maps.md).")] = False,
    trust: TrustOpt = None,
    sign: SignOpt = None,
):
    """Program one chip around its own stuck cells: each weight with a stuck cell gets the levels
    of its healthy cells that read closest to its code (never worse than the export's), and the
    result is written as an export for that chip alone, recording its id and map's SHA-256. With
    --trust, the export must be signed by a trusted key; the chip's file is signed anew with --sign
    (the export's signature does not cover its new cells and is dropped)."""
    from .profiles import load_profile
    from .programming import program_export
    from .verify import load_for_profile

    resolved = load_profile(profile)
    _refuse_a_checkpoint(onnx_file, profile)
    load_for_profile(onnx_file, resolved)  # the profile's target, or one line before any work
    _checked_signatures(onnx_file, None, trust)
    record = program_export(onnx_file, fault_map, out, sign_with=_signing_key(sign), permute_rows=permute_rows)
    if permute_rows:
        _echo(f"rows permuted: {record['rows_moved']:,} rows moved in {len(record['row_permutation']):,} tiles; summed residual "
              f"error {record['residual_unpermuted']:,} -> {record['residual_permuted']:,} codes")  # fmt: skip
    _echo(f"wrote {out}: programmed for chip {record['chip']} (map sha256 {record['fault_map_sha256'][:16]}): "
          f"{record['weights_reprogrammed']:,} of {record['weights_with_stuck_cells']:,} weights with stuck cells reprogrammed "
          f"({record['cells_reprogrammed']:,} cells); weights reading their exact code {record['exact_before']:,} -> {record['exact_after']:,}")  # fmt: skip


# --- prune ----------------------------------------------------------------------------------


@app.command("prune")
def prune_cmd(
    ckpt: Annotated[Path, typer.Argument(help="Checkpoint to prune (ftdeploy model.pt, usually a pretrained one).")],
    profile: ProfileOpt,
    method: Annotated[PruneMethod, typer.Option("--method", help="magnitude (one-shot, Han et al. 2015) or admm (Zhang et al. 2018).")],
    sparsity: Annotated[float, typer.Option("--sparsity", help="Fraction of weights zeroed in each pruned layer, in (0, 1).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder (model.pt, log.jsonl, summary.csv, config.yaml).", callback=_out_folder)],
    epochs: Annotated[Optional[int], typer.Option("--epochs", max=MAX_EPOCHS, help="Masked fine-tuning epochs. Default: the profile's training.epochs.")] = None,
    admm_epochs: Annotated[Optional[int], typer.Option("--admm-epochs", max=MAX_EPOCHS, help="ADMM epochs before hard pruning. Default: as --epochs.")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Learning rate of ADMM and fine-tuning. Default: the profile's training.retrain_lr.")] = None,
    data: CheckpointDataOpt = None,
    val_split: CheckpointValSplitOpt = None,
    train_seed: TrainSeedOpt = None,
    device: DeviceOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted fine-tuning in --out (the pruning itself is redone).")] = False,
    trust_model_code: TrustModelCodeOpt = False,
):
    """Prune a checkpoint (first and last layer kept dense), then fine-tune with the pruned
    weights held at zero. Later fault-tolerant retraining (train --from) keeps them zero too."""
    from .models import check_model_code_allowed
    from .data import checkpoint_data
    from .profiles import load_profile
    from .prune import PruneConfig, prune
    from .resolve import prune_settings
    from .training.checkpoint import load_checkpoint

    resolved = load_profile(profile)
    typed = dict(epochs=epochs, admm_epochs=admm_epochs, lr=lr, seed=train_seed, device=device)
    config = PruneConfig(method=method, sparsity=sparsity, **prune_settings(resolved.profile, typed))
    parent = load_checkpoint(ckpt)
    check_model_code_allowed(parent["model"], str(ckpt), trust_model_code)
    bundle = checkpoint_data(parent.get("data"), data, val_split)
    _echo(f"data: {bundle.description}")
    with ExitStack() as held, _progress_bar() as progress:
        _hold(held, out, create=False)  # a new folder: made and held by prune itself, its inputs checked
        log = progress.console.print if progress else _echo
        result = prune(ckpt, config, bundle, resolved.target, out, profile_name=resolved.profile.name, progress=progress,
                       log=log, resume=resume, allow_model_import=trust_model_code)  # fmt: skip
    before = result["pruning"]["acc_before_finetune"]
    _echo(f"wrote {out / 'model.pt'}: {method}, sparsity {result['sparsity']:.1%} (target {sparsity:.1%}), "
          f"Acc_pretrain {_pct(result['acc_pretrain'])} ({_pct(before)} before fine-tuning)")  # fmt: skip


# --- sweep / demo ---------------------------------------------------------------------------


@app.command("sweep")
def sweep_cmd(
    from_ckpt: Annotated[Path, typer.Option("--from", help="Pretrained checkpoint: the baseline row and every retraining's start.")],
    profile: ProfileOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Sweep folder (runs/, results/, table.md/.csv/.json).", callback=_out_folder)],
    methods: Annotated[str, typer.Option("--methods", metavar=f"<{'|'.join(get_args(RetrainMethod))}>,...", help="Retraining methods, comma separated.")] = "one-shot,progressive",
    train_rates: Annotated[str, typer.Option("--train-rates", help="Comma-separated P_sa^T values.")] = "0.01,0.05,0.1",
    test_rates: Annotated[str, typer.Option("--test-rates", help="Comma-separated test rates (0 = clean).")] = "0,0.001,0.005,0.01,0.02,0.05,0.1",
    ss_rates: Annotated[Optional[str], typer.Option("--ss-rates", help="Test rates whose Stability Score is tabulated; each must be a --test-rates one. Default: 0.01 and 0.02 where tested.")] = None,
    chips: ChipsOpt = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", max=MAX_EPOCHS, help="Retraining epochs per model (per rate with --progressive-blocks each). Default: the profile's training.epochs.")] = None,
    progressive_blocks: ProgressiveBlocksOpt = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate of every retraining. Default: the profile's training.retrain_lr.")] = None,
    batch_size: BatchSizeOpt = None,
    bn: BnOpt = None,
    stuck_grad: StuckGradOpt = None,
    scale_grad: ScaleGradOpt = None,
    jobs: Annotated[int, typer.Option("--jobs", max=MAX_JOBS, help="Retrainings run at once (separate processes).")] = 1,
    max_images: SweepMaxImagesOpt = None,
    no_train: Annotated[bool, typer.Option("--no-train", help="Train nothing: tabulate the checkpoints already in OUT/runs as they are.")] = False,
    rate_warmup: RateWarmupOpt = None,
    unbias_faults: UnbiasOpt = None,
    clean_steps: CleanStepsOpt = None,
    weight_clip: WeightClipOpt = None,
    distill: DistillOpt = None,
    eval_chips: EvalChipsOpt = None,
    chip_seed: ChipSeedOpt = None,
    chip_batch: Annotated[Optional[int], typer.Option("--chip-batch", help="Chips evaluated in one forward pass (their weights stacked; the same chips either way): more keeps a GPU busy. Default: the profile's signoff.chip_batch.")] = None,
    train_seed: SweepTrainSeedOpt = None,
    data: DataOpt = None,
    val_split: ValSplitOpt = None,
    device: DeviceOpt = None,
    trust_model_code: TrustModelCodeOpt = False,
    ray: RayOpt = None,
    ray_workers: RayWorkersOpt = None,
):
    """Retrain a grid (methods × training rates) from one pretrained model and write a Table
    I-style table (Markdown, CSV, JSON). Resumable: rerun the same command after an interruption."""
    from .data import load_data
    from .training.checkpoint import checkpoint_image_size
    from .files import folder_given
    from .profiles import load_profile
    from .resolve import signoff_settings, train_config
    from .sweep import SweepSettings, run_sweep

    if ray_workers is not None and ray is None:
        raise ConfigError("--ray-workers: sets the workers of --ray; give --ray too")
    resolved = load_profile(profile)
    screen = signoff_settings(resolved.profile.signoff, dict(chips=chips, seed=chip_seed, chip_batch=chip_batch))
    # The shared recipe is checked before any work, with the same rules and messages as `train`'s:
    # a bad value must not surface after the data load and the baseline's evaluation. Each cell
    # then sets its own method, rates, model and faults (SweepSettings.train_config). The
    # trainings' seed stands in for the profile's training seed with the chip seed.
    typed = dict(method="one-shot", epochs=epochs, lr=lr, batch_size=batch_size, progressive_blocks=progressive_blocks, bn=bn,
                 stuck_grad=stuck_grad, scale_grad=scale_grad, unbias_faults=unbias_faults, clean_steps=clean_steps,
                 weight_clip=weight_clip, rate_warmup_epochs=rate_warmup, distill=distill, eval_chips=eval_chips, seed=train_seed,
                 device=device)  # fmt: skip
    recipe = train_config(resolved.profile, typed, defaults={"seed": screen.seed})
    if from_ckpt.is_dir():
        raise ConfigError("--from: " + folder_given(from_ckpt, "a checkpoint file", "model.pt"))
    if not from_ckpt.is_file():
        raise ConfigError(f"--from: checkpoint {from_ckpt} not found")
    if jobs < 1:
        raise ConfigError(f"--jobs: expected at least 1 retraining at a time, found {jobs}")
    tested, trained = _parse_rates(test_rates, "--test-rates"), _parse_rates(train_rates, "--train-rates")
    settings = SweepSettings(
        pretrained=from_ckpt, profile=resolved, test_rates=tested,
        chips=screen.chips, seed=screen.seed, recipe=recipe, data_spec=data, val_split=val_split,
        ss_rates=_ss_rates(ss_rates, tested), max_images=max_images, train=not no_train,
        allow_model_import=trust_model_code, chip_batch=screen.chip_batch, ray=ray, ray_workers=ray_workers,
    )  # fmt: skip
    settings.pretrained_checkpoint  # loaded once, and a bad file refused before the data loads
    bundle = load_data(data, val_split, image_size=checkpoint_image_size(settings.pretrained_checkpoint))
    table = run_sweep(settings, [m.strip() for m in methods.split(",") if m.strip()], trained, out, bundle, jobs)
    from .sweep import render_markdown, screen_passes

    _echo(f"Acc_pretrain {table['acc_pretrain']:.2f} % on {table['val_images']} held-out images, {settings.chips} chips per rate")
    _echo(render_markdown(table).rstrip())
    passes = screen_passes(table, out)
    for line in screen_pass_lines(passes, profile):
        _echo(line)
    if not passes:
        _echo(f"no model passes profile {resolved.profile.name}'s sign-off limits on these chips")
    _echo(f"wrote {out / 'table.md'}, table.csv, table.json")


@app.command("demo")
def demo_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the three runs, ONNX files and reports.", callback=_out_folder)] = Path("demo-out"),
    profile: ProfileOpt = "demo",
    device: DeviceOpt = None,
    trust_model_code: TrustModelCodeOpt = False,
):
    """Pretrain, retrain one-shot and progressive, export and sign off the models on the embedded
    data (the pretrained one also equalised, where the target allows), and print them side by
    side (about a minute on 2 CPU cores)."""
    import time

    from .demo import LEGEND, comparison_rows, ft_beats_baseline, run_demo
    from .profiles import load_profile

    from .models import check_model_code_allowed

    resolved = load_profile(profile)
    check_model_code_allowed(resolved.profile.training.model, f"{resolved.profile_path}: training.model", trust_model_code)
    t0 = time.perf_counter()
    with ExitStack() as held:
        _hold(held, out, create=True)
        reports = run_demo(resolved, out, device, log=_echo)
    header, rows = comparison_rows(reports)
    signoff = resolved.profile.signoff
    title = (f"{resolved.profile.name} on {resolved.target.name}: accuracy on {reports['baseline']['data']['images']} "
             f"held-out embedded images, {signoff.chips} chips per rate")  # fmt: skip
    _print_table(title, header, rows)
    for name, text in LEGEND.items():
        if name in reports:
            _echo(f"{name}: {text}")
    for name, better in ft_beats_baseline(reports).items():
        _echo(f"{name}: {'beats' if better else 'does NOT beat'} the baseline under faults at every sign-off rate")
    _echo(f"reports in {out / 'reports'}; {time.perf_counter() - t0:.0f} s in all")


def _print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    """A rich table on a terminal, aligned plain text when piped."""
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for i, h in enumerate(header):
            table.add_column(h, justify="left" if i == 0 else "right")
        for row in rows:
            table.add_row(*row)
        Console().print(table)
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    _echo(title)
    for line in [header, *rows]:
        _echo("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))))


@contextmanager
def _progress_bar():
    """A rich progress bar on a terminal, nothing (plain per-epoch lines) when piped."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as p:  # stdout stays clean for results
        yield p


def _interrupt(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: a second TERM must not cut the clean exit short
    raise KeyboardInterrupt


def main() -> None:
    """Console-script entry point: the one place FtdeployError becomes a message and exit code.

    SIGTERM (a job scheduler, a deadline, ``kill``) stops a run the way Ctrl-C does: completed
    epochs stay saved and the exit status is 130. A process started in the background by a
    non-interactive shell ignores SIGINT, so for such runs SIGTERM is the way to stop them."""
    from .files import die_with_parent

    die_with_parent()  # a training a sweep started ends with the sweep
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        _run_app()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_app() -> None:
    try:
        # Outside standalone mode typer turns Ctrl-C (and typer.Exit) into a *returned* exit
        # code; ignoring it made an interrupted run exit 0 and look finished to its caller.
        code = app(standalone_mode=False)
        if isinstance(code, int) and not isinstance(code, bool) and code:
            raise KeyboardInterrupt if code == 130 else typer.Exit(code)
    except FtdeployError as exc:
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted: completed epochs are saved in the run folder", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # click's usage errors arrive here in non-standalone mode
        if isinstance(exc, _click_classes("BadParameter")):  # a value the option refuses (a choice, a range): one line
            print(f"error: {exc.format_message().replace('Value error, ', '')}", file=sys.stderr)
            sys.exit(2)
        if isinstance(exc, _click_classes("ClickException")):
            exc.show()
            sys.exit(2)
        if isinstance(exc, _click_classes("Abort")):
            sys.exit(130)
        raise


def _click_classes(name: str) -> tuple[type, ...]:
    """click's exception class ``name``, from typer's vendored copy (recent typer raises its
    own ``typer._click`` exceptions) and from click itself, whichever are installed."""
    import importlib

    found = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(found)
