"""How many chips does sequential sign-off save? (goal: at most 0.3x the fixed count)

One model (the demo CNN trained briefly on the embedded data, exported to ONNX), signed off
twice on each of two profiles, in this one process on the same images and the same chips:
sequentially (chips drawn ``--batch-chips`` at a time, each rate stopping once its limits are
decided) and with the fixed count (every one of ``--chips`` chips per rate, ``verify
--fixed-chips``). The profiles differ only in their limits, set from the model's own fault-free
accuracy:

* ``clear-pass``: mean Acc_defect at least Acc_retrain − 30 points and half the chips within
  30 points of it (a yield), at each rate: limits the chips clear by far;
* ``clear-fail``: mean Acc_defect at least Acc_retrain + 5 points and half the chips there: no
  faulty chip gets there on average.

For each the headline is chips drawn sequentially / chips of the fixed count, with the wall-time
ratio of the two sign-offs (setup included, so it is a little above the chip ratio; after an
untimed warm-up sign-off, the median over ``--repeats``), and whether both reached the same
verdict.

    python bench/bench_sequential.py                       # 300 images, 100 chips per rate
    python bench/bench_sequential.py --quick               # seconds: a smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a script from a checkout that was not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ftdeploy.chip import deployed_accuracy  # noqa: E402
from ftdeploy.data import load_data, normalize  # noqa: E402
from ftdeploy.export import export_onnx  # noqa: E402
from ftdeploy.exported import load_export  # noqa: E402
from ftdeploy.models import create_model  # noqa: E402
from ftdeploy.profiles import load_profile  # noqa: E402
from ftdeploy.runtime import OnnxBackend  # noqa: E402
from ftdeploy.training.checkpoint import checkpoint_record, load_checkpoint, save_atomic  # noqa: E402
from ftdeploy.training.config import TrainConfig  # noqa: E402
from ftdeploy.verify import evaluation_data, verify_onnx  # noqa: E402

GOAL = 0.3  # chips drawn sequentially / fixed count, on a clear pass and a clear fail
TARGET = "paper-diff8"
PASS_MARGIN, FAIL_MARGIN = 30.0, 5.0  # points below / above Acc_retrain


def train_export(steps: int, folder: Path, target_name: str = TARGET) -> Path:
    """democnn after ``steps`` SGD steps on the embedded data, written as a pretraining
    checkpoint and exported for the target; returns the ONNX file."""
    bundle = load_data(None)
    profile = folder / "export.yaml"
    profile.write_text(_profile_text(target_name, [0.01], 10, 10, None, []))
    resolved = load_profile(profile)
    torch.manual_seed(0)
    model = create_model("democnn", num_classes=bundle.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    order = torch.randperm(len(bundle.train_y), generator=torch.Generator().manual_seed(0))
    model.train()
    for step in range(steps):
        idx = order[(step * 64) % len(order):][:64]
        loss = F.cross_entropy(model(normalize(bundle.train_x[idx], bundle.mean, bundle.std)), bundle.train_y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    config = TrainConfig(model="democnn", method="pretrain", epochs=1, device="cpu", seed=0)
    clean, _ = deployed_accuracy(model, resolved.target, bundle, "cpu")
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    save_atomic(checkpoint_record(config, bundle, resolved.target, state, "bench", None, None, clean, 1), folder / "model.pt")
    out = folder / "model.onnx"
    export_onnx(load_checkpoint(folder / "model.pt"), resolved, out)
    return out


def _profile_text(target: str, rates: list[float], chips: int, batch: int, images: int | None, limits: list[dict],
                  spec_pct: float | None = None) -> str:  # fmt: skip
    lines = ["name: bench-seq", f"target: {target}", "faults:", "  - kind: stuck-at", "    p_sa: 0.01", "signoff:",
             f"  rates: {rates}", f"  chips: {chips}", f"  batch_chips: {batch}", "  chance_margin_pct: 0"]  # fmt: skip
    if images is not None:
        lines.append(f"  max_images: {images}")
    if spec_pct is not None:
        lines.append(f"  chip_spec: {{min_acc_pct: {spec_pct:.4f}}}")
    if limits:
        lines.append("  acceptance:")
        for lim in limits:
            lines += [f"    - rate: {lim['rate']}"] + [f"      {k}: {v:.4f}" for k, v in lim.items() if k != "rate"]
    return "\n".join(lines) + "\n"


def case_profiles(folder: Path, acc_retrain: float, args) -> dict[str, Path]:
    """The clear-pass and clear-fail profiles: a mean limit and a yield at every rate."""
    paths = {}
    for name, level in (("clear-pass", max(acc_retrain - PASS_MARGIN, 0.0)), ("clear-fail", min(acc_retrain + FAIL_MARGIN, 100.0))):
        limits = [{"rate": r, "min_acc_defect_pct": level, "min_yield_pct": 50.0} for r in args.rates]
        paths[name] = folder / f"{name}.yaml"
        paths[name].write_text(_profile_text(TARGET, args.rates, args.chips, args.batch_chips, args.images, limits, spec_pct=level))
    return paths


def clean_accuracy(onnx: Path, images: int, threads: int | None) -> float:
    """The export's fault-free accuracy on the images the sign-offs measure."""
    export = load_export(onnx)
    data = evaluation_data(export, None, None, images)
    return OnnxBackend(export, data.x, data.y, threads).accuracy()


def _timed_signoff(onnx: Path, profile: Path, sequential: bool, threads: int | None) -> tuple[dict, float]:
    t0 = time.perf_counter()
    report = verify_onnx(onnx, load_profile(profile), sequential=sequential, threads=threads)
    return report, time.perf_counter() - t0


def run_case(name: str, onnx: Path, profile: Path, threads: int | None, repeats: int) -> dict:
    """Fixed count and sequential, in turn ``repeats`` times, on the same chips; the ratio of
    chips drawn and the median wall-time ratio."""
    fixed_times, seq_times = [], []
    for _ in range(repeats):
        fixed, fixed_s = _timed_signoff(onnx, profile, False, threads)
        seq, seq_s = _timed_signoff(onnx, profile, True, threads)
        fixed_times.append(fixed_s)
        seq_times.append(seq_s)
    fixed_s, seq_s = statistics.median(fixed_times), statistics.median(seq_times)
    result = {"case": name, "chips_sequential": seq["signoff"]["chips_used"], "chips_fixed": fixed["signoff"]["chips_used"],
              "wall_s_sequential": seq_s, "wall_s_fixed": fixed_s,
              "chips_per_rate": [r["chips"] for r in seq["figures"]["rates"]],
              "stopped": [r["stopped"]["reason"] for r in seq["figures"]["rates"]],
              "verdict_sequential": seq["verdict"]["passed"], "verdict_fixed": fixed["verdict"]["passed"],
              "acc_retrain": seq["figures"]["acc_retrain"],
              "acc_defect_mean_fixed": [r["acc_defect_mean"] for r in fixed["figures"]["rates"]]}  # fmt: skip
    result["chip_ratio"] = result["chips_sequential"] / result["chips_fixed"]
    result["wall_ratio"] = statistics.median(s / f for s, f in zip(seq_times, fixed_times))
    return result


def _print_case(r: dict) -> None:
    verdicts = f"verdict {'PASSED' if r['verdict_sequential'] else 'FAILED'} / {'PASSED' if r['verdict_fixed'] else 'FAILED'}"
    print(f"{r['case']}: chips {r['chips_sequential']} / {r['chips_fixed']} = {r['chip_ratio']:.3f}x "
          f"({'meets' if r['chip_ratio'] <= GOAL else 'misses'} the {GOAL}x goal); wall {r['wall_s_sequential']:.1f} s / "
          f"{r['wall_s_fixed']:.1f} s = {r['wall_ratio']:.3f}x; {verdicts} (sequential / fixed)")  # fmt: skip
    for rate_chips, why in zip(r["chips_per_rate"], r["stopped"]):
        print(f"    {rate_chips} chips: {why}", file=sys.stderr)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chips", type=int, default=100, help="cap of the sequential sign-off = the fixed count, per rate")
    ap.add_argument("--batch-chips", type=int, default=10, help="chips per batch of the sequential sign-off")
    ap.add_argument("--images", type=int, default=300, help="validation images signed off on (class-stratified subset)")
    ap.add_argument("--steps", type=int, default=200, help="SGD steps of the model's training (batch 64)")
    ap.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")], default=[0.005, 0.01], help="sign-off rates")
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: the cores)")
    ap.add_argument("--repeats", type=int, default=1, help="sign-offs of each kind per case; the wall-time ratio is their median")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 50 images, 20 chips, batches of 5, 30 steps")
    ap.add_argument("--json", type=Path, default=None, help="also write the result as JSON")
    args = ap.parse_args(argv)
    if args.quick:
        args.chips, args.batch_chips, args.images, args.steps = 20, 5, 50, 30
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        onnx = train_export(args.steps, folder)
        acc_retrain = clean_accuracy(onnx, args.images, args.threads)  # the limits are set from it
        print(f"democnn after {args.steps} steps, Acc_retrain {acc_retrain:.2f} % on {args.images} images; "
              f"rates {args.rates}, at most {args.chips} chips per rate in batches of {args.batch_chips} "
              f"({time.perf_counter() - t0:.1f} s to set up)", file=sys.stderr)  # fmt: skip
        profiles = case_profiles(folder, acc_retrain, args)
        _timed_signoff(onnx, profiles["clear-pass"], True, args.threads)  # warm-up: the first sign-off loads the runtimes
        results = [run_case(name, onnx, path, args.threads, args.repeats) for name, path in profiles.items()]
    for r in results:
        _print_case(r)
    worst = max(r["chip_ratio"] for r in results)
    print("RATIO chips sequential/fixed: " + ", ".join(f"{r['case']} {r['chip_ratio']:.3f}" for r in results)
          + f" (goal <= {GOAL}: {'met' if worst <= GOAL else 'missed'}); wall: "
          + ", ".join(f"{r['case']} {r['wall_ratio']:.3f}" for r in results))  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"goal": GOAL, "meets_goal": worst <= GOAL, "cases": results,
                                         "settings": {k: v for k, v in vars(args).items() if k != "json"},
                                         "machine": platform.processor() or platform.machine(), "torch": torch.__version__},
                                        indent=2) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
