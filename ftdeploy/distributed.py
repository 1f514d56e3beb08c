"""Sign-off's chips spread over Ray workers, on this machine or a cluster (``verify --ray``).

Each worker is a Ray actor holding one :class:`ftdeploy.runtime.OnnxBackend`: the export and the
normalised images are put in Ray's object store once (:func:`ray.put`) and every actor reads them
from there, so nothing large travels per task. A round of work is one contiguous range of chip
indices per actor; the ranges are merged in index order. Chip k draws from its own random stream
(:func:`ftdeploy.nonideality.chip_rng`) wherever it runs, so the accuracies, and the report, are
the ones a single process computes with the same seed (docs/ray.md).

Ray is an optional extra (``pip install 'ftdeploy[ray]'``); it is imported only here, and only
when ``--ray`` is given.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .errors import ConfigError
from .exported import ExportedModel
from .nonideality import FaultModel
from .population import SimulatedChips, chip_accuracies

#: ``--ray`` without an address: start a Ray on this machine for this run.
LOCAL = "local"
#: One line for a missing Ray, naming the extra that installs it.
MISSING_RAY = "--ray: Ray is not installed; install the extra: python3 -m pip install 'ftdeploy[ray]'"


def require_ray():
    """The ray module, or one line saying which extra installs it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(MISSING_RAY) from None
    return ray


def connect(address: str, num_cpus: int | None = None):
    """Ray, started on this machine (``address`` :data:`LOCAL`, with ``num_cpus`` CPUs, default
    all) or connected to a running cluster (``auto``, ``ray://host:10001``, ``host:6379``). A Ray
    the caller already started (a notebook, a test) is used as it is."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    # The workers' logs stay out of the sign-off's console: a worker's error comes back as the
    # exception of the call that failed.
    options = dict(include_dashboard=False, log_to_driver=False)
    try:
        if address == LOCAL:
            ray.init(num_cpus=num_cpus, **options)
        else:
            ray.init(address=address, **options)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"--ray {address}: cannot connect to a Ray cluster there: {str(exc).splitlines()[0]}") from None
    return ray


class _ChipWorker:
    """One Ray actor: an ONNX Runtime backend on the images, built once, measuring ranges of chips."""

    def __init__(self, export: ExportedModel, x: np.ndarray, y: np.ndarray, threads: int, batch_size: int):
        from .runtime import OnnxBackend

        self.backend = OnnxBackend(export, x, y, threads, batch_size)

    def accuracies(self, faults: FaultModel, rate: float, seed: int, start: int, count: int) -> list[float]:
        return chip_accuracies(self.backend, SimulatedChips(faults, rate, seed, count, start=start))


def split_range(start: int, stop: int, parts: int) -> list[tuple[int, int]]:
    """``start..stop`` cut into at most ``parts`` contiguous (start, stop) ranges, in order, sizes
    differing by at most one (the first ones longer); empty ranges are left out."""
    n = stop - start
    sizes = [n // parts + (i < n % parts) for i in range(parts)]
    bounds = np.cumsum([start, *sizes]).tolist()
    return [(lo, hi) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]


class RayChips:
    """Chips of a sign-off measured on Ray actors: ``workers`` of them (default: one per CPU of
    the cluster), each with ``threads`` ONNX Runtime threads and ``batch_size`` images per call
    (the same batch size as the single-process backend: a read-noise chip draws afresh per
    batch, so that keeps it the same chip)."""

    def __init__(self, ray, export: ExportedModel, x: np.ndarray, y: np.ndarray, batch_size: int, workers: int | None = None,
                 threads: int = 1):  # fmt: skip
        self.ray = ray
        refs = ray.put(export), ray.put(x), ray.put(y)  # once: every actor reads them from the object store
        count = workers or max(1, int(ray.cluster_resources().get("CPU", 1)) // threads)
        actor = ray.remote(num_cpus=threads)(_ChipWorker)
        self.actors = [actor.remote(*refs, threads, batch_size) for _ in range(count)]

    def measure(self, faults: FaultModel, rate: float, seed: int, start: int, stop: int,
                on_chip: Callable[[], None] | None = None) -> list[float]:  # fmt: skip
        """Accuracies (%) of chips ``start..stop-1``, in index order: one range per actor."""
        ranges = split_range(start, stop, len(self.actors))
        pending = [a.accuracies.remote(faults, rate, seed, lo, hi - lo) for a, (lo, hi) in zip(self.actors, ranges)]
        accs: list[float] = []
        for part in pending:  # in index order, whichever finishes first
            got = self.ray.get(part)
            accs += got
            for _ in got if on_chip else ():
                on_chip()
        return accs

    def close(self) -> None:
        """Release the actors (their CPUs) now rather than when the driver exits."""
        for a in self.actors:
            self.ray.kill(a)
        self.actors = []
