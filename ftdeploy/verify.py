"""Sign-off: an exported ONNX file, run by stock ONNX Runtime on simulated faulty chips, judged
against a profile's acceptance limits.

Only the ONNX file is needed: the cell levels, the mapping, the normalisation and the layer
order all come from its metadata (see :mod:`ftdeploy.export`). The chips are the profile's fault
population at each sign-off rate (:class:`ftdeploy.population.SimulatedChips`), run by the ONNX
Runtime backend (:class:`ftdeploy.runtime.OnnxBackend`); chip k is the same chip the PyTorch
backend simulates, so the two agree chip by chip. Figures and verdicts come from
:mod:`ftdeploy.figures`.

Figures (accuracy in %), all on the same images:
  Acc_pretrain  the fault-free starting model: measured here on a reference export
                (``--reference``), or the file's own figure where it was measured on these very
                images (their fingerprint matches); otherwise none, and a limit that needs it is
                refused. A file that records none uses Acc_retrain.
  Acc_retrain   fault-free accuracy of the file, measured here
  Acc_defect    mean over chips at each rate, with sample std and a 95 % Student-t CI
                (sequential sign-off, the default: chips are drawn in batches until every
                limit at the rate is decided, at most signoff.chips; :mod:`ftdeploy.sequential`)
  SS            Acc_retrain / (Acc_pretrain − Acc_defect); +inf when Acc_defect >= Acc_pretrain
  yield         share of chips meeting the profile's chip spec, with its Clopper-Pearson bounds
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from . import __version__
from .errors import ConfigError, VerifyError
from .exported import ExportedModel, load_export
from .figures import NO_DEGRADATION, judge, rate_figures
from .files import sha256_file
from .nonideality import StuckAt
from .population import SimulatedChips, chip_accuracies
from .profiles import ResolvedProfile, rate_label, rate_total
from .resolve import signoff_settings
from .runtime import OnnxBackend
from .sequential import CleanFigures, Plan, limits_at, run_rate

if TYPE_CHECKING:
    from .streaming import StreamedImages

REPORT_SCHEMA = "ftdeploy-report/1"
# --- evaluation data ----------------------------------------------------------------------------


@dataclass
class EvalData:
    """Normalised float32 images and int64 labels the chips are judged on, and where they came
    from; ``raw`` are the images before normalisation, for another model (a reference) to be
    measured on the same ones with its own."""

    x: np.ndarray | None
    y: np.ndarray
    record: dict
    raw: np.ndarray | None
    #: Streamed instead (an image folder bigger than memory): x and raw are None.
    images: "StreamedImages | None" = None
    #: The export ``x`` is normalised for.
    export: ExportedModel | None = None

    def normalized_for(self, export: ExportedModel) -> np.ndarray:
        """These images with ``export``'s normalisation."""
        from .data import normalize_numpy

        norm = export.meta["normalization"]
        return normalize_numpy(self.raw, norm["mean"], norm["std"])

    def backend_for(self, export: ExportedModel, threads: int | None = None, batch_size: int | None = None,
                    device: str | None = None) -> OnnxBackend:  # fmt: skip
        """``export`` on these images, held in memory or streamed from their files, on ``device``."""
        if self.images is not None:
            from .streaming import StreamedOnnxBackend

            return StreamedOnnxBackend(export, self.images, threads, batch_size, device)
        x = self.x if export is self.export else self.normalized_for(export)
        return OnnxBackend(export, x, self.y, threads, batch_size, device)


def evaluation_data(export: ExportedModel, spec: str | None = None, val_split: int | None = None,
                    max_images: int | None = None, all_images: bool = False, stream: bool | None = False) -> EvalData:  # fmt: skip
    """The validation part of ``spec`` (default: the embedded dataset), or every image of it with
    ``all_images``, preprocessed with the file's normalisation; at most ``max_images``, a
    class-stratified subset (seed 0) in the dataset's order, because validation parts may be
    sorted by class. The record gives the image count and the fingerprint of the images measured.
    ``stream``: read an image folder's files batch by batch at every pass rather than decode them
    into memory (:mod:`ftdeploy.streaming`; the same images, in the same order); None: when the
    decoded images would exceed :data:`ftdeploy.streaming.STREAM_ABOVE_BYTES`."""
    from .data import SPLIT_SEED, image_set_fingerprint, validation_part
    from .streaming import streamed_part

    _, height, width = export.image_shape
    if height != width:  # data.load_data resizes to square images only
        raise VerifyError(f"{export.path}: input is {height}x{width}; only square images are supported")
    spec, source, val_idx, description = validation_part(spec, val_split, height, all_images)  # training images stay undecoded
    _check_classes(export, spec, source.classes)
    available = len(val_idx)
    images = streamed_part(spec, source, val_idx, height, stream)  # None: decoded into memory
    if images is not None:
        _check_shape(export, spec, images.shape)
        images = images.subset(subset_indices(images.labels, max_images))
        x, y, fingerprint = None, images.labels, images.fingerprint()
    else:
        x, y = source.take(val_idx).numpy(), source.labels[val_idx].astype(np.int64)
        _check_shape(export, spec, x.shape)
        keep = subset_indices(y, max_images)
        if keep is not None:
            x, y = x[keep], y[keep]
        fingerprint = image_set_fingerprint(x, y)
    record = {"spec": spec, "val_split": available, "split_seed": SPLIT_SEED, "images": int(len(y)),
              "val_images": int(available), "max_images": max_images, "all_images": all_images,
              "fingerprint": fingerprint, "description": description,
              "training_record": export.meta.get("data")}  # fmt: skip
    data = EvalData(x, y, record, raw=x, images=images, export=export)
    if x is not None:
        data.x = data.normalized_for(export)
    return data


def _check_shape(export: ExportedModel, spec: str, shape: tuple[int, ...]) -> None:
    if tuple(shape[1:]) != export.image_shape:
        raise VerifyError(f"data {spec}: images are {list(shape[1:])}, the model takes {list(export.image_shape)}")


def _check_classes(export: ExportedModel, spec: str, classes) -> None:
    if list(classes) != list(export.meta["classes"]):
        raise VerifyError(f"data {spec}: classes {_short(list(classes))} differ from {export.path.name}'s {_short(export.meta['classes'])}")


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
    reference: str | Path | None = None,
    val_split: int | None = None,
    max_images: int | None = None,
    all_images: bool = False,
    batch_size: int | None = None,
    threads: int | None = None,
    progress=None,
    log: Callable[[str], None] | None = None,
    sequential: bool | None = None,
    batch_chips: int | None = None,
    ray: str | None = None,
    ray_workers: int | None = None,
    stream: bool | None = None,
    device: str | None = None,
) -> dict:
    """Sign off an ONNX export on simulated chips; return the report (a JSON-ready dict whose
    ``verdict.passed`` says whether every limit holds). ``chips`` (per rate; the cap when
    ``sequential``), ``seed``, ``max_images``, ``sequential`` (draw chips ``batch_chips`` at a
    time until every limit at a rate is decided, :mod:`ftdeploy.sequential`) and ``batch_chips``
    default to the profile's sign-off; ``batch_size`` (images per ONNX Runtime call) to
    :func:`default_batch_size`; ``threads`` (intra-op) to the cores this process may use.
    ``device``: where ONNX Runtime runs the chips (:func:`ftdeploy.runtime.execution_providers`;
    default the CPU). ``reference``: the fault-free starting model, exported for the same target, whose accuracy
    on these images is Acc_pretrain. ``all_images``: measure on every image of ``data_spec`` (a
    test set of one's own), not its validation part. ``progress``: a rich Progress (one bar over
    all chips, shrunk where a rate stops early); ``log``: receives one plain line per rate.
    ``ray``: measure the chips on Ray workers (:mod:`ftdeploy.distributed`): ``"local"`` starts
    a Ray here, else the address of a cluster; ``ray_workers`` actors (default: one per CPU).
    The report is the one a single process writes. ``stream``: read an image folder's files
    batch by batch for every chip (:mod:`ftdeploy.streaming`) rather than decode them into
    memory; None (default): when they would not fit the memory budget decoded. Raises
    ConfigError / VerifyError / DataError on bad input, before any chip runs."""
    signoff = resolved.profile.signoff
    settings = signoff_settings(signoff, dict(chips=chips, seed=seed, max_images=max_images, sequential=sequential,
                                              batch_chips=batch_chips))  # fmt: skip
    chips, seed, max_images = settings.chips, settings.seed, settings.max_images
    _check_run_options(resolved, chips, seed, max_images, batch_size)
    if settings.batch_chips < 1:
        raise ConfigError(f"batch_chips: expected at least 1, found {settings.batch_chips}")
    if ray is not None:  # before any image is read: a missing extra is one line, not a traceback later
        from .distributed import require_ray

        require_ray()
        if ray_workers is not None and ray_workers < 1:
            raise ConfigError(f"--ray-workers: expected at least 1, found {ray_workers}")
    plan = Plan(chips, settings.batch_chips, signoff.confidence, settings.sequential)
    device_notes = _device_notes(device, log)  # a device this machine lacks is refused before any work
    t0 = time.perf_counter()
    setup = prepare_signoff(load_for_profile(onnx_path, resolved), resolved, reference, data_spec, val_split, max_images, all_images, threads, batch_size,
                   stream, device)  # fmt: skip
    export, ref_export, data, backend = setup.export, setup.reference, setup.data, setup.backend
    acc_retrain, pretrain = setup.acc_retrain, setup.pretrain
    notes = list(pretrain.notes) + device_notes
    _say(log, f"Acc_retrain {acc_retrain:.2f} % on {len(data.y)} images (fault-free), Acc_pretrain {_pct_or_none(pretrain.value)}")

    pool = _ray_chips(ray, ray_workers, setup)
    bar = _ChipBar(progress, chips * len(signoff.rates))
    clean = CleanFigures(pretrain.value, acc_retrain, signoff.chip_threshold(pretrain.value))
    rates = []
    for rate in signoff.rates:
        t_rate = time.perf_counter()
        faults, total = resolved.profile.signoff_faults(rate), rate_total(rate)

        def measure(start: int, stop: int, faults=faults, total=total) -> list[float]:
            if pool is not None and not faults.is_identity:  # one round of Ray tasks per look of the sequential rule
                return pool.measure(faults, total, seed, start, stop, on_chip=bar.tick)
            return chip_accuracies(backend, SimulatedChips(faults, total, seed, stop - start, start=start), on_chip=bar.tick)

        accs, stop = run_rate(plan, limits_at(signoff, rate), clean, measure)
        bar.skip(chips - stop.chips)
        rates.append(rate_figures(total, faults.stuck, accs, pretrain.value, acc_retrain, seed=seed, signoff=signoff))
        rates[-1]["stopped"] = stop.to_dict()
        _say(log, f"rate {rate_label(rate)}: Acc_defect {rates[-1]['acc_defect_mean']:.2f} % over {stop.chips} chips "
                  f"({time.perf_counter() - t_rate:.1f} s); {stop.reason}")  # fmt: skip
    if pool is not None:  # on an exception the actors go when their handles do, with this frame
        pool.close()
    used = sum(r["chips"] for r in rates)
    _say(log, f"{used} chips in {time.perf_counter() - t0:.1f} s")
    if any(r["stability_note"] == NO_DEGRADATION for r in rates):
        notes.append(f"A stability score of +inf (null in JSON) means {NO_DEGRADATION}; SS is undefined there, "
                     "and any min_stability limit counts as met.")  # fmt: skip
    figures = {"acc_pretrain": pretrain.value, "acc_pretrain_source": pretrain.source, "acc_pretrain_same_images": pretrain.same_images,
               "acc_retrain": acc_retrain, "acc_retrain_source": "measured here: this file on a fault-free chip, on these images",
               "acc_defect_source": f"measured here: this file on {_chip_counts(rates, plan)}, on these images",
               "chance_pct": 100.0 / len(export.meta["classes"]), "rates": rates}  # fmt: skip
    verdict = judge(figures, resolved)  # on the chips drawn, however many the sequential rule drew
    return signoff_report(export, resolved, data, chips, seed, figures, verdict, notes, ref_export, plan=plan, chips_used=used)


class _ChipBar:
    """One progress bar over every chip sign-off may draw; a rate that stops early takes the
    chips it did not draw off the total, so the bar still ends full."""

    def __init__(self, progress, total: int):
        self.progress, self.total = progress, total
        self.task = progress.add_task("chips", total=total) if progress else None

    def tick(self) -> None:
        if self.progress:
            self.progress.advance(self.task)

    def skip(self, chips: int) -> None:
        self.total -= chips
        if self.progress and chips:
            self.progress.update(self.task, total=self.total)


def _chip_counts(rates: list[dict], plan: Plan) -> str:
    """How many simulated chips each rate measured, in words."""
    if not plan.sequential or len({r["chips"] for r in rates}) == 1 and rates[0]["chips"] == plan.cap:
        return f"{rates[0]['chips']} simulated chips per rate"
    counts = ", ".join(f"{r['chips']} at {r['rate']:g}" for r in rates)
    return f"simulated chips drawn in batches of {plan.batch} until every limit was decided, at most {plan.cap} per rate ({counts})"


@dataclass
class SignoffSetup:
    """What every sign-off measures first: the file, its reference, the images, the backend, and
    the fault-free figures."""

    export: ExportedModel
    reference: ExportedModel | None
    data: EvalData
    backend: OnnxBackend
    acc_retrain: float
    pretrain: "AccPretrain"


def load_for_profile(onnx_path: str | Path, resolved: ResolvedProfile) -> ExportedModel:
    """The export at ``onnx_path``, refused unless it was exported for the profile's target."""
    export = load_export(onnx_path)
    _check_same_target(export, resolved)
    return export


def prepare_signoff(export: ExportedModel, resolved, reference, data_spec, val_split, max_images, all_images, threads, batch_size,
           stream: bool | None = False, device: str | None = None) -> SignoffSetup:  # fmt: skip
    """``export`` as :func:`load_for_profile` returns it; ``stream`` as :func:`evaluation_data` takes it;
    the chips run on ``device`` (the reference's fault-free accuracy stays on the CPU)."""
    ref_export = _load_reference(reference, export, resolved)
    data = evaluation_data(export, data_spec, val_split, max_images, all_images, stream)
    backend = data.backend_for(export, threads, batch_size, device)
    acc_retrain = backend.accuracy()
    pretrain = _acc_pretrain(export, ref_export, data, acc_retrain, resolved, threads, batch_size)
    return SignoffSetup(export, ref_export, data, backend, acc_retrain, pretrain)


def _ray_chips(address: str | None, workers: int | None, setup: "SignoffSetup"):
    """The Ray actors that measure this sign-off's chips (:class:`ftdeploy.distributed.RayChips`),
    or None without ``address``."""
    if address is None:
        return None
    from .distributed import RayChips, connect

    backend = setup.backend
    if setup.data.images is not None:
        raise ConfigError("--ray: sends the decoded images to its workers through Ray's object store, and these are "
                          "streamed from their files (too large to hold in memory); give --in-memory to decode them, or drop --ray")  # fmt: skip
    return RayChips.onnx(connect(address), setup.export, backend.x, backend.y, backend.batch_size, workers)


def verify_chip(onnx_path: str | Path, resolved: ResolvedProfile, chip: tuple[float, int], data_spec: str | None = None,
                seed: int | None = None, *, reference: str | Path | None = None, val_split: int | None = None,
                max_images: int | None = None, all_images: bool = False, stream: bool | None = None,
                device: str | None = None) -> dict:  # fmt: skip
    """Rerun one simulated chip alone, ``chip`` = (a sign-off rate's total, chip index), on the
    images and seed a sign-off with the same options measures: the accuracy is the one that
    sign-off reports for that chip (on the same ``device``: a GPU's convolutions round otherwise).
    Returns {"id", "accuracy", "meets_spec", "line"}."""
    from .population import Chip, ChipId

    signoff = resolved.profile.signoff
    total, index = chip
    rate = next((r for r in signoff.rates if math.isclose(rate_total(r), total, rel_tol=1e-9, abs_tol=1e-15)), None)
    if rate is None:
        raise ConfigError(f"--chip {total:g}:{index}: {total:g} is not a sign-off rate of {resolved.profile.name} "
                          f"({', '.join(rate_label(r) for r in signoff.rates)})")  # fmt: skip
    settings = signoff_settings(signoff, dict(seed=seed, max_images=max_images))
    _check_run_options(resolved, settings.chips, settings.seed, settings.max_images, None)
    _device_notes(device, None)  # a device this machine lacks is refused before any work
    setup = prepare_signoff(load_for_profile(onnx_path, resolved), resolved, reference, data_spec, val_split, settings.max_images, all_images, None, None,
                   stream, device)  # fmt: skip
    one = Chip(ChipId(rate_total(rate), settings.seed, index), resolved.profile.signoff_faults(rate))
    accuracy = setup.backend.accuracy(one.reading(setup.backend.programmed, setup.backend.cells))
    threshold, meets = signoff.chip_threshold(setup.pretrain.value), None
    line = f"chip ({one.id}): accuracy {accuracy:.2f} % on {len(setup.data.y)} images"
    if threshold is not None:
        meets = accuracy >= threshold
        line += f"; {'meets' if meets else 'fails'} the chip spec ({signoff.chip_spec.describe()})"
    return {"id": dataclasses.asdict(one.id), "accuracy": accuracy, "meets_spec": meets, "line": line}


@dataclass
class AccPretrain:
    """Acc_pretrain as a report gives it: the figure (None: none on these images), where it comes
    from, whether it was measured on the images measured here, and notes for the reader."""

    value: float | None
    source: str
    same_images: bool | None
    notes: tuple[str, ...] = ()


def _load_reference(reference: str | Path | None, export: ExportedModel, resolved: ResolvedProfile) -> ExportedModel | None:
    """The reference export, which must be for the same chips and the same classes and inputs."""
    if reference is None:
        return None
    ref = load_export(reference)
    if ref.target.model_dump(mode="json", exclude={"description"}) != export.target.model_dump(mode="json", exclude={"description"}):
        raise VerifyError(f"--reference {ref.path}: exported for target {ref.target.name!r}, {export.path.name} for "
                          f"{export.target.name!r}; export the reference for the same target")  # fmt: skip
    if list(ref.meta["classes"]) != list(export.meta["classes"]) or ref.image_shape != export.image_shape:
        raise VerifyError(f"--reference {ref.path}: its classes or input shape {list(ref.image_shape)} differ from "
                          f"{export.path.name}'s; the reference must be the model this one was retrained from")  # fmt: skip
    return ref


def _acc_pretrain(export, ref_export, data: EvalData, acc_retrain: float, resolved, threads, batch_size) -> AccPretrain:
    """Acc_pretrain on the images measured here: the reference's fault-free accuracy on them, or
    the file's own figure where it was provably measured on them. Otherwise none, and a limit
    that needs it is refused."""
    if ref_export is not None:
        value = data.backend_for(ref_export, threads, batch_size).accuracy()
        return AccPretrain(value, f"measured here: the reference {ref_export.path.name} (sha256 "
                                  f"{sha256_file(ref_export.path)[:16]}…) on a fault-free chip, on these images", True)  # fmt: skip
    recorded = export.meta.get("acc_pretrain")
    if recorded is None:
        return AccPretrain(acc_retrain, "Acc_retrain (the file records no Acc_pretrain)", True,
                           ("The file records no Acc_pretrain; Acc_retrain is used in its place for drops and stability scores.",))  # fmt: skip
    if export.meta.get("acc_pretrain_images") == data.record["fingerprint"]:
        return AccPretrain(recorded, "file metadata (measured at training time on these same images)", True)
    needing = resolved.profile.signoff.needs_pretrain
    why = "other images than these" if export.meta.get("acc_pretrain_images") else "images it does not record"
    if needing:
        raise ConfigError(f"{resolved.profile_path}: {', '.join(needing)} compare against Acc_pretrain, and {export.path.name} "
                          f"records one measured at training time on {why}; give --reference PRE.onnx (the fault-free "
                          "starting model, exported for this target) to measure it on these images")  # fmt: skip
    note = (f"Acc_pretrain is not reported: the file's figure ({recorded:.2f} %) was measured at training time on {why}; "
            "give --reference PRE.onnx to measure it on these images.")  # fmt: skip
    return AccPretrain(None, f"none on these images (the file's was measured on {why})", False, (note,))


def _device_notes(device: str | None, log) -> list[str]:
    """The report's note on where the chips ran: none on the CPU, the reference arithmetic; on a
    GPU, that its convolutions round differently (so ``--chip`` reruns there to match). ``--device
    auto`` without CUDA says in the log that it runs on the CPU."""
    from .runtime import execution_providers, on_gpu

    providers, fallback = execution_providers(device)
    if fallback:
        _say(log, fallback)
    if not on_gpu(providers):
        return []
    return [f"Chips ran on ONNX Runtime's CUDA execution provider (--device {device}): its convolutions round in another "
            "order than the CPU's, so an accuracy may differ from a CPU sign-off's by an image on a near-tie; rerun a "
            "chip (--chip) with the same --device to reproduce it."]  # fmt: skip


def _pct_or_none(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} %"


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


def signoff_report(export, resolved, data, chips, seed, figures, verdict, notes, ref_export=None, *, plan: Plan | None = None,
            chips_used: int | None = None) -> dict:  # fmt: skip
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
        "reference": None if ref_export is None else {"file": str(ref_export.path), "sha256": sha256_file(ref_export.path),
                                                      "content_sha256": ref_export.meta.get("content_sha256"),
                                                      "model": ref_export.meta.get("model"), "method": ref_export.meta.get("method")},
        "data": data.record,
        "signoff": {"seed": seed, "chips": chips, "chips_used": chips_used, "sequential": None if plan is None else plan.to_dict(),
                    "rates": [r["rate"] for r in figures["rates"]],
                    "rates_as_given": [list(r) if isinstance(r, tuple) else r for r in resolved.profile.signoff.rates],
                    "split": list((resolved.profile.fault_model.stuck or StuckAt.from_total(0.0)).ratio),
                    "confidence": resolved.profile.signoff.confidence,
                    "chance_margin_pct": resolved.profile.signoff.chance_margin_pct,
                    "chip_spec": None if resolved.profile.signoff.chip_spec is None else resolved.profile.signoff.chip_spec.model_dump(),
                    "faults": resolved.profile.fault_model.describe_at("P_sa"),
                    "ci": "95 % two-sided Student t: mean ± t(0.975, chips−1)·std/√chips, std with chips−1"},  # fmt: skip
        "figures": figures,
        "verdict": verdict.to_dict(),
        "notes": notes,
    }
