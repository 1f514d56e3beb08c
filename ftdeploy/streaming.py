"""Image folders bigger than memory: decoded batch by batch by a DataLoader's workers, never all at
once, for a sign-off and for a training alike.

An ``imagefolder:DIR`` (ImageNet's layout: DIR/<class>/<image>) is split as :mod:`ftdeploy.data`
splits it, and its held-out images are read file by file in that same order, decoded by the same
function (:func:`ftdeploy.data.decode_jpegs`: resize the shorter side, centre-crop), so a
streamed evaluation measures exactly the images an in-memory one does, and the image-set
fingerprint (computed batch by batch, :class:`ftdeploy.data.ImageSetHash`) is the same.

Sign-off streams its images once per chip: memory holds a few batches whatever the folder's
size, and each chip pays for decoding the images again (for large images, little beside the
model's own work on them). A training streams its training images once per epoch, in the
order the in-memory path visits them (:func:`ftdeploy.data.batches` draws the same shuffle from
the same generator and hands it to :meth:`StreamedImages.batches`), and its validation images
once per evaluation; its normalisation statistics take one more pass
(:func:`ftdeploy.data.channel_stats`). Under torchrun each process decodes only its share of
every batch (:func:`ftdeploy.data.rank_share`). Batches bound for a GPU are decoded into pinned
memory, so their copies to it need not hold up the host.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from .data import ImageSetHash, decode_jpegs, normalize_numpy, rank_share
from .errors import ConfigError, DataError
from .exported import ExportedModel
from .onnx_format import INPUT_NAME, OUTPUT_NAME
from .population import available_cores
from .runtime import OnnxBackend

#: Decoded images above this many bytes (a sign-off's held-out images, a training's training
#: images) are streamed rather than held in memory, unless the caller says which (--stream /
#: --in-memory).
STREAM_ABOVE_BYTES = 2 * 1024**3


def streamed_part(spec: str, source, idx: np.ndarray, image_size: int, stream: bool | None) -> "StreamedImages | None":
    """Images ``idx`` of an opened dataset (:func:`ftdeploy.data._open`) as files to stream, where
    ``stream`` asks for it (None: where they would take more than :data:`STREAM_ABOVE_BYTES`
    decoded); None: decode them into memory. Only an image folder has files to stream: --stream
    on another source is refused."""
    if stream is False:
        return None
    if source.paths is None:
        if stream:
            raise ConfigError(f"--stream: streams the image files of imagefolder:DIR; {spec} is not an image folder")
        return None
    images = StreamedImages([source.paths[i] for i in idx], source.labels[idx].astype(np.int64), image_size)
    return images if stream or images.nbytes() > STREAM_ABOVE_BYTES else None


class _DecodeFiles(torch.utils.data.Dataset):
    """Image ``i``: file ``paths[i]`` decoded to uint8 C×H×W as the in-memory path decodes it."""

    def __init__(self, paths: list[str], image_size: int):
        self.paths, self.image_size = paths, image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        with open(self.paths[i], "rb") as f:
            blob = f.read()
        return decode_jpegs([blob], self.image_size, ids=[self.paths[i]])[0].numpy()


class _Stack:
    """A loader's collate: its images as one uint8 N×3×H×W batch. A numpy array (the ONNX Runtime
    backend wants arrays), or a tensor where the loader pins its batches for a GPU (only tensors
    are pinned). A process's share of a short last batch may hold no image at all."""

    def __init__(self, image_size: int, tensor: bool):
        self.image_size, self.tensor = image_size, tensor

    def __call__(self, arrays: list[np.ndarray]) -> "np.ndarray | torch.Tensor":
        x = np.stack(arrays) if arrays else np.empty((0, 3, self.image_size, self.image_size), np.uint8)
        return torch.from_numpy(x) if self.tensor else x


class _Batches(torch.utils.data.Sampler):
    """The image indices a loader's next pass reads, batch by batch: 0, 1, ... unless a pass set
    its own order (a training epoch's shuffle), and of each batch only the share of process
    ``rank`` of ``world`` (:func:`ftdeploy.data.rank_share`), so no process decodes an image
    another trains on. Indices are drawn in the main process at every pass, so one loader with
    persistent workers serves every epoch's order."""

    def __init__(self, n: int, batch_size: int, rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.rank, self.world = n, batch_size, rank, world
        self.order: list[int] | None = None

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def __iter__(self):
        order = range(self.n) if self.order is None else self.order
        for start in range(0, self.n, self.batch_size):
            # one entry per global batch, even an empty share: every process takes the same steps
            yield list(rank_share(order[start : start + self.batch_size], self.rank, self.world))


@dataclass
class StreamedImages:
    """Image files and their labels, in the order they are measured, decoded on demand to
    ``image_size`` × ``image_size``."""

    paths: list[str]
    labels: np.ndarray  # int64
    image_size: int
    workers: int | None = None  # DataLoader worker processes; default: the cores, at most 4
    _loaders: dict = field(default_factory=dict, repr=False, compare=False)
    _pass: Iterator[np.ndarray] | None = field(default=None, repr=False, compare=False)
    _fingerprint: str | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), 3, self.image_size, self.image_size)

    def nbytes(self) -> int:
        """Memory the decoded images would take together."""
        return int(np.prod(self.shape))

    def subset(self, keep: np.ndarray | None) -> "StreamedImages":
        """These images at indices ``keep`` (in that order); None: all of them."""
        if keep is None:
            return self
        return StreamedImages([self.paths[i] for i in keep], self.labels[keep], self.image_size, self.workers)

    def batches(self, batch_size: int, order: torch.Tensor | None = None, *, rank: int = 0, world: int = 1,
                device: "torch.device | str | None" = None) -> Iterator["np.ndarray | torch.Tensor"]:  # fmt: skip
        """uint8 N×3×H×W batches, in order (or images ``order[0]``, ``order[1]``, ... : a
        permutation of them), decoded in worker processes a few batches ahead: numpy arrays, or
        tensors on ``device`` where one is given. Under torchrun, process ``rank`` of ``world``
        reads only its share of each batch (:func:`ftdeploy.data.rank_share`)."""
        device = None if device is None else torch.device(device)
        pinned = pins_memory(device)
        loader = self._loader(batch_size, rank, world, pinned)
        if order is not None and len(order) != len(self):  # a bug, not bad input
            raise RuntimeError(f"an order of {len(order)} images for {len(self)} images")
        loader.batch_sampler.order = None if order is None else order.tolist()
        try:
            for xb in loader:
                # from pinned memory the copy to the GPU need not hold up the next batch
                yield xb if device is None else torch.as_tensor(xb).to(device, non_blocking=pinned)
        except DataError as exc:  # from a worker: re-raised with its traceback in the message
            raise DataError(_worker_message(str(exc))) from None

    def once(self, batch_size: int = 256) -> Iterator[np.ndarray]:
        """:meth:`batches` for a single pass: its workers are let go at its end."""
        try:
            yield from self.batches(batch_size)
        finally:  # one pass only: its workers need not wait for another
            self._loaders.pop(_loader_key(batch_size), None)

    def batch(self, start: int, stop: int, batch_size: int,
              device: "torch.device | str | None" = None) -> "np.ndarray | torch.Tensor":  # fmt: skip
        """Images ``start:stop``, the next batch of a pass in order from image 0 in batches of
        ``batch_size`` (what a backend's accuracy asks for: a pass begins at image 0); on
        ``device`` as :meth:`batches` puts them."""
        if start == 0:
            self._pass = self.batches(batch_size, device=device)
        raw = next(self._pass)
        if len(raw) != stop - start:  # a bug, not bad input: the loader and the backend disagree on batches
            raise RuntimeError(f"streamed batch of {len(raw)} images where {stop - start} were expected")
        return raw

    def _loader(self, batch_size: int, rank: int = 0, world: int = 1, pinned: bool = False) -> torch.utils.data.DataLoader:
        # One loader per batch size (and share, and pinning), its workers kept between passes: a
        # sign-off makes one pass per chip, a training one per epoch, and starting the workers
        # anew for each would cost more than a small pass.
        key = _loader_key(batch_size, rank, world, pinned)
        if key not in self._loaders:
            workers = self.workers if self.workers is not None else min(4, available_cores())
            # Its own generator: making an iterator draws a base seed, which must not come from
            # torch's global one (a training's dropout draws from that, as it does in memory).
            self._loaders[key] = torch.utils.data.DataLoader(
                _DecodeFiles(self.paths, self.image_size), batch_sampler=_Batches(len(self), batch_size, rank, world),
                num_workers=workers, collate_fn=_Stack(self.image_size, tensor=pinned), pin_memory=pinned,
                prefetch_factor=2 if workers else None, persistent_workers=workers > 0,
                generator=torch.Generator().manual_seed(0))  # fmt: skip
        return self._loaders[key]

    def fingerprint(self, batch_size: int = 256) -> str:
        """:func:`ftdeploy.data.image_set_fingerprint` of these images, one batch in memory at a
        time; computed once (a training records it with every epoch's checkpoint)."""
        if self._fingerprint is None:
            digest = ImageSetHash(self.shape)
            for x in self.once(batch_size):
                digest.update(x)
            self._fingerprint = digest.hexdigest(self.labels)
        return self._fingerprint


def _loader_key(batch_size: int, rank: int = 0, world: int = 1, pinned: bool = False) -> tuple:
    """Which of a :class:`StreamedImages`' loaders serves these batches."""
    return batch_size, rank, world, pinned


def pins_memory(device: "torch.device | None") -> bool:
    """Whether batches bound for ``device`` are decoded into pinned (page-locked) memory: only for
    a GPU, whose copies from pinned memory run without holding up the host. On the CPU, or for
    the ONNX Runtime backend (numpy arrays, no device), pinning would only cost."""
    return device is not None and device.type == "cuda"


def _worker_message(text: str) -> str:
    """The one line of a DataError, raised here or re-raised from a DataLoader worker with the
    worker's traceback around it."""
    lines = [line for line in text.splitlines() if "DataError:" in line]
    return lines[-1].split("DataError:", 1)[1].strip() if lines else text.splitlines()[0]


class StreamedOnnxBackend(OnnxBackend):
    """The ONNX Runtime backend on streamed images: each pass over the images (one per chip)
    decodes them batch by batch and normalises each batch with the export's normalisation."""

    def __init__(self, export: ExportedModel, images: StreamedImages, threads: int | None = None, batch_size: int | None = None,
                 device: str | None = None):  # fmt: skip
        super().__init__(export, None, images.labels, threads, batch_size, device)
        self.images = images

    def _correct(self, start: int, stop: int) -> int:
        raw = self.images.batch(start, stop, self.batch_size)
        norm = self.export.meta["normalization"]
        x = normalize_numpy(raw, norm["mean"], norm["std"])
        logits = self._session.run([OUTPUT_NAME], {INPUT_NAME: x, **self._feeds})[0]
        return int((logits.argmax(1) == self.y[start:stop]).sum())
