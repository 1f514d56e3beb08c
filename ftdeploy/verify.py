"""Sign-off: an exported ONNX file, run by stock ONNX Runtime on simulated faulty chips, judged
against a profile's acceptance limits.

Only the ONNX file is needed: the cell levels, the mapping, the normalisation and the layer
order all come from its metadata (see :mod:`ftdeploy.export`). The chips are the profile's fault
population at each sign-off rate (:class:`ftdeploy.population.SimulatedChips`), run by the ONNX
Runtime backend (:class:`ftdeploy.runtime.OnnxBackend`); chip k is the same chip the PyTorch
backend simulates, so the two agree chip by chip. Figures and verdicts come from
:mod:`ftdeploy.figures`.

Figures (accuracy in %):
  Acc_pretrain  from the file's metadata (measured at training time); when absent, Acc_retrain
  Acc_retrain   fault-free accuracy of the file, measured here on the evaluation images
  Acc_defect    mean over chips at each rate, with sample std and a 95 % Student-t CI
  SS            Acc_retrain / (Acc_pretrain − Acc_defect); +inf when Acc_defect >= Acc_pretrain
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import __version__
from .errors import ConfigError, VerifyError
from .exported import ExportedModel, load_export
from .figures import NO_DEGRADATION, judge, rate_figures
from .files import sha256_file
from .population import SimulatedChips, chip_accuracies
from .profiles import ResolvedProfile
from .resolve import signoff_settings
from .runtime import OnnxBackend

REPORT_SCHEMA = "ftdeploy-report/1"
# --- evaluation data ----------------------------------------------------------------------------


@dataclass
class EvalData:
    """Normalised float32 images and int64 labels the chips are judged on, and where they came from."""

    x: np.ndarray
    y: np.ndarray
    record: dict


def evaluation_data(export: ExportedModel, spec: str | None = None, val_split: int | None = None,
                    max_images: int | None = None, all_images: bool = False) -> EvalData:  # fmt: skip
    """The validation part of ``spec`` (default: the embedded dataset), or every image of it with
    ``all_images``, preprocessed with the file's normalisation; at most ``max_images``, a
    class-stratified subset (seed 0) in the dataset's order, because validation parts may be
    sorted by class. The record gives the image count and the fingerprint of the images measured."""
    from .data import SPLIT_SEED, image_set_fingerprint, load_validation, normalize_numpy

    _, height, width = export.image_shape
    if height != width:  # data.load_data resizes to square images only
        raise VerifyError(f"{export.path}: input is {height}x{width}; only square images are supported")
    bundle = load_validation(spec, val_split, image_size=height, all_images=all_images)  # training images stay undecoded
    classes = export.meta["classes"]
    if list(bundle.classes) != list(classes):
        raise VerifyError(f"data {bundle.spec}: classes {_short(bundle.classes)} differ from the model's {_short(classes)}")
    x, y = bundle.val_x.numpy(), bundle.val_y.numpy().astype(np.int64)
    if tuple(x.shape[1:]) != export.image_shape:
        raise VerifyError(f"data {bundle.spec}: images are {list(x.shape[1:])}, the model takes {list(export.image_shape)}")
    available = len(y)
    keep = subset_indices(y, max_images)
    if keep is not None:
        x, y = x[keep], y[keep]
    norm = export.meta["normalization"]
    record = {"spec": bundle.spec, "val_split": bundle.val_split, "split_seed": SPLIT_SEED, "images": int(len(y)),
              "val_images": int(available), "max_images": max_images, "all_images": all_images,
              "fingerprint": image_set_fingerprint(x, y), "description": bundle.description,
              "training_record": export.meta.get("data")}  # fmt: skip
    return EvalData(normalize_numpy(x, norm["mean"], norm["std"]), y, record)


def subset_indices(labels: np.ndarray, max_images: int | None) -> np.ndarray | None:
    """Indices of the evaluation subset: at most ``max_images``, as equal per class as possible
    (data.stratified_split, seed 0), in the dataset's order; None when every image is used."""
    from .data import stratified_split

    if subset_size(len(labels), max_images) == len(labels):
        return None
    return stratified_split(labels, max_images)[1]


def subset_size(n_images: int, max_images: int | None) -> int:
    """How many images :func:`subset_indices` keeps of ``n_images``, without drawing them."""
    return n_images if max_images is None else min(n_images, max_images)


def _short(names: list[str]) -> str:
    return f"[{', '.join(names[:3])}{', ...' if len(names) > 3 else ''}] ({len(names)})"


# --- the sign-off -------------------------------------------------------------------------------


def verify_onnx(
    onnx_path: str | Path,
    resolved: ResolvedProfile,
    data_spec: str | None = None,
    chips: int | None = None,
    seed: int | None = None,
    *,
    val_split: int | None = None,
    max_images: int | None = None,
    all_images: bool = False,
    batch_size: int | None = None,
    threads: int | None = None,
    progress=None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Sign off an ONNX export on simulated chips; return the report (a JSON-ready dict whose
    ``verdict.passed`` says whether every limit holds). ``chips``, ``seed`` and ``max_images``
    default to the profile's sign-off; ``batch_size`` (images per ONNX Runtime call) to
    :func:`default_batch_size`; ``threads`` (intra-op) to the cores this process may use.
    ``all_images``: measure on every image of ``data_spec`` (a test set of one's own), not its
    validation part. ``progress``: a rich Progress (one bar over all chips);
    ``log``: receives one plain line per rate. Raises ConfigError / VerifyError / DataError on
    bad input, before any chip runs."""
    signoff = resolved.profile.signoff
    chips, seed, max_images = dataclasses.astuple(signoff_settings(signoff, dict(chips=chips, seed=seed, max_images=max_images)))
    _check_run_options(resolved, chips, seed, max_images, batch_size)
    export = load_export(onnx_path)
    _check_same_target(export, resolved)
    data = evaluation_data(export, data_spec, val_split, max_images, all_images)

    backend = OnnxBackend(export, data.x, data.y, threads, batch_size)
    t0 = time.perf_counter()
    acc_retrain = backend.accuracy()
    notes = []
    acc_pretrain = export.meta.get("acc_pretrain")
    if acc_pretrain is None:
        acc_pretrain, same_images = acc_retrain, None
        pretrain_source = "Acc_retrain (the file records no Acc_pretrain)"
        notes.append("The file records no Acc_pretrain; Acc_retrain is used in its place for drops and stability scores.")
    else:
        pretrain_source, same_images = _pretrain_source(export.meta.get("acc_pretrain_images"), data.record["fingerprint"])
        if same_images is False:
            notes.append("Acc_pretrain (file metadata) was measured at training time on other images than the ones "
                         "measured here, so drops and stability scores compare two image sets.")  # fmt: skip
    _say(log, f"Acc_retrain {acc_retrain:.2f} % on {len(data.y)} images (fault-free), Acc_pretrain {acc_pretrain:.2f} %")

    task = progress.add_task("chips", total=chips * len(signoff.rates)) if progress else None
    tick = (lambda: progress.advance(task)) if progress else None
    rates = []
    for rate in signoff.rates:
        t_rate = time.perf_counter()
        faults = resolved.profile.fault_model.at_rate(rate)
        accs = chip_accuracies(backend, SimulatedChips(faults, rate, seed, chips), on_chip=tick)
        rates.append(rate_figures(rate, faults.stuck, accs, acc_pretrain, acc_retrain))
        _say(log, f"rate {rate:g}: Acc_defect {rates[-1]['acc_defect_mean']:.2f} % over {chips} chips "
                  f"({time.perf_counter() - t_rate:.1f} s)")  # fmt: skip
    _say(log, f"{chips * len(signoff.rates)} chips in {time.perf_counter() - t0:.1f} s")
    if any(r["stability"] is None for r in rates):
        notes.append(f"A stability score of +inf (null in JSON) means {NO_DEGRADATION}; SS is undefined there, "
                     "and any min_stability limit counts as met.")  # fmt: skip
    figures = {"acc_pretrain": acc_pretrain, "acc_pretrain_source": pretrain_source, "acc_pretrain_same_images": same_images,
               "acc_retrain": acc_retrain, "rates": rates}  # fmt: skip
    verdict = judge(figures, resolved)
    return _report(export, resolved, data, chips, seed, figures, verdict, notes)


def _pretrain_source(recorded: str | None, measured: str) -> tuple[str, bool | None]:
    """Where the file's Acc_pretrain comes from, and whether it was measured on the images measured
    here (None: the file does not say: exported before the fingerprint was recorded)."""
    if recorded is None:
        return "file metadata (measured at training time; the file does not record on which images)", None
    if recorded == measured:
        return "file metadata (measured at training time on these same images)", True
    return "file metadata (measured at training time on other images than these)", False


def _say(log, line: str) -> None:
    if log:
        log(line)


def check_chip_counts(chips: int, max_images: int | None) -> None:
    """Chips per rate and images to measure on, as sign-off and the sweep both take them."""
    if chips < 1:
        raise ConfigError(f"--chips: expected at least 1, found {chips}")
    if max_images is not None and max_images < 1:
        raise ConfigError(f"--max-images: expected at least 1, found {max_images}")


def _check_run_options(resolved: ResolvedProfile, chips: int, seed: int, max_images: int | None, batch_size: int | None) -> None:
    check_chip_counts(chips, max_images)
    if seed < 0:
        raise ConfigError(f"--chip-seed: expected a non-negative integer, found {seed}")
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"batch size: expected at least 1, found {batch_size}")
    needs_ci = [lim.rate for lim in resolved.profile.signoff.acceptance if lim.min_acc_defect_lower_ci_pct is not None]
    if needs_ci and chips < 2:
        raise ConfigError(f"{resolved.profile_path}: min_acc_defect_lower_ci_pct needs a confidence interval: use --chips 2 or more")


def _check_same_target(export: ExportedModel, resolved: ResolvedProfile) -> None:
    """The profile's chips must be the chips the file was exported for (descriptions aside)."""
    mine = resolved.target.model_dump(mode="json", exclude={"description"})
    theirs = export.target.model_dump(mode="json", exclude={"description"})
    if mine != theirs:
        differ = sorted(k for k in mine if mine[k] != theirs.get(k))
        raise VerifyError(f"{export.path}: exported for target {export.target.name!r}, but profile "
                          f"{resolved.profile.name!r} uses {resolved.target.name!r} (differs in {', '.join(differ)}); "
                          "export with this profile or verify with the export's")  # fmt: skip


def _report(export, resolved, data, chips, seed, figures, verdict, notes) -> dict:
    """The report: everything needed to reproduce and audit the sign-off, no timestamps (same
    inputs and seed give a byte-identical report.json)."""
    import onnxruntime as ort

    meta = export.meta
    return {
        "schema": REPORT_SCHEMA,
        "tool": {"name": "ftdeploy", "version": __version__, "onnxruntime": ort.__version__},
        "model": {"file": str(export.path), "sha256": sha256_file(export.path), "content_sha256": meta.get("content_sha256"),
                  "format": meta.get("format"), "exported_by": meta.get("version"), "model": meta.get("model"),
                  "method": meta.get("method"), "schedule": meta.get("schedule"), "sparsity": meta.get("sparsity"),
                  "equalization": meta.get("equalization"), "training": meta.get("training"), "mapping": meta["mapping"]["description"],
                  "layers": len(export.layers), "cells": sum(int(np.prod(s)) for s in export.cell_shapes)},  # fmt: skip
        "profile": {"name": resolved.profile.name, "file": str(resolved.profile_path), "sha256": sha256_file(resolved.profile_path),
                    "extends": [{"file": str(b), "sha256": sha256_file(b)} for b in resolved.base_paths],
                    "target": resolved.target.name, "target_file": str(resolved.target_path),
                    "target_sha256": sha256_file(resolved.target_path), "resolved": resolved.to_dict()},  # fmt: skip
        "data": data.record,
        "signoff": {"seed": seed, "chips": chips, "rates": [r["rate"] for r in figures["rates"]],
                    "split": list(resolved.profile.fault_model.at_rate(0.0).stuck.ratio),
                    "faults": resolved.profile.fault_model.describe_at("P_sa"),
                    "ci": "95 % two-sided Student t: mean ± t(0.975, chips−1)·std/√chips, std with chips−1"},  # fmt: skip
        "figures": figures,
        "verdict": verdict.to_dict(),
        "notes": notes,
    }
