"""Training on imagefolder:DIR streamed from its files (train --stream): the same images in the
same order as decoding the folder into memory, so a streamed run is the in-memory run to the bit:
its weights, its log's accuracies, its normalisation, and an interrupted run resumed."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from ftdeploy.chip import DeployedNetwork
from ftdeploy.data import channel_stats, load_data
from ftdeploy.models import create_model
from ftdeploy.nonideality import FaultModel
from ftdeploy.population import SimulatedChips, chip_accuracies
from ftdeploy.profiles import load_target
from ftdeploy.streaming import StreamedImages
from ftdeploy.training.checkpoint import load_checkpoint
from ftdeploy.training.config import TrainConfig
from ftdeploy.training.loop import train

from test_train import _interrupt_after_epochs

CLASSES, PER_CLASS, SIDE = ("ant", "bee", "cat"), 14, 16
#: Every column of a log row but its wall-clock seconds.
COMPARED = ("epoch", "rate", "lr", "train_loss", "train_acc", "val_acc", "val_acc_faulty")


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    """42 small images of 3 classes (each class a faint colour cast on noise): PNG at 16 px, every
    third a 24 px JPEG, so the resize path is streamed too."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir()
        for k in range(PER_CLASS):
            side = 24 if k % 3 == 2 else SIDE
            img = rng.integers(0, 220, (side, side, 3), dtype=np.uint8)
            img[..., c] += 30
            path = root / name / f"{k:02d}.{'jpg' if side != SIDE else 'png'}"
            Image.fromarray(img).save(path, **({"quality": 90} if side != SIDE else {}))
    return f"imagefolder:{root}"


@pytest.fixture(scope="module")
def bundles(spec):
    """(in memory, streamed) of the folder with 9 images held out."""
    return load_data(spec, 9, SIDE, stream=False), load_data(spec, 9, SIDE, stream=True)


@pytest.fixture(scope="module")
def pretrained(bundles, tmp_path_factory):
    """The same pretraining in memory and streamed: (checkpoint, run folder) of each."""
    target, _ = load_target("paper-diff8")
    runs = []
    for bundle in bundles:
        out = tmp_path_factory.mktemp("pretrain")
        runs.append((train(_config(), bundle, target, out), out))
    return runs


def _config(**kw) -> TrainConfig:
    return TrainConfig(**{"model": "democnn", "image_size": SIDE, "method": "pretrain", "epochs": 2, "lr": 0.05,
                          "batch_size": 8, "device": "cpu", **kw})  # fmt: skip


def _log(folder) -> list[tuple]:
    return [tuple(r[k] for k in COMPARED) for r in map(json.loads, (folder / "log.jsonl").read_text().splitlines())]


def test_streamed_images_and_statistics_are_the_in_memory_ones(bundles, spec, monkeypatch):
    memory, streamed = bundles
    assert streamed.streamed and not memory.streamed
    assert isinstance(streamed.train_x, StreamedImages) and isinstance(streamed.val_x, StreamedImages)
    assert np.array_equal(np.concatenate(list(streamed.val_x.batches(4))), memory.val_x.numpy())
    assert torch.equal(streamed.train_y, memory.train_y) and torch.equal(streamed.val_y, memory.val_y)
    assert streamed.split_record() == memory.split_record() and streamed.val_fingerprint() == memory.val_fingerprint()
    # one pass over the files, counted exactly: the figures the images in memory give
    assert (streamed.mean, streamed.std) == (memory.mean, memory.std) == channel_stats(memory.train_x)
    f = memory.train_x.to(torch.float64) / 255  # the textbook float64 figures, to rounding
    assert np.allclose(streamed.mean, f.mean((0, 2, 3)).tolist(), rtol=0, atol=1e-12)
    assert np.allclose(streamed.std, f.std((0, 2, 3)).tolist(), rtol=0, atol=1e-12)
    # the default streams only what would not fit the memory budget
    assert not load_data(spec, 9, SIDE, stream=None).streamed
    monkeypatch.setattr("ftdeploy.streaming.STREAM_ABOVE_BYTES", 0)
    assert load_data(spec, 9, SIDE, stream=None).streamed


def test_streamed_batches_follow_the_in_memory_shuffle(bundles):
    from ftdeploy.data import batches

    memory, streamed = bundles
    global_rng = torch.get_rng_state()
    seen = [[(x.clone(), y.clone()) for x, y in batches(b.train_x, b.train_y, 5, True, torch.Generator().manual_seed(3))]
            for b in (memory, streamed)]  # fmt: skip
    assert torch.equal(torch.get_rng_state(), global_rng), "a streamed pass leaves torch's global generator (dropout's) alone"
    assert len(seen[0]) == len(seen[1]) == 7
    for (xm, ym), (xs, ys) in zip(*seen):
        assert torch.equal(xm, xs) and torch.equal(ym, ys)


def test_a_streamed_pretraining_is_the_in_memory_one_to_the_bit(pretrained):
    (a, a_dir), (b, b_dir) = pretrained
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for key in ("normalization", "data", "acc_pretrain", "acc_pretrain_images"):
        assert a[key] == b[key], key
    assert _log(a_dir) == _log(b_dir) and len(_log(a_dir)) == 2


def test_a_streamed_retraining_resumes_exactly_and_is_the_in_memory_one(bundles, pretrained, tmp_path, monkeypatch):
    """Fault-tolerant retraining (faulty chips measured on the streamed validation images every
    epoch), interrupted after its first epoch and resumed: bit-identical to the uninterrupted run
    (in memory, which a streamed uninterrupted run equals: the pretraining above)."""
    memory, streamed = bundles
    target, _ = load_target("paper-diff8")
    init = pretrained[0][0]
    cfg = _config(method="progressive", target_rate=0.05, progressive_rates=[0.01, 0.05], epochs=2, lr=0.01,
                  rate_warmup_epochs=1.5, eval_chips=2)  # fmt: skip
    straight = train(cfg, memory, target, tmp_path / "straight", init=init)
    with monkeypatch.context() as m:
        _interrupt_after_epochs(m, 1)
        with pytest.raises(KeyboardInterrupt):
            train(cfg, streamed, target, tmp_path / "cut", init=init)
    assert load_checkpoint(tmp_path / "cut" / "model.pt")["epochs_done"] == 1
    resumed = train(cfg, streamed, target, tmp_path / "cut", init=init, resume=True)
    assert resumed["epochs_done"] == 2
    for key, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    assert _log(tmp_path / "straight") == _log(tmp_path / "cut")
    assert all(row[-1] is not None for row in _log(tmp_path / "cut")), "faulty chips were measured"


def test_chips_batched_in_one_pass_measure_streamed_images_as_in_memory(bundles):
    memory, streamed = bundles
    target, _ = load_target("paper-diff8")
    model = create_model("democnn", num_classes=3, image_size=SIDE).eval()
    net = DeployedNetwork(model, target)
    population = FaultModel().at_rate(0.1)
    accs = [chip_accuracies(net.backend(b.val_x, b.val_y, memory.mean, memory.std, batch_size=4, chip_batch=3),
                            SimulatedChips(population, 0.1, 5, 3)) for b in (memory, streamed)]  # fmt: skip
    assert accs[0] == accs[1]


def test_train_stream_on_a_source_without_image_files_is_one_line(tmp_path, monkeypatch, capsys):
    from ftdeploy.cli import main

    monkeypatch.setattr(sys, "argv", ["ftdeploy", "train", "--profile", "demo", "--method", "pretrain", "--data", "embedded",
                                      "--stream", "--out", str(tmp_path / "run")])  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "--stream: " in err[0] and "not an image folder" in err[0], err
    assert not (tmp_path / "run").exists()


def test_train_cli_streams_an_image_folder(spec, tmp_path, monkeypatch, capsys):
    from ftdeploy.cli import main

    monkeypatch.setattr(sys, "argv", ["ftdeploy", "train", "--profile", "demo", "--method", "pretrain", "--data", spec,
                                      "--val-split", "9", "--image-size", str(SIDE), "--stream", "--epochs", "1", "--batch-size", "16", "--device", "cpu",
                                      "--out", str(tmp_path / "run")])  # fmt: skip
    main()
    assert "streamed from its files" in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "run" / "model.pt")["epochs_done"] == 1
