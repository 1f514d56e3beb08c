"""imagefolder:DIR streamed batch by batch (ftdeploy.streaming): the same images, in the same
order, as decoding the folder into memory, so a streamed sign-off's report is the in-memory one's
to the byte (the image-set fingerprint included)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ftdeploy.data import image_set_fingerprint, load_data, load_validation
from ftdeploy.errors import ConfigError, DataError
from ftdeploy.export import export_onnx
from ftdeploy.exported import load_export
from ftdeploy.profiles import load_profile
from ftdeploy.report import write_report
from ftdeploy.streaming import StreamedImages, StreamedOnnxBackend
from ftdeploy.training.checkpoint import load_checkpoint
from ftdeploy.verify import evaluation_data, verify_onnx

from _quick_model import quick_checkpoint

PROFILE = """\
name: streamtest
target: paper-diff8
faults:
  - kind: stuck-at
    p_sa: 0.01
  - kind: read-noise
    sigma_rel: 0.02
signoff:
  rates: [0.01]
  chips: 3
  seed: 1
  max_images: 50
  acceptance:
    - rate: 0.01
      min_acc_defect_pct: 0.0
"""
PER_CLASS = 8


def write_folder(root, bundle, per_class: int = PER_CLASS):
    """An ImageNet-style folder of the embedded validation images: PNG at 32 px, every third one
    a 48 px JPEG (resized and centre-cropped back to 32 when read), so both decoders and the
    resize path are streamed."""
    x, y = bundle.val_x.numpy(), bundle.val_y.numpy()
    for c, name in enumerate(bundle.classes):
        (root / name).mkdir(parents=True)
        for k, i in enumerate(np.flatnonzero(y == c)[:per_class]):
            img = Image.fromarray(x[i].transpose(1, 2, 0))
            if k % 3 == 2:
                img.resize((48, 48), Image.BILINEAR).save(root / name / f"{k:03d}.jpg", quality=90)
            else:
                img.save(root / name / f"{k:03d}.png")
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stream")
    bundle = load_data(None)
    (folder / "streamtest.yaml").write_text(PROFILE)
    resolved = load_profile(folder / "streamtest.yaml")
    onnx_path = folder / "model.onnx"
    export_onnx(load_checkpoint(quick_checkpoint(bundle, resolved.target, folder)), resolved, onnx_path)
    return onnx_path, resolved, f"imagefolder:{write_folder(folder / 'images', bundle)}"


def test_streamed_images_are_the_in_memory_images_in_order(setup):
    onnx_path, resolved, spec = setup
    memory = load_validation(spec, image_size=32)
    files = evaluation_data(load_export(onnx_path), spec, stream=True).images
    streamed = np.concatenate(list(files.batches(7)))  # batches that do not divide the images
    assert np.array_equal(streamed, memory.val_x.numpy()) and np.array_equal(files.labels, memory.val_y.numpy())
    assert files.fingerprint(batch_size=5) == image_set_fingerprint(memory.val_x.numpy(), memory.val_y.numpy())


def test_streamed_sign_off_report_is_the_in_memory_one_to_the_byte(setup, tmp_path):
    """The 50-image stratified subset of the folder's 60 held-out images, 3 noisy chips: the
    accuracies, the fingerprint and every byte of the report agree."""
    onnx_path, resolved, spec = setup
    memory = verify_onnx(onnx_path, resolved, spec, stream=False, batch_size=16, val_split=60)
    streamed = verify_onnx(onnx_path, resolved, spec, stream=True, batch_size=16, val_split=60)
    assert streamed["data"]["fingerprint"] == memory["data"]["fingerprint"]
    assert streamed["data"]["images"] == 50
    for a, b in zip(write_report(memory, tmp_path / "m"), write_report(streamed, tmp_path / "s")):
        if a.suffix in (".json", ".md", ".xml"):
            assert a.read_bytes() == b.read_bytes(), a.name


def test_streamed_backend_measures_every_pass_afresh(setup):
    onnx_path, _, spec = setup
    data = evaluation_data(load_export(onnx_path), spec, stream=True)
    backend = data.backend_for(load_export(onnx_path), batch_size=16)
    assert isinstance(backend, StreamedOnnxBackend)
    assert backend.accuracy() == backend.accuracy()


def test_stream_is_for_image_folders(setup):
    onnx_path, _, _ = setup
    with pytest.raises(ConfigError, match="--stream: .*not an image folder"):
        evaluation_data(load_export(onnx_path), None, stream=True)


def test_an_unreadable_file_is_one_line_naming_it(tmp_path):
    (tmp_path / "a").mkdir()
    bad = tmp_path / "a" / "broken.png"
    bad.write_bytes(b"not an image")
    images = StreamedImages([str(bad)], np.array([0]), 32, workers=1)
    with pytest.raises(DataError) as info:
        images.fingerprint()
    assert str(info.value).startswith(f"{bad}: cannot decode") and "\n" not in str(info.value)
