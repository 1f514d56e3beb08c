"""How much slower is a fault-injected training epoch than a plain one? (requirement: <= 1.25x)

All epochs run in this one process on the same model, the same images and the same number of
steps at the same batch size, each step the trainer's own (``ftdeploy.training.loop.sgd_step``). Three kinds:

* ``plain``: retraining without faults: BatchNorm frozen, gradient-norm clipping;
* ``faulty``: the same with ``training.injection.FaultInjector`` attached at ``--rate`` (a new random chip
  every step);
* ``pretrain``: pretraining: BatchNorm in training mode, no clipping;
* ``distill`` (with ``--distill``): ``faulty`` plus distillation from a clean teacher
  (``TrainConfig.distill``), i.e. one more fault-free forward per step; reported as
  distill / faulty, what ``--distill`` adds to a retraining.

The headline RATIO is faulty / plain: the two differ only by fault injection, so the ratio is
its cost and nothing else. faulty / pretrain (what a user sees between the two phases of a
run) is reported too; on a CPU frozen BatchNorm is much cheaper than training-mode BatchNorm
and hides part of the fault path's cost.

After warm-up the kinds run in a rotating order (every order of the three in turn), and each
ratio is the median over repetitions, so drift and a noisy neighbour cancel out. Wall-clock
and process CPU time are both recorded; ``--profile-steps`` prints where a fault-injected step
spends its time.

    python bench/bench_train_overhead.py --model resnet20 --json bench-resnet20.json
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

import torch

if __package__ in (None, ""):  # run as a script from a checkout that was not pip-installed
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ftdeploy.data import augment, normalize  # noqa: E402
from ftdeploy.models import create_model
from ftdeploy.profiles import load_profile
from ftdeploy.devices import pick_device
from ftdeploy.training.config import TrainConfig
from ftdeploy.training.injection import FaultInjector, freeze_batchnorm
from ftdeploy.training.loop import sgd_step

REQUIREMENT = 1.25  # product requirement on fault-injected / plain epoch time
KINDS = ("plain", "faulty", "pretrain")
DISTILL = "distill"
DISTILL_TEMPERATURE = TrainConfig.model_fields["distill_temperature"].default
GRAD_CLIP = TrainConfig.model_fields["grad_clip"].default
CIFAR_MEAN, CIFAR_STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)  # values do not matter for timing


@dataclass
class Result:
    model: str
    device: str
    device_name: str
    torch: str
    threads: int
    batch_size: int
    steps: int
    rate: float
    profile: str
    repeats: int
    kinds: tuple[str, ...] = KINDS
    image_size: int = 32
    fault_draw: str = "sparse"
    wall_s: dict[str, list[float]] = field(default_factory=dict)  # per epoch
    cpu_s: dict[str, list[float]] = field(default_factory=dict)  # this process

    def __post_init__(self):
        for times in (self.wall_s, self.cpu_s):
            times.update({k: [] for k in self.kinds if k not in times})

    def ratio(self, times: dict[str, list[float]], over: str, kind: str = "faulty") -> float:
        """Median over repetitions of ``kind`` / ``over`` (both epochs of the same repetition)."""
        return statistics.median(f / o for f, o in zip(times[kind], times[over]))

    def summary(self) -> dict:
        ratio = self.ratio(self.wall_s, "plain")
        return {
            **asdict(self),
            "ratio": ratio,
            "ratio_vs_pretrain": self.ratio(self.wall_s, "pretrain"),
            "cpu_ratio": self.ratio(self.cpu_s, "plain"),
            "cpu_ratio_vs_pretrain": self.ratio(self.cpu_s, "pretrain"),
            "ms_per_step": {k: 1000 * statistics.median(v) / self.steps for k, v in self.wall_s.items()},
            "requirement": REQUIREMENT,
            "meets_requirement": ratio <= REQUIREMENT,
            "distill_ratio": self.ratio(self.wall_s, "faulty", DISTILL) if DISTILL in self.kinds else None,
        }


class Epochs:
    """One model, one optimiser, one image pool; runs timed epochs of each kind."""

    def __init__(self, args, device: torch.device):
        self.device, self.steps, self.batch_size = device, args.steps, args.batch_size
        torch.manual_seed(0)
        self.model = create_model(args.model, image_size=args.image_size).to(device)
        resolved = load_profile(args.profile)
        self.injector = FaultInjector(self.model, resolved.target, bn_mode="frozen", seed=0, device=device,
                                      faults=resolved.profile.fault_model, fault_draw=args.fault_draw)  # fmt: skip
        self.injector.set_rate(args.rate)
        # Lower learning rate than training: thousands of benchmark steps must not diverge.
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=0.9, nesterov=True, weight_decay=5e-4)
        gen = torch.Generator(device=device).manual_seed(0)
        pool = min(args.steps, 8) * args.batch_size  # a few batches, cycled: the data is not timed
        size = args.image_size
        self.images = torch.randint(0, 256, (pool, 3, size, size), dtype=torch.uint8, device=device, generator=gen)
        self.labels = torch.randint(0, 10, (pool,), device=device, generator=gen)
        self.aug_gen = torch.Generator(device=device).manual_seed(1)
        self.teacher = copy.deepcopy(self.model).eval().requires_grad_(False)  # its weights do not change the cost

    def run(self, kind: str, steps: int | None = None) -> tuple[float, float]:
        """(wall-clock, process CPU) seconds of one epoch of ``steps`` steps (default: --steps).
        CPU time is the steadier figure on a shared CPU box (other processes' time is not
        counted); on a GPU it only measures the host, so read the wall-clock figure there."""
        retraining = kind != "pretrain"
        faulty = kind in ("faulty", DISTILL)
        self.model.train()
        if faulty:
            self.injector.attach()
        if retraining:
            freeze_batchnorm(self.model)
        try:
            self._sync()
            t0, c0 = time.perf_counter(), time.process_time()
            for step in range(steps or self.steps):
                self._step(step, clip=retraining, distill=kind == DISTILL)
            self._sync()
            return time.perf_counter() - t0, time.process_time() - c0
        finally:
            if faulty:
                self.injector.detach()

    def _step(self, step: int, clip: bool, distill: bool = False) -> None:
        start = (step * self.batch_size) % len(self.labels)
        xb, yb = self.images[start : start + self.batch_size], self.labels[start : start + self.batch_size]
        x = normalize(augment(xb, self.aug_gen), CIFAR_MEAN, CIFAR_STD)
        # The trainer's own step; the distillation weight does not change the cost.
        sgd_step(self.model, x, yb, self.opt, clip=GRAD_CLIP if clip else None, teacher=self.teacher if distill else None,
                 distill=0.9, temperature=DISTILL_TEMPERATURE)  # fmt: skip

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def profile(self, steps: int, rows: int = 25) -> str:
        """torch.profiler table of fault-injected steps, by self CPU (or CUDA) time."""
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        self.injector.attach()
        freeze_batchnorm(self.model)
        try:
            with profile(activities=activities) as prof:
                for step in range(steps):
                    self._step(step, clip=True)
                self._sync()
        finally:
            self.injector.detach()
        key = "self_cuda_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
        return prof.key_averages().table(sort_by=key, row_limit=rows)


def cpu_name() -> str:
    """The CPU's model name (Linux), else the machine architecture."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def measure(args) -> Result:
    device = pick_device(args.device)
    epochs = Epochs(args, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    kinds = KINDS + ((DISTILL,) if args.distill else ())
    result = Result(args.model, str(device), name, torch.__version__, torch.get_num_threads(), args.batch_size,
                    args.steps, args.rate, args.profile, args.repeats, kinds, args.image_size, args.fault_draw)  # fmt: skip
    for kind in kinds:  # warm-up: allocator, kernels, autotuning, first-call overheads
        epochs.run(kind, args.warmup_steps)
    orders = itertools.cycle(itertools.permutations(kinds))  # each kind in each position in turn
    for rep in range(args.repeats):
        for kind in next(orders):
            wall, cpu = epochs.run(kind)
            result.wall_s[kind].append(wall)
            result.cpu_s[kind].append(cpu)
        w = {k: v[-1] for k, v in result.wall_s.items()}
        print(f"rep {rep + 1}/{args.repeats}: plain {w['plain']:.3f} s, faulty {w['faulty']:.3f} s, pretrain "
              f"{w['pretrain']:.3f} s; faulty/plain {w['faulty'] / w['plain']:.3f}", file=sys.stderr, flush=True)  # fmt: skip
    if args.profile_steps:
        print(epochs.profile(args.profile_steps), file=sys.stderr)
    return result


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20", help="Model registry name or tv:NAME (default resnet20).")
    p.add_argument("--image-size", type=int, default=32, help="Side of the (random) training images (224 for ImageNet-size models).")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="Steps per timed epoch.")
    p.add_argument("--repeats", type=int, default=6, help="Repetitions (each runs every kind once); medians are reported.")
    p.add_argument("--warmup-steps", type=int, default=3, help="Untimed steps of each kind first.")
    p.add_argument("--rate", type=float, default=0.05, help="Stuck-at rate of the fault-injected epochs.")
    p.add_argument("--profile", default="chen2015", help="Deployment profile whose target is simulated.")
    p.add_argument("--fault-draw", choices=("sparse", "dense"), default="sparse",
                   help="How the faulty epochs draw each chip (TrainConfig.fault_draw): the stuck cells alone, or every cell.")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda[:N].")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")
    p.add_argument("--json", default=None, metavar="PATH", help="Also write the result as JSON.")
    p.add_argument("--profile-steps", type=int, default=0, help="Then profile this many fault-injected steps.")
    p.add_argument("--distill", action="store_true", help="Also time fault-injected epochs with distillation.")
    args = p.parse_args(argv)
    for name in ("batch_size", "steps", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: expected at least 1, found {getattr(args, name)}")
    if not 0 < args.rate <= 1:
        p.error(f"--rate: expected a stuck-at rate in (0, 1], found {args.rate}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    s = measure(args).summary()
    verdict = "meets" if s["meets_requirement"] else "EXCEEDS"
    ms = s["ms_per_step"]
    print(f"{s['model']} at {s['image_size']}x{s['image_size']} on {s['device']} ({s['device_name']}, {s['threads']} threads), batch {s['batch_size']}, "
          f"{s['steps']} steps x {s['repeats']}, rate {s['rate']:g}, {s['fault_draw']} draw: ms/step plain {ms['plain']:.1f}, "
          f"faulty {ms['faulty']:.1f}, pretrain {ms['pretrain']:.1f}")  # fmt: skip
    print(f"RATIO faulty/plain {s['ratio']:.3f} ({verdict} the {REQUIREMENT} requirement); "
          f"faulty/pretrain {s['ratio_vs_pretrain']:.3f}; CPU-time ratios {s['cpu_ratio']:.3f} / "
          f"{s['cpu_ratio_vs_pretrain']:.3f}")  # fmt: skip
    if s["distill_ratio"] is not None:
        print(f"DISTILL ratio distill/faulty {s['distill_ratio']:.3f} (the cost --distill adds to a retraining epoch)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(s, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
