"""Chips spread over Ray workers, on this machine or a cluster (``verify --ray``, ``sweep --ray``).

Each worker is a Ray actor holding one backend: an :class:`ftdeploy.runtime.OnnxBackend` of the
export (``verify``), or the PyTorch evaluator (:class:`ftdeploy.chip.TorchBackend`) of a
checkpoint's model (``sweep``). What the backend is built from, the export or the checkpoint's
weights and the normalised or raw images, is put in Ray's object store once (:func:`ray.put`)
and every actor reads it from there, so nothing large travels per task. A round of work is one
contiguous range of chip indices per actor; the ranges are merged in index order. Chip k draws
from its own random stream (:func:`ftdeploy.nonideality.chip_rng`) wherever it runs, so the
accuracies, and the report or table, are the ones a single process computes with the same seed
(docs/ray.md).

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


def onnx_backend(export: ExportedModel, x: np.ndarray, y: np.ndarray, threads: int, batch_size: int):
    """The ONNX Runtime backend of ``export`` on normalised images ``x`` (what ``verify`` measures)."""
    from .runtime import OnnxBackend

    return OnnxBackend(export, x, y, threads, batch_size)


#: The checkpoint fields :func:`torch_backend` builds the model from (its weights among them):
#: only these go to the workers, not the training state a checkpoint carries besides.
MODEL_FIELDS = ("model", "num_classes", "data", "state_dict", "normalization")


def model_record(ckpt: dict) -> dict:
    """The part of a checkpoint a worker needs to rebuild its model (:data:`MODEL_FIELDS`)."""
    return {k: ckpt[k] for k in MODEL_FIELDS if k in ckpt}


def torch_backend(record: dict, x: np.ndarray, y: np.ndarray, target, threads: int, batch_size: int, chip_batch: int,
                  allow_import: bool, source: str):  # fmt: skip
    """The PyTorch evaluator of a checkpoint's model (``record``: :func:`model_record`) deployed
    on ``target``, on the CPU with ``threads`` threads, on uint8 images ``x`` (what ``sweep``
    measures); ``allow_import``: the user allowed the model's package.module:factory."""
    import warnings

    import torch

    from .chip import DeployedNetwork
    from .training.checkpoint import model_from_checkpoint

    torch.set_num_threads(threads)
    with warnings.catch_warnings():  # the object store's arrays are read-only; the backend only reads them
        warnings.filterwarnings("ignore", message=".*not writable.*")
        x_t, y_t = torch.from_numpy(x), torch.from_numpy(y)
    net = DeployedNetwork(model_from_checkpoint(record, allow_import=allow_import, source=source), target, torch.device("cpu"))
    norm = record["normalization"]
    return net.backend(x_t, y_t, norm["mean"], norm["std"], batch_size=batch_size, chip_batch=chip_batch)


class _ChipWorker:
    """One Ray actor: a backend, built once by ``build(*args)`` (:func:`onnx_backend`,
    :func:`torch_backend`), measuring ranges of chips."""

    def __init__(self, build: Callable, *args):
        self.backend = build(*args)

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
    """Chips measured on Ray actors: ``workers`` of them (default: one per CPU of the cluster),
    each holding the backend ``build(*stored, *given)`` returns and using ``threads`` cores.
    ``stored``, the large arguments (a model, images), are put in the object store once; the
    ``given`` ones travel as they are. Build one with :meth:`onnx` or :meth:`torch`."""

    def __init__(self, ray, build: Callable, stored: tuple, given: tuple, workers: int | None = None, threads: int = 1):
        self.ray = ray
        refs = [ray.put(obj) for obj in stored]  # once: every actor reads them from the object store
        count = workers or max(1, int(ray.cluster_resources().get("CPU", 1)) // threads)
        actor = ray.remote(num_cpus=threads)(_ChipWorker)
        self.actors = [actor.remote(build, *refs, *given) for _ in range(count)]

    @classmethod
    def onnx(cls, ray, export: ExportedModel, x: np.ndarray, y: np.ndarray, batch_size: int, workers: int | None = None,
             threads: int = 1) -> RayChips:  # fmt: skip
        """ONNX Runtime workers on normalised images, ``batch_size`` images per call (the
        single-process backend's: a read-noise chip draws afresh per batch, so that keeps it the
        same chip)."""
        return cls(ray, onnx_backend, (export, x, y), (threads, batch_size), workers, threads)

    @classmethod
    def torch(cls, ray, ckpt: dict, target, x: np.ndarray, y: np.ndarray, batch_size: int, chip_batch: int,
              allow_import: bool, source: str, workers: int | None = None, threads: int = 1) -> RayChips:  # fmt: skip
        """PyTorch workers evaluating checkpoint ``ckpt``'s model on ``target`` on uint8 images,
        in batches of ``batch_size`` images and ``chip_batch`` chips per pass, as the
        single-process backend does (:func:`torch_backend`)."""
        return cls(ray, torch_backend, (model_record(ckpt), x, y),
                   (target, threads, batch_size, chip_batch, allow_import, source), workers, threads)  # fmt: skip

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
