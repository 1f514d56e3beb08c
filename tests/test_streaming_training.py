"""Training on imagefolder:DIR streamed from its files (train --stream): the same images in the
same order as decoding the folder into memory, so a streamed run is the in-memory run to the bit:
its weights, its log's accuracies, its normalisation, and an interrupted run resumed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from ftdeploy.chip import DeployedNetwork
from ftdeploy.data import batches, channel_stats, load_data, rank_share
from ftdeploy.models import create_model
from ftdeploy.nonideality import FaultModel
from ftdeploy.population import SimulatedChips, chip_accuracies
from ftdeploy.profiles import load_target
from ftdeploy.streaming import StreamedImages, pins_memory
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
    memory, streamed = bundles
    global_rng = torch.get_rng_state()
    seen = [[(x.clone(), y.clone()) for x, y in batches(b.train_x, b.train_y, 5, True, torch.Generator().manual_seed(3))]
            for b in (memory, streamed)]  # fmt: skip
    assert torch.equal(torch.get_rng_state(), global_rng), "a streamed pass leaves torch's global generator (dropout's) alone"
    assert len(seen[0]) == len(seen[1]) == 7
    for (xm, ym), (xs, ys) in zip(*seen):
        assert torch.equal(xm, xs) and torch.equal(ym, ys)


def _decoding_in_process(images: StreamedImages, monkeypatch) -> tuple[StreamedImages, list[int]]:
    """``images`` decoded without worker processes, and the list each decoded image's index is
    appended to."""
    import ftdeploy.streaming as streaming

    decoded: list[int] = []
    original = streaming._DecodeFiles.__getitem__
    monkeypatch.setattr(streaming._DecodeFiles, "__getitem__", lambda self, i: (decoded.append(i), original(self, i))[1])
    return StreamedImages(images.paths, images.labels, images.image_size, workers=0), decoded


def test_each_process_decodes_only_its_share_of_every_batch(bundles, monkeypatch):
    """Under torchrun (2 processes here) a process reads from the files only the images it trains
    on, and gets the very images and labels its share of the in-memory batch holds: the shuffle's
    33 images in batches of 8 end in a batch of one, which leaves process 1 an empty share."""
    memory, streamed = bundles
    images, decoded = _decoding_in_process(streamed.train_x, monkeypatch)
    order = torch.randperm(len(memory.train_y), generator=torch.Generator().manual_seed(3))
    for rank in (0, 1):
        decoded.clear()
        seen = [list(batches(b, memory.train_y, 8, True, torch.Generator().manual_seed(3), rank=rank, world=2))
                for b in (memory.train_x, images)]  # fmt: skip
        assert len(seen[0]) == len(seen[1]) == 5, "every process takes the same number of steps"
        for (xm, ym), (xs, ys) in zip(*seen):
            assert torch.equal(xm, xs) and torch.equal(ym, ys)
        share = [int(i) for start in range(0, len(order), 8) for i in rank_share(order[start : start + 8], rank, 2)]
        assert decoded == share and len(share) == (17, 16)[rank]
    assert seen[1][-1][0].shape == (0, 3, SIDE, SIDE), "process 1's share of the last batch is empty"


@pytest.mark.filterwarnings("ignore:'pin_memory' argument is set as true but no accelerator")  # expected without a GPU
def test_streamed_batches_are_pinned_for_a_gpu_only(bundles, monkeypatch):
    """Batches bound for a GPU come from a loader that pins them (then are copied without
    waiting); on the CPU, and as numpy arrays for the ONNX Runtime backend, they are what they
    were, unpinned."""
    memory, streamed = bundles
    images, _ = _decoding_in_process(streamed.train_x, monkeypatch)
    built = []
    original = StreamedImages._loader
    monkeypatch.setattr(StreamedImages, "_loader", lambda self, *args: built.append(original(self, *args)) or built[-1])
    arrays = list(images.batches(8))  # no device: the ONNX Runtime backend's arrays
    tensors = list(images.batches(8, device="cpu"))
    assert all(isinstance(a, np.ndarray) for a in arrays) and all(t.device.type == "cpu" for t in tensors)
    assert np.array_equal(np.concatenate(arrays), memory.train_x.numpy())
    assert torch.equal(torch.cat(tensors), memory.train_x)
    assert [loader.pin_memory for loader in built] == [False, False]
    to_gpu = images.batches(8, device=torch.device("cuda", 0))
    if torch.cuda.is_available():
        assert next(to_gpu).is_cuda
    else:  # the loader is chosen first; the copy then finds no GPU
        with pytest.raises(RuntimeError):
            next(to_gpu)
    assert built[-1].pin_memory and isinstance(built[-1].collate_fn([]), torch.Tensor), "only tensors are pinned"
    assert pins_memory(torch.device("cuda", 0)) and not pins_memory(torch.device("cpu")) and not pins_memory(None)


#: Runs under torchrun: the same pretraining of the image folder, in memory and streamed.
TORCHRUN_SCRIPT = """
import sys
from pathlib import Path

from ftdeploy.data import load_data
from ftdeploy.profiles import load_target
from ftdeploy.training.config import TrainConfig
from ftdeploy.training.loop import train

spec, out = sys.argv[1], Path(sys.argv[2])
config = TrainConfig(model="democnn", image_size={side}, method="pretrain", epochs=2, lr=0.05, batch_size=8, device="cpu")
for name, stream in (("memory", False), ("streamed", True)):
    train(config, load_data(spec, 9, {side}, stream=stream), load_target("paper-diff8")[0], out / name)
"""


def test_a_streamed_torchrun_pretraining_is_the_in_memory_one(spec, tmp_path):
    """Two processes (gloo on the CPU), each decoding only its share of every batch of 8, over
    two epochs of one persistent loader: the weights and the log of the in-memory run, to the
    bit. The last batch, of one image, leaves process 1 none: it still takes the step with the
    other (its gradient zero), and its loss stays a number."""
    script = tmp_path / "run.py"
    script.write_text(TORCHRUN_SCRIPT.format(side=SIDE))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), spec,
           str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    a, b = (load_checkpoint(tmp_path / name / "model.pt") for name in ("memory", "streamed"))
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert _log(tmp_path / "memory") == _log(tmp_path / "streamed") and len(_log(tmp_path / "memory")) == 2


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
