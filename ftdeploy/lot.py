"""Measured sign-off: an exported model on a lot of physical chips, each given by the fault map
its tester wrote, every chip judged against the profile's chip spec.

Where :func:`ftdeploy.verify.verify_onnx` simulates a population, :func:`verify_lot` measures the
chips a production line has: the same file, images, backend and Acc_pretrain (``--reference``)
as sign-off (:func:`ftdeploy.verify.prepare_signoff`), with :class:`ftdeploy.measured.MeasuredChips` as the
chip source. Each chip passes or fails ``signoff.chip_spec``; the lot's yield is the share that
pass, with its Clopper-Pearson bounds at ``signoff.confidence``. The report is a JSON-ready dict
(schema ``ftdeploy-lot-report/1``) with the sign-off report's sections where they mean the same, and a
``lot`` section with every chip; rendered by :mod:`ftdeploy.lot_report`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import ConfigError
from .figures import Verdict, chip_yield
from .lot_report import LOT_SCHEMA
from .measured import FieldFaults, MeasuredChips
from .nonideality import STUCK_OFF, STUCK_ON
from .placement import SCHEME, placement_of
from .programming import ProgrammedChip, ProgrammedChips, check_row_permutation
from .population import chip_accuracies
from .profiles import ResolvedProfile
from .resolve import signoff_settings
from .verify import signoff_report, prepare_signoff, check_chip_counts, load_for_profile


def verify_lot(
    onnx_path: str | Path,
    resolved: ResolvedProfile,
    fault_maps: str | Path,
    data_spec: str | None = None,
    *,
    reference: str | Path | None = None,
    val_split: int | None = None,
    max_images: int | None = None,
    all_images: bool = False,
    batch_size: int | None = None,
    threads: int | None = None,
    progress=None,
    log: Callable[[str], None] | None = None,
    program: bool = False,
    permute_rows: bool = False,
) -> dict:
    """Measure every chip of ``fault_maps`` (a folder of maps, one per chip) on the images a
    sign-off with the same options measures; return the lot report, whose ``verdict.passed``
    says whether every chip meets the chip spec. Every map is read and checked, and the profile's
    chip spec required, before any chip runs (ConfigError / DataError / VerifyError).

    With ``program``, each chip is also programmed around its own map
    (:mod:`ftdeploy.programming`; its rows permuted too with ``permute_rows``) and measured again:
    each chip's ``accuracy`` and ``meets_spec``, the lot's ``yield`` and the verdict are then the
    programmed chips' (what ships), and ``accuracy_unprogrammed``, ``meets_spec_unprogrammed`` and
    ``yield_unprogrammed`` keep the file's levels as given.

    Where the profile states field faults (``signoff.field_rate``), the chips as shipped are
    measured once more with them on top of their maps (:class:`ftdeploy.measured.FieldFaults`;
    programming, where asked, still sees only the map): ``accuracy``, ``meets_spec``, ``yield``
    and the verdict are then those, and ``accuracy_without_field``, ``meets_spec_without_field``
    and ``yield_without_field`` the same chips with their measured faults alone."""
    spec = resolved.profile.signoff.chip_spec
    if spec is None:
        raise ConfigError(f"{resolved.profile_path}: verify --fault-maps judges each chip against signoff.chip_spec, and "
                          f"profile {resolved.profile.name!r} sets none; add chip_spec (min_acc_pct and/or max_drop_pct)")  # fmt: skip
    max_images = signoff_settings(resolved.profile.signoff, dict(max_images=max_images)).max_images
    check_chip_counts(1, max_images)
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"batch size: expected at least 1, found {batch_size}")
    export = load_for_profile(onnx_path, resolved)
    placement = placement_of(export)
    if program and export.meta.get("programmed_for") is not None:
        raise ConfigError(f"{onnx_path}: --program programs each chip from the export itself, and this file is already "
                          f"programmed for chip {export.meta['programmed_for']['chip']!r}")  # fmt: skip
    if permute_rows and not program:
        raise ConfigError("--permute-rows: permutes each chip's rows as it is programmed; give --program too")
    if permute_rows:
        check_row_permutation(export, onnx_path)
    chips = MeasuredChips.from_folder(fault_maps, placement, resolved.profile.fault_model)
    field = resolved.profile.field_faults

    t0 = time.perf_counter()
    setup = prepare_signoff(export, _chip_spec_only(resolved), reference, data_spec, val_split, max_images, all_images, threads, batch_size)
    pretrain = setup.pretrain
    threshold = spec.threshold(pretrain.value)
    task = progress.add_task("chips", total=len(chips)) if progress else None
    accs = chip_accuracies(setup.backend, chips, on_chip=(lambda: progress.advance(task)) if progress else None)
    if log:
        log(f"{len(chips)} measured chips in {time.perf_counter() - t0:.1f} s")
    unprogrammed = without_field = None
    if program:
        unprogrammed, accs = accs, _measured(setup, _programmed(chips, setup, permute_rows), "programmed chips", progress, log)
    if field is not None:
        shipped = chips.with_field(FieldFaults(field, resolved.profile.signoff.seed))
        without_field, accs = accs, _measured(setup, _programmed(shipped, setup, permute_rows) if program else shipped,
                                              "chips with field faults", progress, log)  # fmt: skip

    figures = {"acc_pretrain": pretrain.value, "acc_pretrain_source": pretrain.source, "acc_pretrain_same_images": pretrain.same_images,
               "acc_retrain": setup.acc_retrain, "acc_retrain_source": "measured here: this file on a fault-free chip, on these images",
               "chance_pct": 100.0 / len(setup.export.meta["classes"])}  # fmt: skip
    # The sign-off report's sections where they mean the same (tool, model, profile, reference, data);
    # its per-rate sign-off and verdict are replaced by the lot's.
    notes = (list(pretrain.notes) + _simulated_on_top(resolved) + ([PROGRAMMED_NOTE] if program else [])
             + ([PERMUTED_NOTE] if permute_rows else []) + ([field_note(field, program)] if field is not None else []))
    report = signoff_report(setup.export, resolved, setup.data, len(chips), None, {**figures, "rates": []}, Verdict(), notes, setup.reference)
    report["figures"] = figures
    chip_records = [_chip_record(chip, acc, threshold) for chip, acc in zip(chips, accs)]
    if unprogrammed is not None:
        for record, acc in zip(chip_records, unprogrammed):
            record.update(accuracy_unprogrammed=acc, meets_spec_unprogrammed=bool(acc >= threshold))
    if without_field is not None:
        for record, acc, chip in zip(chip_records, without_field, shipped):
            # the field faults among the model's cells as the chip holds them (its rows routed, where permuted)
            _, _, _, state = (ProgrammedChip(chip, export.mapping, permute_rows).routed(export.levels) if program else chip).field_cells()
            record.update(accuracy_without_field=acc, meets_spec_without_field=bool(acc >= threshold),
                          field_stuck_off_in_model=int(np.count_nonzero(state == STUCK_OFF)),
                          field_stuck_on_in_model=int(np.count_nonzero(state == STUCK_ON)))  # fmt: skip
    report["schema"] = LOT_SCHEMA
    report["signoff"] = _signoff_record(resolved, threshold)
    report["lot"] = {
        "fault_maps": str(fault_maps),
        "placement": {"scheme": SCHEME, "tiles": placement.tiles, "tile_rows": placement.tile_rows, "tile_cols": placement.tile_cols},
        "chips": chip_records,
        "yield": chip_yield(accs, threshold, spec.describe(), resolved.profile.signoff.confidence),
    }
    confidence = resolved.profile.signoff.confidence
    if unprogrammed is not None:
        report["lot"]["programmed"] = True
        report["lot"]["rows_permuted"] = permute_rows
        report["lot"]["yield_unprogrammed"] = chip_yield(unprogrammed, threshold, spec.describe(), confidence)
    if without_field is not None:
        report["lot"]["field_rate"] = field.total
        report["lot"]["yield_without_field"] = chip_yield(without_field, threshold, spec.describe(), confidence)
    report["verdict"] = _verdict(chip_records, _chance_failure(figures, resolved.profile.signoff.chance_margin_pct))
    return report


PROGRAMMED_NOTE = ("Each chip was programmed around its own fault map (ftdeploy program): the weights with a stuck cell "
                   "got the healthy cells' levels that read closest to their codes. Accuracy, result and yield are the "
                   "programmed chips'; the unprogrammed figures are the same chips with the file's levels as given.")


PERMUTED_NOTE = ("Each chip's rows were permuted as it was programmed (ftdeploy program --permute-rows): per tile, the "
                 "logical rows were routed to the physical rows where the chip's stuck cells cost the weights least.")


def field_note(field, program: bool) -> str:
    """What the field faults of a lot's sign-off are, and which figures have them."""
    off, on = field.pair
    shipped = "programmed chips" if program else "chips"
    return (f"Field faults: cells that fail after programming, stuck-off {off:.3g} and stuck-on {on:.3g} per cell "
            f"(signoff.field_rate {field.total:g}), drawn per chip from a stream seeded by the map file's SHA-256 and "
            f"signoff.seed, on cells its map does not list, and added to its measured faults"
            f"{'; programming sees only the map' if program else ''}. Accuracy, result and yield are the {shipped} "
            "with field faults (as shipped); 'without field faults' are the same chips with their measured faults alone. "
            "The drop between the two is what field faults cost, which no programming can recover and only "
            "fault-tolerant training can absorb.")  # fmt: skip


def _programmed(chips: MeasuredChips, setup, permute_rows: bool):
    """The chips, each programmed around its own map (its rows permuted too where asked)."""
    return ProgrammedChips(chips, setup.export.mapping, permute_rows)


def _measured(setup, source, what: str, progress, log) -> list[float]:
    """Every chip's accuracy, from a chip source other than the plain measured chips."""
    t0 = time.perf_counter()
    task = progress.add_task(what, total=len(source)) if progress else None
    accs = chip_accuracies(setup.backend, source, on_chip=(lambda: progress.advance(task)) if progress else None)
    if log:
        log(f"{len(source)} {what} measured in {time.perf_counter() - t0:.1f} s")
    return accs


def _chip_spec_only(resolved: ResolvedProfile) -> ResolvedProfile:
    """The profile as far as measured chips are judged: its chip spec, not the acceptance limits
    of simulated rates, so Acc_pretrain is required only where the chip spec needs it."""
    signoff = resolved.profile.signoff.model_copy(update={"acceptance": []})
    return resolved.model_copy(update={"profile": resolved.profile.model_copy(update={"signoff": signoff})})


def _other_kinds(resolved: ResolvedProfile) -> list:
    """The profile's kinds besides stuck-at: what a measured chip suffers on top of its map."""
    faults = resolved.profile.fault_model
    return [k for k in faults.active if k is not faults.stuck]


def _simulated_on_top(resolved: ResolvedProfile) -> list[str]:
    others = _other_kinds(resolved)
    if not others:
        return []
    return [f"Each chip's stuck cells are its map's; {'; '.join(k.describe() for k in others)} are simulated on top as the "
            "profile states them, drawn from a stream seeded by the map file's SHA-256 (the same file gives the same chip)."]  # fmt: skip


def _signoff_record(resolved: ResolvedProfile, threshold: float) -> dict:
    signoff = resolved.profile.signoff
    others = _other_kinds(resolved)
    return {
        "chips_from": "fault maps (measured chips)",
        "confidence": signoff.confidence,
        "chip_spec": signoff.chip_spec.model_dump(),
        "chip_spec_description": signoff.chip_spec.describe(),
        "threshold_pct": threshold,
        "faults": "; ".join(k.describe() for k in others) or "none besides the map: each chip reads exactly its map",
        "stream": "stuck cells from each chip's map; any other kind drawn from a stream seeded by the map file's SHA-256",
        "field_rate": signoff.field_rate,
    }


def _chip_record(chip, accuracy: float, threshold: float) -> dict:
    fmap = chip.fmap
    g = fmap.geometry
    return {"id": chip.id.name, "file": chip.id.file, "sha256": chip.id.sha256, "geometry": [g.tiles, g.tile_rows, g.tile_cols],
            "stuck_off": fmap.stuck_off, "stuck_on": fmap.stuck_on, "stuck_off_in_model": chip.in_model[0],
            "stuck_on_in_model": chip.in_model[1], "accuracy": accuracy, "meets_spec": bool(accuracy >= threshold)}  # fmt: skip


def _chance_failure(figures: dict, margin: float) -> str | None:
    """Why the model itself fails the lot, whatever its chips do: within ``margin`` points of
    chance a model guesses, and a guessing model loses nothing to faults (None: it does not)."""
    above = figures["acc_retrain"] - figures["chance_pct"]
    if margin <= 0 or above >= margin:
        return None
    return (f"the model is {above:.2f} points above chance (Acc_retrain {figures['acc_retrain']:.2f} %, chance "
            f"{figures['chance_pct']:.2f} %), below chance_margin_pct {margin:.2f}")


def _verdict(chips: list[dict], chance_failure: str | None = None) -> dict:
    failing = [c["id"] for c in chips if not c["meets_spec"]]
    if failing:
        summary = f"{len(failing)} of {len(chips)} chips fail the chip spec ({', '.join(failing[:5])}{', ...' if len(failing) > 5 else ''})"
    else:
        summary = f"{len(chips)} of {len(chips)} chips meet the chip spec"
    if chance_failure:
        summary = f"{chance_failure}; {summary}"
    return {"passed": not failing and not chance_failure, "summary": summary, "failing": failing, "chance": chance_failure}
