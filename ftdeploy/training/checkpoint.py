"""Checkpoints and resume files: what a run writes after every epoch, and how they are read
back (by export, prune, equalize, the sweep and a resumed run). Nothing here trains."""

from __future__ import annotations

import dataclasses
import io
import json
import math
from pathlib import Path

import torch
import torch.nn as nn

from ..data import CIFAR_SIDE, recorded_image_size
from ..errors import ConfigError, ModelError
from ..files import folder_given, is_onnx_file, reason_line, write_atomic
from ..limits import MAX_CLASSES, MAX_IMAGE_SIDE, shown
from ..models import model_from_file_name
from ..profiles import Target
from .config import RESUME_KEEPS, RESUME_MAY_DIFFER, TrainConfig

CHECKPOINT_FORMAT = "ftdeploy-checkpoint/1"
RESUME_FORMAT = "ftdeploy-resume/1"


# --- checkpoints ----------------------------------------------------------------------------


def save_atomic(obj, path: Path) -> None:
    """Save a checkpoint via a temporary file and a rename: an interrupted save never leaves a
    torn file, and the previous epoch's checkpoint stays until the new one is complete."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(path, buffer.getvalue(), ModelError)


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise ModelError(folder_given(path, "a checkpoint file", "model.pt"))
    if not path.is_file():
        raise ModelError(f"{path}: checkpoint not found")
    ckpt = _load_tensors_file(path, CHECKPOINT_FORMAT, "checkpoint")
    check_checkpoint(path, ckpt)
    return ckpt


# --- what a checkpoint must hold ---------------------------------------------------------------
# torch.load(weights_only=True) runs no code, but what it returns is whatever the file holds: the
# fields every reader uses are checked here, once, so a bad file is one line naming the file and
# the field, not a KeyError in export or a NaN that trains for an epoch before anyone notices.


def check_checkpoint(path: Path, ckpt: dict) -> None:
    """ModelError naming ``path`` and the field when ``ckpt`` lacks a field its readers use, has
    one of the wrong type, or holds a weight that is NaN, infinite or does not fit its model."""
    model = ckpt.get("model")
    if not isinstance(model, str) or not model:
        raise ModelError(f"{path}: model: expected the model's name (a string), found {shown(model)}")
    classes = ckpt.get("num_classes")
    if isinstance(classes, bool) or not isinstance(classes, int) or not 1 <= classes <= MAX_CLASSES:
        raise ModelError(f"{path}: num_classes: expected a whole number from 1 to {MAX_CLASSES:,}, found {shown(classes)}")
    names = ckpt.get("classes")
    if names is not None and (not isinstance(names, list) or len(names) != classes or not all(isinstance(n, str) for n in names)):
        raise ModelError(f"{path}: classes: expected {classes} class names (strings), found {shown(names)}")
    for field in ("target", "config", "data", "normalization"):
        if ckpt.get(field) is not None and not isinstance(ckpt[field], dict):
            raise ModelError(f"{path}: {field}: expected a mapping, found {shown(ckpt[field])}")
    _check_normalization(path, ckpt.get("normalization"))
    _check_image_size(path, ckpt.get("data"))
    check_state_dict(path, ckpt.get("state_dict"))
    _check_fits_model(path, model, classes, ckpt["state_dict"], checkpoint_image_size(ckpt))


def _check_image_size(path: Path, record: dict | None) -> None:
    size = (record or {}).get("image_size", CIFAR_SIDE)
    if isinstance(size, bool) or not isinstance(size, int) or not 8 <= size <= MAX_IMAGE_SIDE:
        raise ModelError(f"{path}: data.image_size: expected a whole number of pixels from 8 to {MAX_IMAGE_SIDE}, found {shown(size)}")


def _check_normalization(path: Path, norm: dict | None) -> None:
    if norm is None:
        return
    for field in ("mean", "std"):
        values = norm.get(field)
        ok = isinstance(values, (list, tuple)) and 1 <= len(values) <= 4 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (field == "mean" or v > 0) for v in values)
        if not ok:
            what = "positive finite numbers" if field == "std" else "finite numbers"
            raise ModelError(f"{path}: normalization.{field}: expected 1 to 4 {what}, one per channel, found {shown(values)}")


def check_state_dict(path: Path, state, field: str = "state_dict", cause: str = " (the run that wrote it diverged)") -> None:
    """Weights are tensors under string names, every floating one finite: a checkpoint's
    (``field`` names where they sit in the file) or a weights file's (``field`` empty: the file
    is the weights). ``cause``: what a NaN says about the file's writer."""
    at = f"{path}: {field}: " if field else f"{path}: "
    if not isinstance(state, dict) or not state:
        raise ModelError(f"{at}expected the model's weights (a mapping of names to tensors), found {shown(state)}")
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise ModelError(f"{at}{shown(name)}: expected a tensor under a name, found {type(value).__name__}")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ModelError(f"{at}{name}: holds NaN or infinite values; expected finite weights{cause}")


def _check_fits_model(path: Path, model: str, classes: int, state: dict, image_size: int) -> None:
    """The weights fit the model the checkpoint names, key by key and shape by shape. Only for
    models that build without running a file's code (the registry, torchvision); a
    package.module:factory is built, and checked by load_state_dict, once the user allows it."""
    from ..models import imports_code

    if imports_code(model):
        return
    from ..models import create_model

    try:
        built = create_model(model, num_classes=classes, image_size=image_size)
    except ModelError as exc:  # an unknown name: say which file names it
        raise ModelError(f"{path}: model: {exc}") from None
    expected = {k.replace("parametrizations.weight.original", "weight"): v.shape for k, v in built.state_dict().items()}
    missing = [k for k in expected if k not in state]
    if missing:
        raise ModelError(f"{path}: state_dict: {missing[0]}: missing; model {model!r} has it ({len(missing)} missing in all)")
    extra = [k for k in state if k not in expected]
    if extra:
        raise ModelError(f"{path}: state_dict: {extra[0]}: not a weight of model {model!r} ({len(extra)} such in all)")
    for key, shape in expected.items():
        if state[key].shape != shape:
            raise ModelError(f"{path}: state_dict: {key}: shape {list(state[key].shape)}; model {model!r} expects {list(shape)}")


def _load_tensors_file(path: Path, expected_format: str, what: str, hint: str = "") -> dict:
    """A dict saved by torch.save, loaded safely (weights_only), with the format we wrote."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle/zip/runtime errors alike for a bad file
        if is_onnx_file(path):
            raise ModelError(f"{path}: an ONNX file, not a {what}: it is already exported; give the checkpoint it was "
                             f"exported from (model.pt), or sign this file off with: ftdeploy verify {path} --profile NAME") from None  # fmt: skip
        # torch's own text alone can be a bare number (a pickle magic-number check): say what raised
        # it; one line of it (weights_only's refusal runs to several).
        raise ModelError(f"{path}: not a loadable {what}: torch.load raised {type(exc).__name__}: {reason_line(exc)}{hint}") from None
    found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
    if found != expected_format:
        raise ModelError(f"{path}: format: expected {expected_format!r}, found {found!r}{hint}")
    return obj


def model_from_checkpoint(ckpt: dict, *, allow_import: bool = False, source: str = "checkpoint") -> nn.Module:
    """The checkpoint's model with its weights. ``allow_import``: the user allowed the checkpoint's
    ``package.module:factory`` to be imported (see :func:`ftdeploy.models.model_from_file_name`)."""
    model = model_from_file_name(ckpt["model"], source, allow_import=allow_import, num_classes=ckpt["num_classes"],
                                 image_size=checkpoint_image_size(ckpt))  # fmt: skip
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise ModelError(f"checkpoint does not fit model {ckpt['model']!r}: {str(exc).splitlines()[0]}") from None
    return model


def checkpoint_image_size(ckpt: dict) -> int:
    """The image side the checkpoint's model was trained at (its data record's)."""
    return recorded_image_size(ckpt.get("data"))


def clean_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with parametrised weights under their plain names (the master weights)."""
    out = {}
    for key, value in model.state_dict().items():
        out[key.replace("parametrizations.weight.original", "weight")] = value.detach().clone().cpu()
    return out


def check_model_fits(model: str, init: dict) -> None:
    """Refuse retraining checkpoint ``init`` as another model than the one it holds."""
    if init["model"] != model:
        raise ModelError(f"--model {model!r} does not match the checkpoint's model {init['model']!r}")


def checkpoint_record(config, data, target, state, profile_name, init, acc_pretrain, val_clean, epochs_done,
                      initial_weights: dict | None = None) -> dict:  # fmt: skip
    """The checkpoint of ``config``'s run after ``epochs_done`` epochs: master weights ``state``
    and everything export, sign-off and a later retraining read from it. ``initial_weights``: the
    record of the weights file a pretraining started from (:func:`ftdeploy.weights.load_initial_weights`)."""
    pretrain = config.method == "pretrain"
    return {
        "format": CHECKPOINT_FORMAT,
        "model": config.model,
        "num_classes": data.num_classes,
        "classes": list(data.classes),
        "state_dict": state,
        "profile": profile_name,
        "target": target.model_dump(mode="json"),
        "method": config.method,
        "schedule": config.schedule(),
        "split": list(config.fault_model.stuck.ratio),
        "epochs": config.run_epochs,
        "epochs_done": epochs_done,
        "seed": config.seed,
        "config": config.model_dump(mode="json"),
        "normalization": {"mean": list(data.mean), "std": list(data.std)},
        "data": data.split_record(),
        "acc_pretrain": val_clean if pretrain else acc_pretrain,
        # the images Acc_pretrain was measured on, so a sign-off can tell whether it measures on the same
        "acc_pretrain_images": data.val_fingerprint() if pretrain else (init or {}).get("acc_pretrain_images"),
        "acc_retrain": None if pretrain else val_clean,
        "sparsity": (init or {}).get("sparsity"),
        "pruning": (init or {}).get("pruning"),  # a pruned model's record survives its retraining
        "equalization": (init or {}).get("equalization"),  # so does an equalised one's (ftdeploy equalize)
        "parent": (init or {}).get("config"),
        # the published weights at the root of the lineage, kept through every retraining
        "initial_weights": initial_weights if initial_weights is not None else (init or {}).get("initial_weights"),
    }


# --- resuming an interrupted run --------------------------------------------------------------


def resume_state(ckpt, step, opt, sched, gen, aug_gen, injector, rows) -> dict:
    """Everything beyond the weights that the next epoch depends on, so that a resumed run
    continues exactly where the interrupted one stopped (tests/test_train.py checks bit-equality
    with an uninterrupted run)."""
    return {
        "format": RESUME_FORMAT,
        "checkpoint": ckpt,  # with the weights and the run's config
        "step": step,
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "rng_device": str(aug_gen.device.type),
        "rng_data": gen.get_state(),
        "rng_augment": aug_gen.get_state(),
        "rng_faults": injector.generator.get_state() if injector else None,
        "log": rows,
    }


@dataclasses.dataclass
class ResumePoint:
    """Where an interrupted run in ``out_dir`` stopped.

    From ``resume.pt`` the run continues exactly: weights, optimiser momentum, learning-rate
    schedule, fault rate and every random stream. A run folder with only ``model.pt`` (written
    by an older ftdeploy, or copied without resume.pt) continues from its weights with the
    schedule advanced to the same step, but with fresh momentum and fresh random streams; the
    run says so. ``config`` is the run's config as it goes on: the one asked for, with the
    fields it keeps from the checkpoint (RESUME_KEEPS)."""

    checkpoint: dict
    epochs_done: int
    log_rows: list[dict]
    saved: dict | None  # the resume.pt contents, None for a model.pt-only resume
    config: TrainConfig

    @property
    def state_dict(self) -> dict:
        return self.checkpoint["state_dict"]

    @classmethod
    def find(cls, out_dir: Path, config: TrainConfig, target: Target) -> "ResumePoint | None":
        saved = _load_resume_file(out_dir / "resume.pt")
        if saved is not None:
            path, ckpt, rows = out_dir / "resume.pt", saved["checkpoint"], list(saved["log"])
        elif (out_dir / "model.pt").is_file():
            path, ckpt = out_dir / "model.pt", load_checkpoint(out_dir / "model.pt")
            rows = _read_log_rows(out_dir / "log.jsonl")[: int(ckpt.get("epochs_done") or 0)]
        else:
            return None
        _check_resumable(path, ckpt, config, target)
        return cls(ckpt, int(ckpt.get("epochs_done") or 0), rows, saved, _continued(path, ckpt, config))

    @property
    def how(self) -> str:
        return "resumed exactly" if self.saved is not None else "resumed from weights"

    def restore(self, opt, sched, gen, aug_gen, injector, steps_per_epoch: int, rank: int = 0) -> tuple[int, int]:
        """Put optimiser, schedule and random streams where the run stopped; (step, epoch).
        Under torchrun only rank 0's augmentation and fault streams were saved: the other ranks
        draw fresh ones, seeded by rank and step, so their chips still differ from rank 0's."""
        if self.saved is None:
            step = self.epochs_done * steps_per_epoch
            _advance_schedule(sched, step)
            print(f"resuming after epoch {self.epochs_done} from model.pt alone (no resume.pt): optimiser momentum "
                  "and random streams restart; learning rate and fault rate continue on schedule", flush=True)  # fmt: skip
            return step, self.epochs_done
        opt.load_state_dict(self.saved["optimizer"])
        sched.load_state_dict(self.saved["scheduler"])
        gen.set_state(self.saved["rng_data"])
        step = int(self.saved["step"])
        if rank:
            aug_gen.manual_seed(1_000_003 * step + rank)
            if injector is not None:
                injector.generator.manual_seed(7_919 * step + rank)
        elif self.saved["rng_device"] == aug_gen.device.type:  # a CUDA stream cannot continue on the CPU
            aug_gen.set_state(self.saved["rng_augment"])
            if injector is not None and self.saved["rng_faults"] is not None:
                injector.generator.set_state(self.saved["rng_faults"])
        print(f"resuming after epoch {self.epochs_done} (from resume.pt: optimiser, schedule and random streams restored)", flush=True)
        return step, self.epochs_done


def _continued(path: Path, ckpt: dict, config: TrainConfig) -> TrainConfig:
    """``config`` with the fields a resumed run keeps from its checkpoint ``ckpt``, each that the
    checkpoint did not record at the value its run had (RESUME_KEEPS)."""
    from pydantic import ValidationError

    saved = ckpt.get("config") or {}
    kept = {field: saved.get(field, old) for field, old in RESUME_KEEPS.items()}
    try:
        return TrainConfig.model_validate(config.model_dump() | kept)
    except ValidationError as err:
        e = err.errors()[0]
        raise ModelError(f"{path}: config.{e['loc'][0]}: {e['msg']} (found {shown(e.get('input'))})") from None


def _load_resume_file(path: Path) -> dict | None:
    if not path.is_file():
        return None
    return _load_tensors_file(path, RESUME_FORMAT, "resume file", "; delete it to resume from model.pt")


def _check_resumable(path: Path, ckpt: dict, config: TrainConfig, target: Target) -> None:
    """A resumed run must be the run that was interrupted: only where and how closely it is
    checked may change, and it must fault the same chip family (every target field but the
    names). Fields an older checkpoint did not record: config fields are not compared, target
    fields take their defaults (``batchnorm: fold``, the only behaviour before the field
    existed). Pretraining injects no faults, so any target will do."""
    differ = run_differences(ckpt, config)
    if differ:
        raise ConfigError(f"{path}: cannot resume a different run ({differ}); use a new --out or the same settings")
    if not ckpt.get("target") or config.method == "pretrain":
        return
    names = {"name", "description"}
    before = Target.model_validate(ckpt["target"]).model_dump(mode="json", exclude=names)
    differ = _differences(before, target.model_dump(mode="json", exclude=names), list(before))
    if differ:
        raise ConfigError(f"{path}: cannot resume on a different target ({differ}); use the run's profile")


def run_differences(ckpt: dict, config: TrainConfig) -> str:
    """Where the run ``ckpt`` recorded differs from ``config`` ('' where it does not), as
    'field: old there, new now': every field but where and how closely it is checked, and those
    a resumed run takes from its checkpoint. Fields an older checkpoint did not record are not
    compared."""
    saved, now = ckpt.get("config") or {}, config.model_dump(mode="json")
    ignored = RESUME_MAY_DIFFER | set(RESUME_KEEPS)
    return _differences(saved, now, [k for k in saved if k in now and k not in ignored])


def _differences(before: dict, now: dict, keys: list[str]) -> str:
    """'key: old there, new now' for each of ``keys`` whose values differ ('' when none do)."""
    return ", ".join(f"{k}: {before[k]!r} there, {now[k]!r} now" for k in keys if _plain(before[k]) != _plain(now[k]))


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _read_log_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line torn by the interruption, and nothing after it
    return rows


def _advance_schedule(sched, step: int) -> None:
    """Move a LambdaLR to ``step`` without optimiser steps (as if it had been stepped)."""
    sched.last_epoch = step
    for group, base, fn in zip(sched.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
        group["lr"] = base * fn(step)
