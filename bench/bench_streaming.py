"""Does a streamed sign-off's (or training's) memory stay flat as the image folder grows? (goal:
peak RSS of the large folder / the small one ≈ 1)

An ImageNet-style folder (10 class folders) of ``--images`` small images (32×32, PNG and JPEG
alternately, random pixels) is written to a temporary folder, and a second one a tenth its size.
On each, one sign-off (:func:`ftdeploy.verify.verify_onnx`: every image of the folder, one rate,
one chip; so three passes over the images: the fingerprint, the fault-free accuracy, the chip)
runs in a fresh process, whose peak resident memory (``getrusage``: the process's own, and the
largest DataLoader worker's) is the figure. Each folder is signed off streamed (``--stream``) and,
for contrast, decoded into memory (``--in-memory``), whose peak grows with the folder.

With ``--training`` the work measured is one epoch of a pretraining instead
(:func:`ftdeploy.training.loop.train`: democnn, the folder's default split, batches of 128; so a
pass for the normalisation statistics, the epoch, the validation images' accuracy and
fingerprint), streamed (``train --stream``) and in memory (``--in-memory``); both give the same
weights (a hash of the checkpoint's state dict is printed).

    python bench/bench_streaming.py                     # 20,000 and 2,000 images
    python bench/bench_streaming.py --images 100000     # 100,000 and 10,000 images
    python bench/bench_streaming.py --quick             # seconds: a smoke run (streamed only)
    python bench/bench_streaming.py --training --images 100000 --small 20000   # a training epoch
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script from a checkout that was not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOT = Path(__file__).resolve().parent.parent
#: Goal: the large folder's streamed peak RSS at most this many times the small folder's.
GOAL_RATIO = 1.2
CLASSES = 10
SIZE = 32


def write_folder(root: Path, images: int, seed: int = 0, side: int = SIZE) -> Path:
    """``images`` random ``side``×``side`` images in ``CLASSES`` class folders: PNG, and every other one JPEG."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(CLASSES):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    for i in range(images):
        img = Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
        name = root / f"class{i % CLASSES}" / f"{i:07d}.{'jpg' if i % 2 else 'png'}"
        img.save(name, quality=90) if i % 2 else img.save(name)
    return root


def export_model(folder: Path) -> tuple[Path, Path]:
    """An untrained democnn for the folder's classes, exported for paper-diff8, and its profile."""
    import torch

    from ftdeploy.data import load_data
    from ftdeploy.export import export_onnx
    from ftdeploy.models import create_model
    from ftdeploy.profiles import load_profile
    from ftdeploy.training.checkpoint import checkpoint_record, load_checkpoint, save_atomic
    from ftdeploy.training.config import TrainConfig

    profile = folder / "bench.yaml"
    profile.write_text("name: bench-stream\ntarget: paper-diff8\nfaults:\n  - kind: stuck-at\n    p_sa: 0.01\n"
                       "signoff:\n  rates: [0.01]\n  chips: 1\n  max_images: null\n")  # fmt: skip
    resolved = load_profile(profile)
    bundle = load_data(None)
    bundle.classes = [f"class{c}" for c in range(CLASSES)]  # the folder's classes, in ImageFolder's order
    torch.manual_seed(0)
    model = create_model("democnn", num_classes=CLASSES).eval()
    config = TrainConfig(model="democnn", method="pretrain", epochs=1, device="cpu", seed=0)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    save_atomic(checkpoint_record(config, bundle, resolved.target, state, "bench", None, None, 0.0, 1), folder / "model.pt")
    export_onnx(load_checkpoint(folder / "model.pt"), resolved, folder / "model.onnx", check_parity=False)
    return folder / "model.onnx", profile


def measure(onnx_path: str, profile: str, images: str, stream: bool) -> dict:
    """One sign-off in this process; its peak RSS (MiB) and wall time."""
    from ftdeploy.profiles import load_profile
    from ftdeploy.verify import verify_onnx

    t0 = time.perf_counter()
    report = verify_onnx(onnx_path, load_profile(profile), f"imagefolder:{images}", all_images=True, stream=stream)
    return {"images": report["data"]["images"], "fingerprint": report["data"]["fingerprint"], "wall_s": time.perf_counter() - t0,
            "peak_rss_mib": _maxrss_mib(resource.RUSAGE_SELF), "worker_peak_rss_mib": _maxrss_mib(resource.RUSAGE_CHILDREN)}  # fmt: skip


def measure_training(images: str, stream: bool, side: int) -> dict:
    """One epoch of a pretraining in this process; its peak RSS (MiB), wall time and a hash of
    the weights it ends with."""
    import hashlib

    from ftdeploy.data import load_data
    from ftdeploy.profiles import load_target
    from ftdeploy.training.config import TrainConfig
    from ftdeploy.training.loop import train

    t0 = time.perf_counter()
    bundle = load_data(f"imagefolder:{images}", image_size=side, stream=stream)
    config = TrainConfig(model="democnn", image_size=side, method="pretrain", epochs=1, batch_size=128, lr=0.05,
                         device="cpu", seed=0)  # fmt: skip
    with tempfile.TemporaryDirectory() as out:
        ckpt = train(config, bundle, load_target("paper-diff8")[0], Path(out))
    weights = hashlib.sha256(b"".join(v.numpy().tobytes() for v in ckpt["state_dict"].values())).hexdigest()[:16]
    return {"images": len(bundle.train_y) + len(bundle.val_y), "fingerprint": ckpt["acc_pretrain_images"],
            "weights_sha256": weights, "val_acc": ckpt["acc_pretrain"], "wall_s": time.perf_counter() - t0,
            "peak_rss_mib": _maxrss_mib(resource.RUSAGE_SELF), "worker_peak_rss_mib": _maxrss_mib(resource.RUSAGE_CHILDREN)}  # fmt: skip


def _maxrss_mib(who) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


def measure_in_fresh_process(onnx_path: Path, profile: Path, images: Path, stream: bool, training_side: int | None = None) -> dict:
    """:func:`measure` (with ``training_side``: :func:`measure_training`) in a new Python process:
    a peak RSS is a process's high-water mark."""
    mode = "stream" if stream else "memory"
    cmd = [sys.executable, __file__, "--measure", str(onnx_path), str(profile), str(images), mode]
    if training_side is not None:
        cmd = [sys.executable, __file__, "--measure-training", str(images), mode, str(training_side)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(f"measuring {images} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(args) -> dict:
    large, small = args.images, args.small or max(CLASSES * 2, args.images // 10)
    kinds = [True] if args.quick else [True, False]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        onnx_path, profile = (None, None) if args.training else export_model(folder)
        rows = []
        for count in (small, large):
            t0 = time.perf_counter()
            images = write_folder(folder / f"images-{count}", count, side=args.side)
            written = time.perf_counter() - t0
            for stream in kinds:
                rows.append({"folder_images": count, "stream": stream, "write_s": written,
                             **measure_in_fresh_process(onnx_path, profile, images, stream, args.side if args.training else None)})  # fmt: skip
    peak = {(r["folder_images"], r["stream"]): r["peak_rss_mib"] for r in rows}
    ratio = peak[(large, True)] / peak[(small, True)]
    return {"rows": rows, "small": small, "large": large, "ratio_streamed": ratio, "meets_goal": ratio <= GOAL_RATIO,
            "ratio_in_memory": None if args.quick else peak[(large, False)] / peak[(small, False)],
            "work": "training epoch" if args.training else "sign-off", "side": args.side,
            "machine": platform.platform(), "python": platform.python_version()}  # fmt: skip


def report(result: dict) -> None:
    training = result.get("work") == "training epoch"
    seconds = "training s" if training else "sign-off s"
    print(f"{'images':>8} {'mode':>9} {'peak RSS MiB':>13} {'worker peak MiB':>16} {seconds:>11}" + ("  weights" if training else ""))
    for r in result["rows"]:
        print(f"{r['folder_images']:>8} {'streamed' if r['stream'] else 'in memory':>9} {r['peak_rss_mib']:>13.1f} "
              f"{r['worker_peak_rss_mib']:>16.1f} {r['wall_s']:>11.1f}" + (f"  {r['weights_sha256']}" if training else ""))  # fmt: skip
    label = "streamed training epoch" if training else "streamed"
    print(f"RATIO peak RSS {result['large']}/{result['small']} images, {label}: {result['ratio_streamed']:.3f} "
          f"(goal <= {GOAL_RATIO}: {'met' if result['meets_goal'] else 'NOT met'})")  # fmt: skip
    if result["ratio_in_memory"] is not None:
        print(f"ratio in memory: {result['ratio_in_memory']:.3f}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=20000, help="images of the large folder (the small one has a tenth)")
    p.add_argument("--small", type=int, help="images of the small folder (default: a tenth of --images)")
    p.add_argument("--quick", action="store_true", help="smoke run: 400 and 40 images, streamed only")
    p.add_argument("--training", action="store_true", help="measure one epoch of a pretraining instead of a sign-off")
    p.add_argument("--side", type=int, default=SIZE, help=f"side of the images in pixels (default {SIZE})")
    p.add_argument("--json", type=Path, help="also write the result as JSON")
    p.add_argument("--measure", nargs=4, metavar=("ONNX", "PROFILE", "FOLDER", "MODE"), help=argparse.SUPPRESS)
    p.add_argument("--measure-training", nargs=3, metavar=("FOLDER", "MODE", "SIDE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.small = 400, None
    if args.images < CLASSES * 2:
        p.error(f"--images: expected at least {CLASSES * 2}, found {args.images}")
    if args.small is not None and not CLASSES * 2 <= args.small < args.images:
        p.error(f"--small: expected {CLASSES * 2} to {args.images - 1} images, found {args.small}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.measure:
        onnx_path, profile, images, mode = args.measure
        print(json.dumps(measure(onnx_path, profile, images, mode == "stream")))
        return 0
    if args.measure_training:
        images, mode, side = args.measure_training
        print(json.dumps(measure_training(images, mode == "stream", int(side))))
        return 0
    result = run(args)
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
