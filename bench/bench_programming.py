"""How long does programming one chip around its fault map take? (goal: at most 1 s per chip)

One ResNet-20 (untrained: only the timing matters), exported for ``--target``, and the fault maps
of ``--chips`` simulated chips at stuck-at rate ``--rate``. On one CPU core (the process pinned
to one core, BLAS and PyTorch on one thread), in this one process, each chip is:

* **programmed**: :func:`ftdeploy.programming.program_chip` on the export's levels and the chip's
  stuck states (the search itself);
* **written**: :func:`ftdeploy.programming.program_export`, the whole ``ftdeploy program``
  (read the export and the map, program, write the chip's ONNX file with its new hash);

* **permuted**: :func:`ftdeploy.programming.program_export` with ``permute_rows`` (``ftdeploy
  program --permute-rows``: each tile's rows routed to where the stuck cells cost least, then
  programmed), on a copy of ``--target`` with ``row_permutation: true``; and the choice of
  permutation alone (:func:`ftdeploy.programming.choose_row_permutation`);

against two references timed the same way: reading the export (:func:`load_export`: parse the
file, check its hash, decode every cell initializer), and drawing one simulated chip's stuck
states (what sign-off does per chip). The headline is seconds per chip for ``ftdeploy program``
and its ratio to reading the export; medians over the chips.

    python bench/bench_programming.py                    # resnet20, paper-diff8, 10 chips at 1 %
    python bench/bench_programming.py --target mlc2-bitsliced
    python bench/bench_programming.py --quick            # seconds: a smoke run (democnn, 2 chips)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __name__ == "__main__":  # one core: set before numpy loads BLAS (not in a test's process)
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import torch  # noqa: E402

if __package__ in (None, ""):  # run as a script from a checkout that was not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ftdeploy.data import load_data  # noqa: E402
from ftdeploy.export import export_onnx  # noqa: E402
from ftdeploy.exported import load_export  # noqa: E402
from ftdeploy.faultmap import read_fault_map  # noqa: E402
from ftdeploy.measured import simulate_fault_maps  # noqa: E402
from ftdeploy.models import create_model  # noqa: E402
from ftdeploy.nonideality import chip_rng  # noqa: E402
from ftdeploy.placement import placement_of  # noqa: E402
from ftdeploy.profiles import load_profile  # noqa: E402
from ftdeploy.programming import choose_row_permutation, program_chip, program_export  # noqa: E402
from ftdeploy.training.checkpoint import checkpoint_record, load_checkpoint, save_atomic  # noqa: E402
from ftdeploy.training.config import TrainConfig  # noqa: E402

GOAL_S = 1.0  # seconds per chip for `ftdeploy program`
SEED = 3


@contextlib.contextmanager
def one_core():
    """Run on one CPU core, so the figure is what a core of a production-line host does; the
    process's cores and PyTorch's threads are given back after (a test calls this in-process)."""
    pinned = hasattr(os, "sched_setaffinity")
    cores, threads = (os.sched_getaffinity(0) if pinned else None), torch.get_num_threads()
    if pinned:
        os.sched_setaffinity(0, {min(cores)})
    torch.set_num_threads(1)
    try:
        yield
    finally:
        if pinned:
            os.sched_setaffinity(0, cores)
        torch.set_num_threads(threads)


def routed_target(target: str, folder: Path) -> Path:
    """A copy of shipped ``target`` whose chips can route rows (``row_permutation: true``)."""
    from ftdeploy.profiles import load_target

    import yaml

    fields = load_target(target)[0].model_dump(mode="json") | {"row_permutation": True}
    path = folder / "routed-target.yaml"
    path.write_text(yaml.safe_dump(fields))
    return path


def export_model(model_name: str, target: str, folder: Path):
    """An untrained ``model_name`` (eval mode, its BatchNorm at defaults) exported for ``target``
    (its row-routing copy: the cells are the same, and program may then permute rows)."""
    profile = folder / "bench.yaml"
    profile.write_text(f"name: bench-program\ntarget: {routed_target(target, folder).name}\nfaults:\n  - kind: stuck-at\n"
                       "    p_sa: 0.01\nsignoff:\n  rates: [0.01]\n  chips: 1\n")  # fmt: skip
    resolved = load_profile(profile)
    bundle = load_data(None)
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=bundle.num_classes).eval()
    config = TrainConfig(model=model_name, method="pretrain", epochs=1, device="cpu", seed=0)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    save_atomic(checkpoint_record(config, bundle, resolved.target, state, "bench", None, None, 0.0, 1), folder / "model.pt")
    out = folder / "model.onnx"
    export_onnx(load_checkpoint(folder / "model.pt"), resolved, out, check_parity=False)
    return out, resolved


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(args) -> dict:
    with one_core(), tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        onnx_path, resolved = export_model(args.model, args.target, folder)
        export = load_export(onnx_path)
        placement = placement_of(export)
        faults = resolved.profile.signoff_faults(args.rate)
        maps = simulate_fault_maps(placement, faults, args.rate, SEED, args.chips, folder / "maps", "npz")
        program_export(onnx_path, maps[0], folder / "warmup.onnx")  # untimed: first calls import and allocate
        program_export(onnx_path, maps[0], folder / "warmup.onnx", permute_rows=True)
        times: dict[str, list[float]] = {"read_export": [], "draw_chip": [], "program_chip": [], "ftdeploy_program": [],
                                         "choose_permutation": [], "ftdeploy_program_permuted": []}  # fmt: skip
        stuck_weights, residual = [], {"unpermuted": [], "permuted": []}
        for k, path in enumerate(maps):
            fmap = read_fault_map(path)
            states = placement.layer_states(fmap.tile, fmap.row, fmap.col, fmap.state)
            stuck_weights.append(sum(int((st != 0).any(0).sum()) for st in states))
            cells = (fmap.tile, fmap.row, fmap.col, fmap.state)
            times["read_export"].append(_timed(lambda: load_export(onnx_path)))
            times["draw_chip"].append(_timed(lambda: faults.draw(placement.cell_shapes, chip_rng(SEED, args.rate, k))))
            times["program_chip"].append(_timed(lambda: program_chip(export.mapping, export.levels, states)))
            times["ftdeploy_program"].append(_timed(lambda: program_export(onnx_path, path, folder / f"chip-{k}.onnx")))
            times["choose_permutation"].append(_timed(lambda: choose_row_permutation(export.mapping, placement, export.levels, *cells)))
            records = []
            times["ftdeploy_program_permuted"].append(_timed(lambda: records.append(
                program_export(onnx_path, path, folder / f"chip-{k}-routed.onnx", permute_rows=True))))  # fmt: skip
            residual["unpermuted"].append(records[0]["residual_unpermuted"])
            residual["permuted"].append(records[0]["residual_permuted"])
    median = {name: statistics.median(values) for name, values in times.items()}
    weights = sum(lv[0].size for lv in export.levels)
    return {
        "model": args.model, "target": args.target, "mapping": export.mapping.describe(), "rate": args.rate,
        "chips": args.chips, "weights": weights, "cells": weights * export.mapping.cells_per_weight,
        "weights_with_stuck_cells_median": statistics.median(stuck_weights),
        "median_s": median, "wall_s": times,
        "ratio_program_to_read": median["ftdeploy_program"] / median["read_export"],
        "ratio_search_to_draw": median["program_chip"] / median["draw_chip"],
        "residual_codes": residual,
        "goal_s": GOAL_S, "meets_goal": median["ftdeploy_program"] <= GOAL_S,
        "meets_goal_permuted": median["ftdeploy_program_permuted"] <= GOAL_S,
        "host": {"machine": platform.machine(), "processor": platform.processor(), "python": platform.python_version(),
                 "cores_used": 1},
    }  # fmt: skip


def report(result: dict) -> None:
    m = result["median_s"]
    print(f"{result['model']} on {result['target']} ({result['mapping']}): {result['weights']:,} weights, "
          f"{result['cells']:,} cells; {result['chips']} chips at stuck-at rate {result['rate']:g}, median "
          f"{result['weights_with_stuck_cells_median']:,.0f} weights with a stuck cell per chip; one CPU core")  # fmt: skip
    print(f"  read the export (load_export)        {m['read_export']:8.3f} s")
    print(f"  draw one simulated chip's states     {m['draw_chip']:8.3f} s")
    print(f"  program_chip (the search alone)      {m['program_chip']:8.3f} s")
    print(f"  ftdeploy program (read, program, write) {m['ftdeploy_program']:5.3f} s per chip")
    print(f"  choose the row permutation           {m['choose_permutation']:8.3f} s")
    print(f"  ftdeploy program --permute-rows      {m['ftdeploy_program_permuted']:8.3f} s per chip")
    r = result["residual_codes"]
    print(f"  summed residual error (codes, median) {statistics.median(r['unpermuted']):,.0f} rows in place -> "
          f"{statistics.median(r['permuted']):,.0f} permuted")  # fmt: skip
    print(f"RATIO ftdeploy program / read export: {result['ratio_program_to_read']:.2f}; search / draw one chip: "
          f"{result['ratio_search_to_draw']:.2f}; goal <= {GOAL_S:g} s per chip: {'met' if result['meets_goal'] else 'NOT met'}, "
          f"with --permute-rows: {'met' if result['meets_goal_permuted'] else 'NOT met'}")  # fmt: skip


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--target", default="paper-diff8")
    p.add_argument("--rate", type=float, default=0.01, help="total stuck-at rate of the simulated chips")
    p.add_argument("--chips", type=int, default=10)
    p.add_argument("--quick", action="store_true", help="democnn, 2 chips: a smoke run")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.chips = "democnn", 2
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    result = run(args)
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
