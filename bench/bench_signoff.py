"""What does sign-off at scale cost? Four ratios, each measured in this one run and printed with its goal.

One model (``--model``, untrained: only the timing matters), exported for ``paper-diff8``, on
``--images`` images: the validation part of ``--data`` where given, else random uint8 images of
CIFAR-10's shape with random labels (accuracy is meaningless then, the arithmetic is the same).

(a) **one simulated chip / plain inference** (goal <= 1.1, on the CPU): ONNX Runtime on one chip,
    as sign-off runs it (draw the chip from its stream, feed its cells, run every image), over
    ONNX Runtime running the exported file as it is on the same images.
(b) **batched / one-at-a-time chips per second** (goal >= 10 on a GPU for ResNet-20 on CIFAR-10;
    on the CPU reported as measured, labelled with the device): the PyTorch backend on ``--chips``
    chips, ``--chip-batch`` per forward pass, over the same chips one at a time. The share of the
    batched time spent drawing chips is printed too (the draw must not be the bottleneck).
(c) **the paper's campaign on one GPU**: ResNet-20, 14 stuck-at rates x 100 chips x 10,000 images,
    batched, timed end to end; only where CUDA is present (``--quick``: 2 rates x 2 chips, labelled
    so). Without a GPU it prints "not run: no GPU".
(d) **fault-injected / plain training epoch** (goal <= 1.25): bench_train_overhead.py's headline,
    run here with its own code (fewer steps: see ``--train-steps``).

    python bench/bench_signoff.py                          # resnet20, 1000 images, 16 chips
    python bench/bench_signoff.py --data cifar10:DIR       # the real validation images
    python bench/bench_signoff.py --quick                  # a smoke run in seconds (tests/test_bench.py)
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script from a checkout that was not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ftdeploy.chip import DeployedNetwork  # noqa: E402
from ftdeploy.data import normalize_numpy  # noqa: E402
from ftdeploy.exported import load_export  # noqa: E402
from ftdeploy.onnx_format import INPUT_NAME, OUTPUT_NAME  # noqa: E402
from ftdeploy.population import SimulatedChips, chip_accuracies, draw_readings  # noqa: E402
from ftdeploy.runtime import OnnxBackend, available_cores  # noqa: E402
from ftdeploy.training.checkpoint import load_checkpoint, model_from_checkpoint  # noqa: E402
from ftdeploy.verify import evaluation_data  # noqa: E402

GOAL_CHIP_OVER_PLAIN = 1.1
GOAL_BATCHED_SPEEDUP_GPU = 10.0
GOAL_TRAIN_RATIO = 1.25
RATE = 0.01
SEED = 0
#: The paper's campaign: 14 stuck-at rates x 100 chips x 10,000 images. The rates' values do not
#: change the cost (every rate draws and runs the same way), only their count does.
CAMPAIGN_RATES = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1)
CAMPAIGN_CHIPS, CAMPAIGN_IMAGES = 100, 10_000


@functools.cache
def _sibling(name: str):
    """Another bench of this folder, by file name: its code is reused, not copied."""
    path = Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


class Setup:
    """The export, its torch twin, and the images both run on (uint8 for torch, normalised for ORT)."""

    def __init__(self, args, folder: Path):
        onnx_path, self.resolved = _sibling("bench_programming").export_model(args.model, "paper-diff8", folder)
        self.export = load_export(onnx_path)
        self.onnx_path = onnx_path
        self.ckpt = load_checkpoint(folder / "model.pt")
        norm = self.ckpt["normalization"]
        self.mean, self.std = norm["mean"], norm["std"]
        self.raw, self.y, self.images_from = images(self.export, args.data, args.images)
        self.x = normalize_numpy(self.raw, self.mean, self.std)
        self.faults = self.resolved.profile.signoff_faults(RATE)

    def torch_backend(self, device: torch.device, chip_batch: int, raw=None, y=None):
        net = DeployedNetwork(model_from_checkpoint(self.ckpt), self.resolved.target, device)
        raw, y = (self.raw, self.y) if raw is None else (raw, y)
        return net.backend(torch.from_numpy(raw), torch.from_numpy(y), self.mean, self.std, chip_batch=chip_batch)


def images(export, data: str | None, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """(uint8 images, int64 labels, where they came from): ``data``'s validation part, or random
    images of the export's input shape."""
    if data:
        d = evaluation_data(export, data, None, count)
        return d.raw, d.y, f"{d.record['images']} validation images of {data}"
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (count, *export.image_shape), dtype=np.uint8)
    return raw, rng.integers(0, len(export.meta["classes"]), count).astype(np.int64), f"{count} random images"


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def chip_over_plain(s: Setup, repeats: int) -> dict:
    """(a): one chip on the sign-off backend over the exported file run as it is, alternating."""
    import onnxruntime as ort

    backend = OnnxBackend(s.export, s.x, s.y)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = backend.threads  # the same threads as the sign-off backend
    plain = ort.InferenceSession(str(s.onnx_path), opts, providers=["CPUExecutionProvider"])

    def run_plain():
        for start in range(0, len(s.y), backend.batch_size):
            plain.run([OUTPUT_NAME], {INPUT_NAME: s.x[start : start + backend.batch_size]})

    def run_chip(k: int):
        chip = next(iter(SimulatedChips(s.faults, RATE, SEED, 1, start=k)))
        backend.accuracy(chip.reading(backend.programmed, backend.cells))

    run_plain(), run_chip(0)  # untimed: sessions, allocator
    times = {"plain": [], "chip": []}
    for k in range(repeats):
        times["plain"].append(_timed(run_plain))
        times["chip"].append(_timed(lambda k=k: run_chip(k + 1)))
    ratio = statistics.median(c / p for c, p in zip(times["chip"], times["plain"]))
    return {"wall_s": times, "ratio": ratio, "goal": GOAL_CHIP_OVER_PLAIN, "meets_goal": ratio <= GOAL_CHIP_OVER_PLAIN,
            "threads": backend.threads, "device": "cpu"}  # fmt: skip


def batched_over_single(s: Setup, device: torch.device, chips: int, chip_batch: int) -> dict:
    """(b): the same chips through the PyTorch backend one at a time and ``chip_batch`` per pass."""
    single, batched = s.torch_backend(device, 1), s.torch_backend(device, chip_batch)
    population = SimulatedChips(s.faults, RATE, SEED, chips)
    warm = SimulatedChips(s.faults, RATE, SEED, min(chips, chip_batch), start=chips)  # untimed: kernels, allocator
    chip_accuracies(single, SimulatedChips(s.faults, RATE, SEED, 1, start=chips)), chip_accuracies(batched, warm)
    out = {}

    def measure(name, backend):
        out[name] = chip_accuracies(backend, population)
        _sync(device)

    t_single = _timed(lambda: measure("single", single))
    t_batched = _timed(lambda: measure("batched", batched))
    chip_list = list(population)
    groups = [chip_list[i : i + chip_batch] for i in range(0, chips, chip_batch)]
    # the draw alone, as chip_accuracies does it for each group of the batched run
    t_draw = _timed(lambda: [draw_readings(group, single.programmed, single.cells) for group in groups])
    diff = max(abs(a - b) for a, b in zip(out["single"], out["batched"]))
    speedup = t_single / t_batched
    gpu = device.type == "cuda"
    return {"device": str(device), "device_name": device_name(device), "chips": chips, "chip_batch": chip_batch,
            "wall_s": {"single": t_single, "batched": t_batched, "draw": t_draw},
            "chips_per_s": {"single": chips / t_single, "batched": chips / t_batched}, "speedup": speedup,
            "draw_share": t_draw / t_batched, "max_accuracy_difference_pct": diff,
            "goal": GOAL_BATCHED_SPEEDUP_GPU if gpu else None,
            "meets_goal": speedup >= GOAL_BATCHED_SPEEDUP_GPU if gpu else None}  # fmt: skip


def campaign(s: Setup, device: torch.device, chip_batch: int, quick: bool) -> dict | None:
    """(c): every rate's chips on every image, batched, on one GPU; None without one."""
    if device.type != "cuda":
        return None
    rates, chips, count = (CAMPAIGN_RATES[:2], 2, len(s.y)) if quick else (CAMPAIGN_RATES, CAMPAIGN_CHIPS, CAMPAIGN_IMAGES)
    raw, y, _ = (s.raw, s.y, None) if count == len(s.y) else images(s.export, None, count, seed=1)
    backend = s.torch_backend(device, chip_batch, raw, y)
    t0 = time.perf_counter()
    for rate in rates:
        chip_accuracies(backend, SimulatedChips(s.resolved.profile.signoff_faults(rate), rate, SEED, chips))
    _sync(device)
    wall = time.perf_counter() - t0
    return {"rates": len(rates), "chips": chips, "images": count, "chip_batch": chip_batch, "wall_s": wall,
            "device_name": device_name(device), "paper_campaign": not quick}  # fmt: skip


def train_ratio(args) -> dict:
    """(d): bench_train_overhead.py's faulty / plain epoch, by its own code."""
    overhead = _sibling("bench_train_overhead")
    targs = overhead.parse_args(["--model", args.model, "--steps", str(args.train_steps), "--repeats", str(args.train_repeats),
                                 "--warmup-steps", "1", "--batch-size", str(args.train_batch), "--device", args.device])  # fmt: skip
    s = overhead.measure(targs).summary()
    return {"ratio": s["ratio"], "goal": s["requirement"], "meets_goal": s["meets_requirement"], "steps": targs.steps,
            "repeats": targs.repeats, "batch_size": targs.batch_size, "device": s["device"]}  # fmt: skip


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{_sibling('bench_train_overhead').cpu_name()}, {available_cores()} cores"


def run(args) -> dict:
    from ftdeploy.devices import pick_device

    device = pick_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        s = Setup(args, Path(tmp))
        result = {"model": args.model, "images": s.images_from, "rate": RATE,
                  "a_chip_over_plain": chip_over_plain(s, args.repeats),
                  "b_batched_over_single": batched_over_single(s, device, args.chips, args.chip_batch or args.chips),
                  "c_campaign": campaign(s, device, args.chip_batch or CAMPAIGN_CHIPS, args.quick)}  # fmt: skip
    result["d_train_epoch"] = train_ratio(args)
    return result


def report(r: dict) -> None:
    a, b, c, d = r["a_chip_over_plain"], r["b_batched_over_single"], r["c_campaign"], r["d_train_epoch"]
    print(f"{r['model']} on paper-diff8, {r['images']}, stuck-at rate {r['rate']:g}")
    print(f"(a) RATIO one simulated chip / plain ONNX Runtime inference: {a['ratio']:.3f} (goal <= {a['goal']:g}: "
          f"{'met' if a['meets_goal'] else 'NOT met'}; CPU, {a['threads']} threads, median of {len(a['wall_s']['chip'])})")  # fmt: skip
    goal = (f"goal >= {b['goal']:g} on a GPU: {'met' if b['meets_goal'] else 'NOT met'}" if b["goal"]
            else f"goal >= {GOAL_BATCHED_SPEEDUP_GPU:g} applies on a GPU; this is the CPU")  # fmt: skip
    print(f"(b) RATIO batched / one-at-a-time chips per second: {b['speedup']:.2f} ({goal}; {b['device']}: {b['device_name']}; "
          f"{b['chips']} chips, {b['chip_batch']} per pass; {b['chips_per_s']['single']:.2f} -> {b['chips_per_s']['batched']:.2f} "
          f"chips/s; drawing the chips {100 * b['draw_share']:.0f} % of the batched time; accuracies differ by at most "
          f"{b['max_accuracy_difference_pct']:.2f} points)")  # fmt: skip
    if c is None:
        print("(c) the paper's campaign (ResNet-20, 14 rates x 100 chips x 10,000 images) on one GPU: not run: no GPU")
    else:
        what = "the paper's campaign" if c["paper_campaign"] else "a quick campaign (not the paper's)"
        print(f"(c) {what}: {c['rates']} rates x {c['chips']} chips x {c['images']} images in {c['wall_s']:.1f} s on "
              f"{c['device_name']} ({c['chip_batch']} chips per pass; no goal set: reported as measured)")  # fmt: skip
    print(f"(d) RATIO fault-injected / plain training epoch: {d['ratio']:.3f} (goal <= {d['goal']:g}: "
          f"{'met' if d['meets_goal'] else 'NOT met'}; {d['device']}, {d['steps']} steps x {d['repeats']}, batch {d['batch_size']})")  # fmt: skip


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20", help="Model registry name (default resnet20).")
    p.add_argument("--data", default=None, help="Dataset spec (as ftdeploy's --data); default: random images of CIFAR-10's shape.")
    p.add_argument("--images", type=int, default=1000, help="Images per chip (default 1000).")
    p.add_argument("--chips", type=int, default=16, help="Chips of (b), one at a time and batched (default 16).")
    p.add_argument("--chip-batch", type=int, default=None, help="Chips per forward pass in (b) and (c) (default: --chips; 100 in (c)).")
    p.add_argument("--repeats", type=int, default=3, help="Timings of (a) per kind; the ratio is their median.")
    p.add_argument("--device", default="auto", help="Device of (b), (c) and (d): auto (CUDA if present), cpu or cuda[:N].")
    p.add_argument("--train-steps", type=int, default=5, help="Steps per timed epoch of (d).")
    p.add_argument("--train-repeats", type=int, default=3, help="Repetitions of (d).")
    p.add_argument("--train-batch", type=int, default=128, help="Batch size of (d).")
    p.add_argument("--quick", action="store_true", help="democnn, 64 images, 4 chips, 1-step epochs: a smoke run")
    p.add_argument("--json", type=Path, default=None, help="Also write the result as JSON.")
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.images, args.chips, args.repeats = "democnn", 64, 4, 2
        args.train_steps, args.train_repeats, args.train_batch = 1, 2, 8
    for name in ("images", "chips", "repeats", "train_steps", "train_repeats", "train_batch"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: expected at least 1, found {getattr(args, name)}")
    if args.chip_batch is not None and args.chip_batch < 1:
        p.error(f"--chip-batch: expected at least 1, found {args.chip_batch}")
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
