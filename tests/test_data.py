"""Datasets: the embedded subset, the stratified split, every spec's loader and its errors, and
batch augmentation."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from ftdeploy.data import (
    EMBEDDED_PROVENANCE,
    augment,
    batches,
    channel_stats,
    embedded_path,
    load_data,
    load_validation,
    normalize,
    normalize_numpy,
    stratified_split,
)
from ftdeploy.errors import DataError

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def embedded():
    return load_data()


# --- embedded ---------------------------------------------------------------------------------


def test_embedded_dataset(embedded):
    b = embedded
    assert embedded_path().is_file()
    assert b.train_x.shape == (5000, 3, 32, 32) and b.val_x.shape == (1000, 3, 32, 32)
    assert b.train_x.dtype == torch.uint8 and b.val_x.dtype == torch.uint8
    assert b.train_y.dtype == torch.int64 and b.val_y.shape == (1000,)
    assert b.classes == CIFAR10_CLASSES and b.num_classes == 10
    assert torch.bincount(b.train_y, minlength=10).tolist() == [500] * 10
    assert torch.bincount(b.val_y, minlength=10).tolist() == [100] * 10
    assert b.spec == "embedded" and b.description.startswith(EMBEDDED_PROVENANCE)
    assert "600 per class" in EMBEDDED_PROVENANCE and "file's own held-out part" in b.description
    assert b.split_record() == {"data": "embedded", "val_split": 1000, "split_seed": 0,
                                "train_images": 5000, "val_images": 1000, "image_size": 32}  # fmt: skip
    # real photographs, not a constant: per-channel stats of CIFAR-10 (~0.49/0.48/0.45)
    assert b.mean == pytest.approx((0.49, 0.48, 0.45), abs=0.03)
    assert all(0.2 < s < 0.3 for s in b.std)
    assert (b.mean, b.std) == channel_stats(b.train_x)
    # no image appears in both parts
    train_keys = {bytes(x.numpy().tobytes()) for x in b.train_x[:, :, ::4, ::4]}
    assert not any(bytes(x.numpy().tobytes()) in train_keys for x in b.val_x[:, :, ::4, ::4])


def test_embedded_with_explicit_val_split_restratifies(embedded):
    b = load_data(None, val_split=600)
    assert len(b.val_y) == 600 and len(b.train_y) == 5400
    assert torch.bincount(b.val_y, minlength=10).tolist() == [60] * 10
    assert "600 images held out, stratified, seed 0" in b.description


# --- stratified split ---------------------------------------------------------------------------


def _reference_split(labels, n_val, seed=0):
    """The documented algorithm for classes that are all large enough: n_val // k per class
    (the first n_val % k classes one more), each taken from a seeded permutation of the class.
    The embedded subset's provenance rests on exactly this split, so it must not drift."""
    classes = np.unique(labels)
    rng = np.random.default_rng(seed)
    val = []
    for i, c in enumerate(classes):
        q = n_val // len(classes) + (i < n_val % len(classes))
        val.append(rng.permutation(np.flatnonzero(labels == c))[:q])
    return np.sort(np.concatenate(val))


def test_stratified_split_deterministic_disjoint_balanced():
    labels = np.random.default_rng(1).permutation(np.repeat(np.arange(10), 500))
    tr, va = stratified_split(labels, 503)
    tr2, va2 = stratified_split(labels, 503)
    assert np.array_equal(tr, tr2) and np.array_equal(va, va2)
    assert len(va) == 503 and len(tr) == len(labels) - 503
    assert np.intersect1d(tr, va).size == 0 and np.union1d(tr, va).size == len(labels)
    assert np.all(np.diff(va) > 0) and np.all(np.diff(tr) > 0)
    counts = np.bincount(labels[va], minlength=10)
    assert counts.max() - counts.min() == 1 and counts.tolist() == [51, 51, 51] + [50] * 7
    assert np.array_equal(va, _reference_split(labels, 503))
    _, other_seed = stratified_split(labels, 503, seed=1)
    assert not np.array_equal(va, other_seed)


def test_stratified_split_of_imbalanced_classes_gives_n_val_images():
    """A class too small for its share gives what it has; the others make up the rest, so the
    recorded val_split reproduces the same split."""
    labels = np.array([0] * 2 + [1] * 100 + [2] * 50)
    tr, va = stratified_split(labels, 10)
    assert len(va) == 10
    assert np.bincount(labels[va], minlength=3).tolist() == [2, 4, 4]
    assert np.array_equal(stratified_split(labels, len(va))[1], va)
    tr, va = stratified_split(labels, len(labels) - 1)
    assert len(va) == len(labels) - 1 and len(tr) == 1


@pytest.mark.parametrize("n", [0, -3, 20, 25])
def test_stratified_split_bad_n(n):
    with pytest.raises(DataError, match=r"--val-split: expected between 1 and 19 images, found " + str(n)):
        stratified_split(np.arange(20) % 4, n)


# --- loader errors ------------------------------------------------------------------------------


def _data_error(spec) -> str:
    with pytest.raises(DataError) as exc:
        load_data(spec)
    msg = str(exc.value)
    assert "\n" not in msg, msg
    return msg


@pytest.mark.parametrize("spec", ["cifar10", "cifar10:", "npz:", "imagefolder", "mnist:/data", "/some/dir"])
def test_bad_spec(spec):
    msg = _data_error(spec)
    assert msg.startswith("--data: expected embedded, cifar10:DIR, cifar100:DIR, imagefolder:DIR or npz:FILE")
    assert msg.endswith(f"found {spec!r}")


def test_missing_cifar_dirs(tmp_path):
    assert _data_error(f"cifar10:{tmp_path}") == (
        f"cifar10:{tmp_path}: expected torchvision's cifar-10-batches-py/ folder inside {tmp_path} (no download at run time)"
    )
    assert "cifar-100-python/" in _data_error(f"cifar100:{tmp_path / 'nope'}")
    (tmp_path / "cifar-10-batches-py").mkdir()  # folder there, files not: torchvision's own check
    msg = _data_error(f"cifar10:{tmp_path}")
    assert msg == (f"cifar10:{tmp_path}: cifar-10-batches-py/ is incomplete or corrupted (its files fail torchvision's "
                   "checksums); unpack the cifar-10-batches-py archive there again (no download at run time)"), \
        "not torchvision's advice to pass download=True, which the command line has no way to"


def test_missing_or_empty_imagefolder(tmp_path):
    assert _data_error(f"imagefolder:{tmp_path / 'nope'}") == (
        f"imagefolder:{tmp_path / 'nope'}: folder not found (expected DIR/<class>/<image files>)"
    )
    msg = _data_error(f"imagefolder:{tmp_path}")  # exists, no class folders
    assert msg.startswith(f"imagefolder:{tmp_path}: ") and "class" in msg.lower()
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "notes.txt").write_text("no images here")
    assert _data_error(f"imagefolder:{tmp_path}").startswith(f"imagefolder:{tmp_path}: ")
    Image.fromarray(_image(0)).save(tmp_path / "cat" / "0.png")  # one image: nothing to split
    assert _data_error(f"imagefolder:{tmp_path}") == (
        f"imagefolder:{tmp_path}: 1 image(s) found; a training and a validation part need at least 2"
    )


def test_npz_errors(tmp_path):
    assert _data_error(f"npz:{tmp_path / 'x.npz'}") == (
        f"{tmp_path / 'x.npz'}: file not found (expected packed arrays jpeg, offsets, labels, classes)"
    )
    partial = tmp_path / "partial.npz"
    np.savez(partial, jpeg=np.zeros(3, np.uint8), labels=np.zeros(1, np.int64))
    assert _data_error(f"npz:{partial}") == (
        f"{partial}: missing arrays ['classes', 'offsets'] (expected jpeg, offsets, labels, classes)"
    )
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not an archive")
    assert _data_error(f"npz:{junk}") == f"{junk}: not an .npz archive (expected packed arrays jpeg, offsets, labels, classes)"
    single = tmp_path / "single.npz"
    with open(single, "wb") as f:
        np.save(f, np.zeros(3))
    assert _data_error(f"npz:{single}").startswith(f"{single}: not an .npz archive")


def test_npz_with_damaged_or_inconsistent_members(tmp_path):
    """A valid zip whose member bytes are damaged fails when read, later than np.load: still
    one DataError line, never a traceback. So do offsets that do not fit the labels."""
    good = tmp_path / "good.npz"
    np.savez_compressed(good, jpeg=np.arange(4000, dtype=np.uint16).astype(np.uint8), offsets=np.array([0, 4000]),
                        labels=np.array([0]), classes=np.array(["a"]))  # fmt: skip
    raw = bytearray(good.read_bytes())
    start = raw.index(b"jpeg.npy") + 200  # inside the compressed jpeg member
    raw[start : start + 64] = bytes(64)
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(bytes(raw))
    assert _data_error(f"npz:{damaged}").startswith(f"{damaged}: damaged archive member: ")
    skewed = tmp_path / "skewed.npz"
    np.savez(skewed, jpeg=np.zeros(10, np.uint8), offsets=np.array([0, 5, 20]), labels=np.array([0, 1]), classes=np.array(["a", "b"]))
    assert _data_error(f"npz:{skewed}") == f"{skewed}: offsets: expected 3 ascending byte offsets into jpeg (10 bytes), found 3"


# --- loaders on tiny generated data ---------------------------------------------------------------


def _image(seed, h=32, w=32):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_imagefolder(tmp_path):
    pngs = {}
    for c, cls in enumerate(["dog", "cat"]):  # ImageFolder sorts: cat = 0, dog = 1
        (tmp_path / cls).mkdir()
        for i in range(3):
            arr = _image(10 * c + i)
            Image.fromarray(arr).save(tmp_path / cls / f"{i}.png")
            pngs[(cls, i)] = arr
        Image.fromarray(_image(99, 40, 48)).save(tmp_path / cls / "big.jpg", quality=90)
        Image.fromarray(_image(98)[:, :, 0], mode="L").save(tmp_path / cls / "grey.png")
    b = load_data(f"imagefolder:{tmp_path}", val_split=2)
    assert b.classes == ["cat", "dog"]
    x = torch.cat([b.train_x, b.val_x])
    y = torch.cat([b.train_y, b.val_y])
    assert x.shape == (10, 3, 32, 32) and x.dtype == torch.uint8
    assert torch.bincount(y).tolist() == [5, 5] and torch.bincount(b.val_y).tolist() == [1, 1]
    # PNG is lossless: every generated image is there, pixel for pixel, under its class
    found = {bytes(img.permute(1, 2, 0).numpy().tobytes()): int(label) for img, label in zip(x, y)}
    for (cls, _), arr in pngs.items():
        assert found[arr.tobytes()] == b.classes.index(cls)
    grey = np.repeat(_image(98)[:, :, :1], 3, axis=2)  # single channel decoded as RGB
    assert grey.tobytes() in found
    assert b.description.startswith(f"ImageFolder {tmp_path}")
    small = load_data(f"imagefolder:{tmp_path}", val_split=2, image_size=16)
    assert small.train_x.shape[1:] == (3, 16, 16)
    _assert_validation_alone_matches(f"imagefolder:{tmp_path}", 2)


def test_npz_roundtrip(tmp_path):
    import io

    blobs, labels = [], []
    for i in range(6):
        buf = io.BytesIO()
        Image.fromarray(_image(i)).save(buf, format="PNG")
        blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
        labels.append(i % 2)
    offsets = np.cumsum([0] + [len(b) for b in blobs])
    path = tmp_path / "packed.npz"
    np.savez(path, jpeg=np.concatenate(blobs), offsets=offsets, labels=np.array(labels), classes=np.array(["a", "b"]),
             split=np.array([0, 0, 1, 0, 0, 1]))  # fmt: skip
    b = load_data(f"npz:{path}")
    assert b.classes == ["a", "b"]
    assert b.val_y.tolist() == [0, 1] and len(b.train_y) == 4
    assert torch.equal(b.val_x[0].permute(1, 2, 0), torch.from_numpy(_image(2)))
    assert torch.equal(b.train_x[2].permute(1, 2, 0), torch.from_numpy(_image(3)))
    assert "the file's own held-out part" in b.description
    b2 = load_data(f"npz:{path}", val_split=2)  # an explicit split overrides the file's
    assert torch.bincount(b2.val_y).tolist() == [1, 1]
    _assert_validation_alone_matches(f"npz:{path}", None)
    _assert_validation_alone_matches(f"npz:{path}", 2)


def _assert_validation_alone_matches(spec, val_split):
    """load_validation gives load_data's validation part, decoding those images only."""
    import ftdeploy.data as data_mod

    decoded = []
    real = data_mod.decode_jpegs
    data_mod.decode_jpegs = lambda blobs, *a, **k: (decoded.append(len(blobs)), real(blobs, *a, **k))[1]
    try:
        alone = load_validation(spec, val_split)
    finally:
        data_mod.decode_jpegs = real
    full = load_data(spec, val_split)
    assert torch.equal(alone.val_x, full.val_x) and torch.equal(alone.val_y, full.val_y)
    assert alone.classes == full.classes and alone.description == full.description
    assert alone.val_split == full.val_split
    assert not decoded or sum(decoded) == len(full.val_y), "only the validation images are decoded"
    assert not hasattr(alone, "mean"), "no training images, so no normalisation statistics to offer"


def _fake_cifar(root, kind, n_per_file=4):
    """torchvision's pickled CIFAR layout. torchvision checks each file's md5 against the real
    release; the test replaces that check by "file exists" (monkeypatched below), so what is
    tested is ftdeploy's handling of the decoded arrays (HWC -> CHW, labels, classes)."""
    folder, files, label_key, meta, meta_key, classes = {
        "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"],
                    "labels", "batches.meta", "label_names", CIFAR10_CLASSES),
        "cifar100": ("cifar-100-python", ["train", "test"], "fine_labels", "meta", "fine_label_names",
                     [f"c{i:02d}" for i in range(100)]),
    }[kind]  # fmt: skip
    (root / folder).mkdir()
    images, targets = [], []
    for k, name in enumerate(files):
        data = np.random.default_rng(k).integers(0, 256, (n_per_file, 3 * 32 * 32), dtype=np.uint8)
        labels = [(k * n_per_file + j) % len(classes) for j in range(n_per_file)]
        with open(root / folder / name, "wb") as f:
            pickle.dump({"data": data, label_key: labels}, f)
        if "test" not in name:
            images.append(data.reshape(-1, 3, 32, 32))
            targets += labels
    with open(root / folder / meta, "wb") as f:
        pickle.dump({meta_key: classes}, f)
    return np.concatenate(images), np.array(targets), classes


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_cifar_folder(tmp_path, monkeypatch, kind):
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
    images, targets, classes = _fake_cifar(tmp_path, kind)
    b = load_data(f"{kind}:{tmp_path}", val_split=2)
    assert b.classes == classes
    n = len(targets)
    assert len(b.train_y) + len(b.val_y) == n and len(b.val_y) == 2
    tr, va = stratified_split(targets, 2)
    assert torch.equal(b.train_x, torch.from_numpy(images[tr])) and torch.equal(b.val_x, torch.from_numpy(images[va]))
    assert b.train_y.tolist() == targets[tr].tolist()
    assert b.train_x.is_contiguous() and b.train_x.dtype == torch.uint8
    assert b.description.startswith(f"torchvision {kind.upper()} training split from {tmp_path}")
    _assert_validation_alone_matches(f"{kind}:{tmp_path}", 2)


# --- augmentation and batching --------------------------------------------------------------------


def _crops(img, pad):
    c, h, w = img.shape
    padded = torch.nn.functional.pad(img, (pad, pad, pad, pad))
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[:, dy : dy + h, dx : dx + w]
            yield (dy, dx, False), crop
            yield (dy, dx, True), crop.flip(-1)


def test_augment_is_a_padded_crop_or_its_mirror():
    x = torch.randint(1, 256, (24, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    out = augment(x, torch.Generator().manual_seed(1), pad=2)
    assert out.shape == x.shape and out.dtype == x.dtype
    flips, shifted = set(), 0
    for img, aug in zip(x, out):
        matches = [key for key, crop in _crops(img, 2) if torch.equal(crop, aug)]
        assert matches, "not a crop of the padded image"
        flips.add(matches[0][2])
        shifted += matches[0][:2] != (2, 2)
    assert flips == {False, True} and shifted > 0  # both flips and real shifts happen
    again = augment(x, torch.Generator().manual_seed(1), pad=2)
    assert torch.equal(out, again)


def test_augment_without_padding_is_identity_or_flip():
    x = torch.randint(0, 256, (32, 3, 5, 7), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    out = augment(x, torch.Generator().manual_seed(3), pad=0)
    same = [torch.equal(a, b) for a, b in zip(out, x)]
    mirrored = [torch.equal(a, b.flip(-1)) for a, b in zip(out, x)]
    assert all(s or m for s, m in zip(same, mirrored))
    assert any(same) and any(m and not s for s, m in zip(same, mirrored))


def test_batches_cover_everything_once():
    x, y = torch.arange(10).view(10, 1), torch.arange(10)
    plain = list(batches(x, y, 4, shuffle=False))
    assert [len(b[1]) for b in plain] == [4, 4, 2] and torch.equal(torch.cat([b[1] for b in plain]), y)
    shuffled = list(batches(x, y, 3, shuffle=True, generator=torch.Generator().manual_seed(0)))
    order = torch.cat([b[1] for b in shuffled])
    assert sorted(order.tolist()) == list(range(10)) and order.tolist() != list(range(10))
    assert all(torch.equal(bx.view(-1), by) for bx, by in shuffled)


def test_normalize_torch_and_numpy_agree():
    x = torch.randint(0, 256, (4, 3, 6, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    np.testing.assert_array_equal(normalize(x, mean, std).numpy(), normalize_numpy(x.numpy(), mean, std))


def test_validation_alone_of_the_embedded_set(embedded):
    alone = load_validation()
    assert torch.equal(alone.val_x, embedded.val_x) and torch.equal(alone.val_y, embedded.val_y)


def test_packed_images_are_resized_and_centre_cropped_to_the_image_size_asked():
    small, large = load_data(val_split=100), load_data(val_split=100, image_size=48)
    assert large.train_x.shape[1:] == (3, 48, 48) and large.image_size == 48 and large.split_record()["image_size"] == 48
    assert torch.equal(small.train_y, large.train_y)  # the same images, in the same order
    # the CIFAR images are 32x32: upscaled by 1.5, their mean colour stays within a level or two
    assert (small.train_x[:20].float().mean((2, 3)) - large.train_x[:20].float().mean((2, 3))).abs().max() < 3
