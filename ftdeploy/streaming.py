"""Image folders bigger than memory: decoded batch by batch by a DataLoader's workers, never all at
once.

An ``imagefolder:DIR`` (ImageNet's layout: DIR/<class>/<image>) is split as :mod:`ftdeploy.data`
splits it, and its held-out images are read file by file in that same order, decoded by the same
function (:func:`ftdeploy.data.decode_jpegs`: resize the shorter side, centre-crop), so a
streamed evaluation measures exactly the images an in-memory one does, and the image-set
fingerprint (computed batch by batch, :class:`ftdeploy.data.ImageSetHash`) is the same.

Sign-off streams its images once per chip: memory holds a few batches whatever the folder's
size, and each chip pays for decoding the images again (for large images, little beside the
model's own work on them).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from .data import ImageSetHash, decode_jpegs, normalize_numpy
from .errors import DataError
from .exported import ExportedModel
from .onnx_format import INPUT_NAME, OUTPUT_NAME
from .population import available_cores
from .runtime import OnnxBackend

#: Decoded held-out images above this many bytes are streamed rather than held in memory, unless
#: the caller says which (a sign-off's --stream / --in-memory).
STREAM_ABOVE_BYTES = 2 * 1024**3


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


def _stack(arrays: list[np.ndarray]) -> np.ndarray:
    return np.stack(arrays)  # numpy, not tensors: the ONNX Runtime backend wants arrays


@dataclass
class StreamedImages:
    """Image files and their labels, in the order they are measured, decoded on demand to
    ``image_size`` × ``image_size``."""

    paths: list[str]
    labels: np.ndarray  # int64
    image_size: int
    workers: int | None = None  # DataLoader worker processes; default: the cores, at most 4
    _loaders: dict = field(default_factory=dict, repr=False, compare=False)

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

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """uint8 N×3×H×W batches, in order, decoded in worker processes a few batches ahead."""
        try:
            yield from self._loader(batch_size)
        except DataError as exc:  # from a worker: re-raised with its traceback in the message
            raise DataError(_worker_message(str(exc))) from None

    def _loader(self, batch_size: int) -> torch.utils.data.DataLoader:
        # One loader per batch size, its workers kept between passes: a sign-off makes one pass
        # per chip, and starting the workers anew for each would cost more than a small pass.
        if batch_size not in self._loaders:
            workers = self.workers if self.workers is not None else min(4, available_cores())
            self._loaders[batch_size] = torch.utils.data.DataLoader(
                _DecodeFiles(self.paths, self.image_size), batch_size=batch_size, shuffle=False, num_workers=workers,
                collate_fn=_stack, prefetch_factor=2 if workers else None, persistent_workers=workers > 0)  # fmt: skip
        return self._loaders[batch_size]

    def fingerprint(self, batch_size: int = 256) -> str:
        """:func:`ftdeploy.data.image_set_fingerprint` of these images, one batch in memory at a time."""
        digest = ImageSetHash(self.shape)
        try:
            for x in self.batches(batch_size):
                digest.update(x)
        finally:  # one pass only: its workers need not wait for another
            self._loaders.pop(batch_size, None)
        return digest.hexdigest(self.labels)


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
        self._pass: Iterator[np.ndarray] | None = None

    def _correct(self, start: int, stop: int) -> int:
        # Backend.accuracy asks for the batches in order from image 0: a pass begins there.
        if start == 0:
            self._pass = self.images.batches(self.batch_size)
        raw = next(self._pass)
        if len(raw) != stop - start:  # a bug, not bad input: the loader and the backend disagree on batches
            raise RuntimeError(f"streamed batch of {len(raw)} images where {stop - start} were expected")
        norm = self.export.meta["normalization"]
        x = normalize_numpy(raw, norm["mean"], norm["std"])
        logits = self._session.run([OUTPUT_NAME], {INPUT_NAME: x, **self._feeds})[0]
        return int((logits.argmax(1) == self.y[start:stop]).sum())
