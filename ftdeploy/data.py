"""Datasets: parsed from a spec string, held in memory as uint8 tensors, split reproducibly.

Specs:
  (none) / ``embedded``   the CIFAR-10 subset shipped inside the package (see EMBEDDED_PROVENANCE)
  ``cifar10:DIR``         torchvision's CIFAR10 files (DIR/cifar-10-batches-py), never downloaded
  ``cifar100:DIR``        torchvision's CIFAR100 files (DIR/cifar-100-python), never downloaded
  ``imagefolder:DIR``     DIR/<class>/<image> (torchvision's ImageFolder layout)
  ``npz:FILE``            packed JPEGs (arrays jpeg, offsets, labels, classes)

Small image datasets fit in memory many times over, so they are decoded once into one uint8
tensor; augmentation (random crop with 4-pixel padding, horizontal flip) runs on whole batches
on the training device. That keeps a 2-core CPU or a GPU busy with the model, not the loader.
An image folder too large for that is streamed instead (:mod:`ftdeploy.streaming`): its images
are decoded from their files batch by batch at every pass, the same images in the same order.
"""

from __future__ import annotations

import hashlib
import math
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .errors import DataError
from .limits import MAX_CLASSES, MAX_IMAGE_PIXELS, MAX_IMAGES, shown

if TYPE_CHECKING:
    from .streaming import StreamedImages

EMBEDDED_NAME = "cifar10-demo.npz"
EMBEDDED_PROVENANCE = (
    "6,000 CIFAR-10 training images (Krizhevsky 2009, JPEG re-encoded), 600 per class: 5,000 for "
    "training drawn from the training part and 1,000 for validation drawn from the validation "
    "part of ftdeploy's default 5,000-image stratified split (seed 0) of the 50,000-image "
    "training split, so models trained on the full split never saw the embedded validation images."
)

#: Side of CIFAR images, and the image size of every model unless a training says otherwise.
CIFAR_SIDE = 32

#: Default validation split of the full 50,000-image training split (stratified, seed 0).
FULL_VAL_SPLIT = 5000
SPLIT_SEED = 0


@dataclass
class DataBundle:
    """Images (uint8, N×C×H×W) and labels of the training and validation parts. The images are
    held in memory, or (an image folder too large for that) streamed from their files at every
    pass: :func:`batches`, :func:`channel_stats` and :func:`ftdeploy.chip.deployed_accuracy` take
    either."""

    train_x: "torch.Tensor | StreamedImages"
    train_y: torch.Tensor
    val_x: "torch.Tensor | StreamedImages"
    val_y: torch.Tensor
    classes: list[str]
    spec: str
    description: str
    mean: tuple[float, ...] = field(default=(0.0, 0.0, 0.0))
    std: tuple[float, ...] = field(default=(1.0, 1.0, 1.0))
    val_split: int = 0

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def val_fingerprint(self) -> str:
        """:func:`image_set_fingerprint` of the validation images, as a sign-off measures them."""
        if not isinstance(self.val_x, torch.Tensor):  # streamed
            return self.val_x.fingerprint()
        return image_set_fingerprint(self.val_x.numpy(), self.val_y.numpy())

    @property
    def streamed(self) -> bool:
        """Whether the images are read from their files at every pass rather than held in memory."""
        return not isinstance(self.train_x, torch.Tensor)

    @property
    def image_size(self) -> int:
        """Side in pixels of every image (square, as loaded)."""
        return int(self.val_x.shape[-1])

    def split_record(self) -> dict:
        """What a checkpoint or ONNX file records so evaluation uses the same images, preprocessed
        the same way (the side they are resized and centre-cropped to)."""
        return {"data": self.spec, "val_split": self.val_split, "split_seed": SPLIT_SEED,
                "train_images": len(self.train_y), "val_images": len(self.val_y), "image_size": self.image_size}  # fmt: skip


def stratified_split(labels: np.ndarray, n_val: int, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, val indices): ``n_val`` images, as equal per class as possible, chosen
    by a seeded permutation within each class; deterministic for given labels and seed."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if not 0 < n_val < len(labels):
        raise DataError(f"--val-split: expected between 1 and {len(labels) - 1} images, found {n_val}")
    rng = np.random.default_rng(seed)
    per_class = [np.flatnonzero(labels == c) for c in classes]
    quota = _fair_quota(np.array([len(idx) for idx in per_class]), n_val)
    val = []
    for idx, q in zip(per_class, quota):
        val.append(rng.permutation(idx)[: min(q, len(idx))])
    val_idx = np.sort(np.concatenate(val))
    train_mask = np.ones(len(labels), bool)
    train_mask[val_idx] = False
    return np.flatnonzero(train_mask), val_idx


def _fair_quota(sizes: np.ndarray, n: int) -> np.ndarray:
    """Per-class counts summing to ``n`` (< sizes.sum()), as equal as possible, none above its
    class size: a small class's shortfall goes to the others. With every class large enough
    this is n // k each, the first n % k classes one more."""
    quota = np.zeros(len(sizes), dtype=np.int64)
    remaining = n
    while remaining > 0:
        open_ = np.flatnonzero(quota < sizes)
        add = np.full(len(open_), remaining // len(open_))
        add[: remaining % len(open_)] += 1
        add = np.minimum(add, sizes[open_] - quota[open_])
        quota[open_] += add
        remaining -= int(add.sum())
    return quota


def decode_jpegs(blobs: list[bytes], image_size: int | None = None, ids=None) -> torch.Tensor:
    """Decode encoded images (JPEG, PNG, ...) to one uint8 N×3×H×W tensor with Pillow.
    (torchvision's own decoders are deprecated since 0.29.) Images of another size are
    resized (shorter side) and centre-cropped to ``image_size``. ``ids`` name the images in
    errors (default: their positions in ``blobs``)."""
    out = np.empty((len(blobs), 3, image_size or 0, image_size or 0), np.uint8) if image_size else None
    arrays = []
    for i, blob in enumerate(blobs):
        img = _decoded_image(blob, f"image {i}" if ids is None else str(ids[i]))
        if image_size is not None and img.size != (image_size, image_size):
            img = _resize_center_crop(img, image_size)
        arr = np.asarray(img).transpose(2, 0, 1)
        if out is not None:
            out[i] = arr
        else:
            arrays.append(arr)
    return torch.from_numpy(out if out is not None else np.stack(arrays))


def _decoded_image(blob: bytes, where: str):
    """One encoded image as RGB, its size checked from the header before any pixel is decoded: a
    decompression bomb (a few kB declaring 100,000 x 100,000 pixels) is refused, never inflated.
    PIL's own guard warns only above 89 million pixels and refuses above twice that; both are
    turned into this refusal rather than a warning or an escaping exception."""
    import io
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(blob))
            width, height = img.size
            if width * height > MAX_IMAGE_PIXELS:
                raise DataError(f"{where}: {width} x {height} pixels; expected at most {MAX_IMAGE_PIXELS:,} pixels per image")
            return img.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{where}: refused as a decompression bomb ({str(exc).split(',')[0]}); expected at most "
                        f"{MAX_IMAGE_PIXELS:,} pixels per image") from None  # fmt: skip
    except UnidentifiedImageError:  # its text names an in-memory buffer, not the image
        raise DataError(f"{where}: cannot decode: not in an image format Pillow reads") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # PIL's plugins raise all of these
        raise DataError(f"{where}: cannot decode: {str(exc)[:200]}") from None


def _resize_center_crop(img, size: int):
    from PIL import Image

    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


@dataclass
class _Source:
    """A dataset opened but not decoded: labels are known, images are decoded on demand, so a
    caller that needs only the validation part (the verifier) decodes only that."""

    take: Callable[[np.ndarray], torch.Tensor]  # indices -> uint8 N×C×H×W
    labels: np.ndarray
    classes: list[str]
    description: str
    fixed_split: np.ndarray | None = None  # 0 train, 1 validation, as the file itself says
    paths: list[str] | None = None  # image files, where there are files to stream (imagefolder)


def _open_npz(path: Path, description: str, image_size: int = 32) -> _Source:
    if path.is_dir():
        raise DataError(f"{path}: a folder; expected an .npz file of packed arrays jpeg, offsets, labels, classes")
    if not path.is_file():
        raise DataError(f"{path}: file not found (expected packed arrays jpeg, offsets, labels, classes)")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # EOFError: an empty file
        archive = None
    if not hasattr(archive, "files"):  # unreadable, or a single .npy array
        raise DataError(f"{path}: not an .npz archive (expected packed arrays jpeg, offsets, labels, classes)")
    with archive as z:
        missing = {"jpeg", "offsets", "labels", "classes"} - set(z.files)
        if missing:
            raise DataError(f"{path}: missing arrays {sorted(missing)} (expected jpeg, offsets, labels, classes)")
        _check_declared_sizes(path, z)
        try:  # members are read lazily: a damaged one fails only here
            arrays = {name: z[name] for name in z.files}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise DataError(f"{path}: damaged archive member: {str(exc)[:200]}") from None
    jpeg, labels, classes = _packed_arrays(path, arrays)
    offsets = arrays["offsets"].astype(np.int64)
    if len(offsets) != len(labels) + 1 or np.any(np.diff(offsets) < 0) or (len(offsets) and (offsets[0] < 0 or offsets[-1] > len(jpeg))):
        raise DataError(f"{path}: offsets: expected {len(labels) + 1} ascending byte offsets into jpeg "
                        f"({len(jpeg)} bytes), found {len(offsets)}")  # fmt: skip
    split = _fixed_split(path, arrays.get("split"), len(labels))

    def take(idx: np.ndarray) -> torch.Tensor:
        return decode_jpegs([jpeg[offsets[i] : offsets[i + 1]].tobytes() for i in idx], image_size,
                            ids=[f"{path}: image {i}" for i in idx])  # fmt: skip

    return _Source(take, labels.astype(np.int64), classes, description, split)


#: Bytes one array of a packed dataset may declare (the full CIFAR-10 training split as JPEGs is
#: about 150 MB): checked from each member's header, before anything is allocated.
MAX_NPZ_ARRAY_BYTES = 8 << 30


def _check_declared_sizes(path: Path, archive) -> None:
    """Each member's declared shape bounded from its .npy header alone: np.load allocates what
    the header says before it reads a byte, so a 100-byte member declaring 10**12 labels would
    be an 8 TB allocation."""
    for member in archive.zip.namelist():
        name = member.removesuffix(".npy")
        try:
            with archive.zip.open(member) as fp:
                version = np.lib.format.read_magic(fp)
                read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if read is None:
                    raise ValueError(f"npy version {version}")
                shape, _, dtype = read(fp)
        except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
            raise DataError(f"{path}: damaged archive member: {name}: {str(exc)[:200]}") from None
        size = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if size > MAX_NPZ_ARRAY_BYTES:
            raise DataError(f"{path}: {name}: declares shape {shown(tuple(shape))} ({size:,} bytes); expected at most "
                            f"{MAX_NPZ_ARRAY_BYTES:,} bytes per array")  # fmt: skip


def _packed_arrays(path: Path, arrays: dict) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(jpeg, labels, classes) of a packed dataset, each of the dtype and shape its readers
    assume; labels each name one of the classes (else training fails on the first batch holding
    one, as cross-entropy's index error)."""
    jpeg, offsets, labels, classes = (arrays[k] for k in ("jpeg", "offsets", "labels", "classes"))
    if jpeg.dtype != np.uint8 or jpeg.ndim != 1:
        raise DataError(f"{path}: jpeg: {jpeg.dtype}{list(jpeg.shape)}; expected the encoded images' bytes, one uint8 array")
    if not np.issubdtype(offsets.dtype, np.integer) or offsets.ndim != 1:
        raise DataError(f"{path}: offsets: {offsets.dtype}{list(offsets.shape)}; expected a 1-d integer array")
    if classes.ndim != 1 or not 1 <= len(classes) <= MAX_CLASSES or classes.dtype.kind not in "U":
        raise DataError(f"{path}: classes: {classes.dtype}{list(classes.shape)}; expected 1 to {MAX_CLASSES:,} class names, "
                        "one 1-d string array")  # fmt: skip
    if not np.issubdtype(labels.dtype, np.integer) or labels.ndim != 1 or len(labels) > MAX_IMAGES:
        raise DataError(f"{path}: labels: {labels.dtype}{list(labels.shape)}; expected a 1-d integer array, one label per image "
                        f"(at most {MAX_IMAGES:,})")  # fmt: skip
    bad = np.flatnonzero((labels < 0) | (labels >= len(classes)))
    if len(bad):
        raise DataError(f"{path}: labels: image {bad[0]} has label {labels[bad[0]]}; expected 0..{len(classes) - 1} "
                        f"(one of the {len(classes)} classes)")  # fmt: skip
    return jpeg, labels, [str(c) for c in classes]


def _fixed_split(path: Path, split: np.ndarray | None, n: int) -> np.ndarray | None:
    """The file's own split: 0 (training) or 1 (validation) per image, the validation part not empty."""
    if split is None:
        return None
    if split.ndim != 1 or len(split) != n or split.dtype.kind not in "biu":
        raise DataError(f"{path}: split: {split.dtype}{list(split.shape)}; expected {n} integers, 0 (training) or 1 (validation) per image")
    if not np.isin(split, (0, 1)).all():
        raise DataError(f"{path}: split: values {shown(sorted(set(np.unique(split).tolist()) - {0, 1}))}; expected 0 (training) or 1 (validation)")
    if not (split == 1).any():
        raise DataError(f"{path}: split: no image marked 1; expected a validation part of at least 1 image")
    return split


def _open_cifar(kind: str, root: Path) -> _Source:
    from torchvision import datasets

    cls, folder = {"cifar10": (datasets.CIFAR10, "cifar-10-batches-py"), "cifar100": (datasets.CIFAR100, "cifar-100-python")}[kind]
    if not (root / folder).is_dir():
        raise DataError(f"{kind}:{root}: expected torchvision's {folder}/ folder inside {root} (no download at run time)")
    try:
        ds = cls(root=str(root), train=True, download=False)
    except RuntimeError:  # torchvision's "Dataset not found or corrupted. You can use download=True …"
        raise DataError(f"{kind}:{root}: {folder}/ is incomplete or corrupted (its files fail torchvision's checksums); "
                        f"unpack the {folder} archive there again (no download at run time)") from None  # fmt: skip
    x = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()  # stored decoded
    return _Source(lambda idx: x[torch.from_numpy(idx)], np.asarray(ds.targets, dtype=np.int64), list(ds.classes),
                   f"torchvision {kind.upper()} training split from {root}")  # fmt: skip


def _open_imagefolder(root: Path, image_size: int) -> _Source:
    from torchvision.datasets import ImageFolder

    if not root.is_dir():
        raise DataError(f"imagefolder:{root}: folder not found (expected DIR/<class>/<image files>)")
    try:
        ds = ImageFolder(str(root))
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(f"imagefolder:{root}: {exc}") from None
    paths = [p for p, _ in ds.samples]

    def take(idx: np.ndarray) -> torch.Tensor:
        return decode_jpegs([Path(paths[i]).read_bytes() for i in idx], image_size, ids=[f"image {paths[i]}" for i in idx])

    return _Source(take, np.asarray(ds.targets, dtype=np.int64), list(ds.classes), f"ImageFolder {root}", paths=paths)


def embedded_path() -> Path:
    return Path(str(resources.files("ftdeploy") / "data" / EMBEDDED_NAME))


def _open(spec: str, image_size: int) -> _Source:
    kind, _, arg = spec.partition(":")
    if kind == "embedded" and not arg:  # embedded:ANYTHING would silently ignore what was typed
        return _open_npz(embedded_path(), EMBEDDED_PROVENANCE, image_size)
    if kind == "npz" and arg:
        return _open_npz(Path(arg), f"packed images from {arg}", image_size)
    if kind in ("cifar10", "cifar100") and arg:
        if image_size != CIFAR_SIDE:  # stored decoded at 32x32: resizing them up would only blur
            raise DataError(f"{spec}: its images are {CIFAR_SIDE}x{CIFAR_SIDE}; expected image size {CIFAR_SIDE}, "
                            f"found {image_size} (give npz:FILE or imagefolder:DIR to resize)")  # fmt: skip
        return _open_cifar(kind, Path(arg))
    if kind == "imagefolder" and arg:
        return _open_imagefolder(Path(arg), image_size)
    raise DataError(f"--data: expected embedded, cifar10:DIR, cifar100:DIR, imagefolder:DIR or npz:FILE, found {spec!r}")


def _split(source: _Source, val_split: int | None, spec: str) -> tuple[np.ndarray, np.ndarray, str]:
    """(train indices, validation indices, how the split was made) of the dataset ``spec``."""
    if source.fixed_split is not None and val_split is None:
        split = source.fixed_split
        return np.flatnonzero(split == 0), np.flatnonzero(split == 1), " (validation: the file's own held-out part)"
    if len(source.labels) < 2:  # else the default split's message would name an option nobody typed
        raise DataError(f"{spec}: {len(source.labels)} image(s) found; a training and a validation part need at least 2")
    n_val = val_split if val_split is not None else max(1, len(source.labels) // 10)
    train_idx, val_idx = stratified_split(source.labels, n_val)
    return train_idx, val_idx, f" (validation: {len(val_idx)} images held out, stratified, seed {SPLIT_SEED})"


def _opened_split(spec: str | None, val_split: int | None, image_size: int):
    """(spec, source, train indices, validation indices, description): what both loaders share."""
    spec = spec or "embedded"
    source = _open(spec, image_size)
    train_idx, val_idx, how = _split(source, val_split, spec)
    return spec, source, train_idx, val_idx, source.description + how


def load_data(spec: str | None = None, val_split: int | None = None, image_size: int = CIFAR_SIDE,
              stream: bool | None = False) -> DataBundle:  # fmt: skip
    """Load a dataset spec into memory and split it (see module docstring). ``stream``: read an
    image folder's images from their files batch by batch at every pass, training and
    validation images alike (:mod:`ftdeploy.streaming`), rather than decode them into memory;
    None: when its decoded training images would exceed
    :data:`ftdeploy.streaming.STREAM_ABOVE_BYTES`. Either way the same images, in the same order,
    and the same normalisation statistics."""
    from .streaming import streamed_part

    spec, source, train_idx, val_idx, description = _opened_split(spec, val_split, image_size)
    if not len(train_idx):  # the file's own split may mark every image for validation
        raise DataError(f"{spec}: split: no image marked 0; expected a training part of at least 1 image")
    train_x = streamed_part(spec, source, train_idx, image_size, stream)
    if train_x is None:
        train_x, val_x = source.take(train_idx), source.take(val_idx)
    else:  # the held-out part of a folder that large may be large too
        val_x = streamed_part(spec, source, val_idx, image_size, True)
    mean, std = channel_stats(train_x)
    return DataBundle(train_x=train_x, train_y=torch.from_numpy(source.labels[train_idx]), val_x=val_x,
                      val_y=torch.from_numpy(source.labels[val_idx]), classes=source.classes, spec=spec,
                      description=description, mean=mean, std=std, val_split=len(val_idx))  # fmt: skip


@dataclass
class ValidationSet:
    """The validation part alone, as :func:`load_data` splits it: what an evaluation needs. It has
    no normalisation statistics (they come from the training images): an evaluation takes the
    model's own."""

    val_x: torch.Tensor
    val_y: torch.Tensor
    classes: list[str]
    spec: str
    description: str
    val_split: int


def load_validation(spec: str | None = None, val_split: int | None = None, image_size: int = CIFAR_SIDE,
                    all_images: bool = False) -> ValidationSet:  # fmt: skip
    """The validation part alone, without decoding the training images (a tenth of the decoding
    work on a default split); with ``all_images``, every image of the source: a test set of
    one's own, none of it held for training."""
    spec, source, val_idx, description = validation_part(spec, val_split, image_size, all_images)
    return ValidationSet(val_x=source.take(val_idx), val_y=torch.from_numpy(source.labels[val_idx]), classes=source.classes,
                         spec=spec, description=description, val_split=len(val_idx))  # fmt: skip


def validation_part(spec: str | None, val_split: int | None, image_size: int, all_images: bool):
    """(spec, opened source, indices of the validation images, description), nothing decoded:
    what :func:`load_validation` decodes, and what a streamed evaluation reads file by file."""
    if not all_images:
        spec, source, _, val_idx, description = _opened_split(spec, val_split, image_size)
        return spec, source, val_idx, description
    if val_split is not None:
        raise DataError("--all-images takes every image of --data: give it or --val-split, not both")
    spec = spec or "embedded"
    source = _open(spec, image_size)
    val_idx = np.arange(len(source.labels))
    return spec, source, val_idx, f"{source.description} (every image: {len(val_idx)})"


def checkpoint_data(record: dict | None, spec: str | None, val_split: int | None, loader=load_data):
    """``loader(spec, val_split)`` (:func:`load_data` or :func:`load_validation`) defaulting to the
    dataset and validation split a checkpoint records (its ``data`` entry), so a model derived
    from it (pruned, equalised) is trained and measured on the same split, never on its
    validation images."""
    record = record or {}
    spec = spec or record.get("data")
    size = recorded_image_size(record)
    data = loader(spec, val_split, image_size=size)
    recorded_val = record.get("val_split")
    if val_split is None and spec == record.get("data") and recorded_val and recorded_val != data.val_split:
        data = loader(spec, recorded_val, image_size=size)
    return data


def recorded_image_size(record: dict | None) -> int:
    """The image side a checkpoint's or export's data record says its model was trained at
    (records from before image sizes were recorded: 32, the only size then)."""
    size = (record or {}).get("image_size", CIFAR_SIDE)
    return size if isinstance(size, int) and not isinstance(size, bool) else CIFAR_SIDE


def image_set_fingerprint(x_uint8: np.ndarray, labels: np.ndarray) -> str:
    """SHA-256 of an image set as measured: its shape, every pixel (uint8, in order) and every
    label. Two reports with the same fingerprint were measured on the same images."""
    return ImageSetHash(x_uint8.shape, x_uint8.dtype).update(x_uint8).hexdigest(labels)


class ImageSetHash:
    """:func:`image_set_fingerprint` computed batch by batch, for images streamed from files that
    never sit in memory together: the same hash when the batches, in order, are the whole set."""

    def __init__(self, shape: tuple[int, ...], dtype=np.uint8):
        self._digest = hashlib.sha256(repr((tuple(shape), str(np.dtype(dtype)))).encode())

    def update(self, x_uint8: np.ndarray) -> "ImageSetHash":
        self._digest.update(np.ascontiguousarray(x_uint8).tobytes())
        return self

    def hexdigest(self, labels: np.ndarray) -> str:
        digest = self._digest.copy()
        digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
        return digest.hexdigest()


def channel_stats(x: "torch.Tensor | StreamedImages") -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (unbiased) of uint8 images, in [0, 1] units: images held in
    memory, or streamed from their files in one pass. Each channel's pixel values are counted
    (a histogram of the 256 levels, in integers) batch by batch and the figures computed from
    the exact sums, so they are the same however the images come batched: streamed or not."""
    parts: Iterable = x.split(256) if isinstance(x, torch.Tensor) else x.once(256)
    counts = None
    for xb in parts:
        xb = torch.as_tensor(xb)
        hist = torch.stack([torch.bincount(xb[:, c].reshape(-1), minlength=256) for c in range(xb.shape[1])])
        counts = hist if counts is None else counts + hist
    mean, std = [], []
    for hist in counts.tolist():
        n = sum(hist)
        s1 = sum(v * h for v, h in enumerate(hist))
        s2 = sum(v * v * h for v, h in enumerate(hist))
        mean.append(s1 / (255 * n))  # exact integers: one rounding
        std.append(math.sqrt((n * s2 - s1 * s1) / (n * (n - 1) * 255 * 255)))
    return tuple(mean), tuple(std)


def normalize(x_uint8: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean, dtype=torch.float32, device=x_uint8.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x_uint8.device).view(1, -1, 1, 1)
    return (x_uint8.to(torch.float32) / 255.0 - m) / s


def normalize_numpy(x_uint8: np.ndarray, mean, std) -> np.ndarray:
    """The verifier's preprocessing: identical arithmetic to :func:`normalize`, in float32."""
    m = np.asarray(mean, np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, np.float32).reshape(1, -1, 1, 1)
    return (x_uint8.astype(np.float32) / np.float32(255.0) - m) / s


def augment(x: torch.Tensor, generator: torch.Generator | None = None, pad: int = 4) -> torch.Tensor:
    """Standard CIFAR augmentation on a batch: random crop after zero padding, random flip.
    Per-image offsets, done with one gather per axis instead of a Python loop."""
    n, c, h, w = x.shape
    dev = x.device
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), device=dev, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), device=dev, generator=generator)
    flip = torch.rand(n, device=dev, generator=generator) < 0.5
    rows = (dy[:, None] + torch.arange(h, device=dev)[None]).view(n, 1, h, 1).expand(n, c, h, w + 2 * pad)
    out = padded.gather(2, rows)
    cols = torch.arange(w, device=dev)[None].expand(n, w)
    cols = torch.where(flip[:, None], w - 1 - cols, cols) + dx[:, None]
    return out.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))


def rank_share(batch, rank: int, world: int):
    """Process ``rank``'s share of a global batch (of images, labels or their indices) when
    ``world`` processes train together under torchrun: every ``world``-th item from the
    ``rank``-th on, so the shares together are the batch and each process trains on what it
    would have taken from the whole batch. A short last batch may leave a process none."""
    return batch[rank::world]


def batches(x: "torch.Tensor | StreamedImages", y: torch.Tensor, batch_size: int, shuffle: bool,
            generator: torch.Generator | None = None, *, rank: int = 0, world: int = 1):  # fmt: skip
    """Yield (x, y) batches, or under torchrun process ``rank``'s share of each
    (:func:`rank_share`); the last partial batch is kept. Streamed images are read in the same
    order (the shuffle drawn from ``generator`` as for images in memory), only this process's
    share of each batch decoded, and each batch moved to ``y``'s device (from pinned memory,
    without waiting, where that is a GPU)."""
    n = len(y)
    order = torch.randperm(n, generator=generator, device="cpu") if shuffle else torch.arange(n)
    if not isinstance(x, torch.Tensor):  # streamed (ftdeploy.streaming.StreamedImages)
        for i, xb in enumerate(x.batches(batch_size, order, rank=rank, world=world, device=y.device)):
            yield xb, y[rank_share(order[i * batch_size : (i + 1) * batch_size], rank, world).to(y.device)]
        return
    order = order.to(x.device)
    for start in range(0, n, batch_size):
        idx = rank_share(order[start : start + batch_size], rank, world)
        yield x[idx], y[idx]
