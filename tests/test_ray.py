"""verify --ray and sweep --ray: chips spread over Ray workers give the report, or the results
and table, a single process writes, to the byte. One local Ray cluster (two CPUs) for the
module: starting Ray costs seconds."""

from __future__ import annotations

import json
import signal
import sys

import pytest

from ftdeploy.cli import _record_signature
from ftdeploy.data import load_data
from ftdeploy.distributed import MISSING_RAY, RayChips, split_range
from ftdeploy.errors import ConfigError
from ftdeploy.export import export_onnx
from ftdeploy.profiles import load_profile
from ftdeploy.report import write_report
from ftdeploy.signing import onnx_signature
from ftdeploy.sweep import Cell, SweepSettings, evaluate_cells
from ftdeploy.training.config import TrainConfig
from ftdeploy.training.checkpoint import load_checkpoint
from ftdeploy.verify import verify_onnx

from _quick_model import quick_checkpoint
from conftest import run_main

#: Read noise too: a per-inference chip draws afresh per batch of images, so a worker must use the
#: driver's batch size for chip k to stay chip k.
PROFILE = """\
name: raytest
target: paper-diff8
faults:
  - kind: stuck-at
    p_sa: 0.01
  - kind: read-noise
    sigma_rel: 0.02
signoff:
  rates: [0.0, 0.02]
  chips: 5
  batch_chips: 2
  seed: 3
  max_images: 60
  acceptance:
    - rate: 0.02
      min_acc_defect_pct: 0.0
"""


def test_ranges_are_contiguous_in_order_and_cover_every_chip():
    assert split_range(4, 11, 3) == [(4, 7), (7, 9), (9, 11)]
    assert split_range(0, 2, 4) == [(0, 1), (1, 2)]
    for start, stop, parts in [(0, 1, 1), (3, 20, 4), (0, 100, 7)]:
        ranges = split_range(start, stop, parts)
        assert [i for lo, hi in ranges for i in range(lo, hi)] == list(range(start, stop))


def test_without_ray_installed_ray_is_refused_in_one_line(monkeypatch, capsys, tmp_path):
    """Before the file is even read: the line names the extra that installs Ray."""
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(ConfigError, match="ftdeploy\\[ray\\]"):
        verify_onnx(tmp_path / "absent.onnx", load_profile("demo"), ray="local")
    code, out, err = run_main(monkeypatch, capsys, "verify", tmp_path / "absent.onnx", "--profile", "demo", "--ray")
    assert code == 2 and err.strip() == f"error: {MISSING_RAY}", err


try:
    import ray
except ImportError:  # the tests above still run: they are what a user without Ray sees
    ray = None
needs_ray = pytest.mark.skipif(ray is None, reason="ray is not installed (pip install -e '.[test]' installs it)")


@pytest.fixture(scope="module")
def cluster():
    started = not ray.is_initialized()
    sigterm = signal.getsignal(signal.SIGTERM)  # ray.init installs its own, which outlives shutdown
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()
    signal.signal(signal.SIGTERM, sigterm)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(checkpoint path, resolved profile) of a quickly trained demo CNN."""
    folder = tmp_path_factory.mktemp("ray")
    (folder / "raytest.yaml").write_text(PROFILE)
    resolved = load_profile(folder / "raytest.yaml")
    return quick_checkpoint(load_data(None), resolved.target, folder), resolved


@pytest.fixture(scope="module")
def signed(trained):
    """(export path, resolved profile) of the quickly trained demo CNN."""
    ckpt, resolved = trained
    out = ckpt.parent / "model.onnx"
    export_onnx(load_checkpoint(ckpt), resolved, out)
    return out, resolved


def _report_bytes(report: dict, folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in write_report(report, folder) if p.suffix in (".json", ".md", ".xml")}


@needs_ray
def test_ray_report_is_byte_identical_to_one_process(cluster, signed, tmp_path):
    """Two workers, chips in batches of 2 (looks at 2, 4, 5 chips: ranges of one and two chips),
    read noise drawn per batch of images: every figure of the report is the single process's."""
    onnx_path, resolved = signed
    alone = verify_onnx(onnx_path, resolved)
    spread = verify_onnx(onnx_path, resolved, ray="local", ray_workers=2)
    assert spread["figures"]["rates"][1]["chips"] >= 2
    assert _report_bytes(spread, tmp_path / "ray") == _report_bytes(alone, tmp_path / "alone")


@needs_ray
def test_cli_ray_without_an_address_uses_the_running_ray(cluster, signed, tmp_path, monkeypatch, capsys):
    """``--ray`` alone takes no value: the next option is not taken for an address."""
    onnx_path, resolved = signed
    code, out, err = run_main(monkeypatch, capsys, "verify", onnx_path, "--ray", "--profile", resolved.profile_path,
                              "--fixed-chips", "--out", tmp_path / "ray")  # fmt: skip
    assert code == 0, out + err
    alone = verify_onnx(onnx_path, resolved, sequential=False)
    _record_signature(alone, onnx_signature(onnx_path, None))  # what the CLI adds to every report
    written = (tmp_path / "ray" / "report.json").read_bytes()
    assert written == _report_bytes(alone, tmp_path / "alone")["report.json"]


def _sweep_args(ckpt, resolved, out) -> list:
    """A baseline-only sweep (--no-train) of the quick checkpoint: 5 chips in groups of 2 per rate."""
    return ["sweep", "--from", ckpt, "--profile", resolved.profile_path, "--out", out, "--no-train", "--chips", 5,
            "--chip-batch", 2, "--max-images", 60, "--test-rates", "0,0.02,0.05", "--device", "cpu"]  # fmt: skip


def _sweep_files(out) -> dict[str, bytes]:
    files = sorted([*out.glob("table.*"), *(out / "results").glob("*.json")])
    assert {p.name for p in files} == {"table.json", "table.md", "table.csv", "baseline.json"}
    return {str(p.relative_to(out)): p.read_bytes() for p in files}


@needs_ray
def test_sweep_on_ray_writes_the_results_and_table_of_one_process(cluster, trained, tmp_path, monkeypatch, capsys):
    """Two workers, 5 chips in groups of 2 per rate (rounds of 4 chips: ranges of 2, 2, then 1),
    read noise: results/baseline.json and table.{json,md,csv} are the single process's, to the
    byte. The single-process sweep runs with ray unimportable: without --ray it is never imported."""
    ckpt, resolved = trained
    rounds, closed = [], []
    measure, close = RayChips.measure, RayChips.close
    monkeypatch.setattr(RayChips, "measure", lambda self, *a, **k: rounds.append(a[3:5]) or measure(self, *a, **k))
    monkeypatch.setattr(RayChips, "close", lambda self: closed.append(len(self.actors)) or close(self))
    code, out, err = run_main(monkeypatch, capsys, *_sweep_args(ckpt, resolved, tmp_path / "ray"), "--ray", "--ray-workers", 2)
    assert code == 0, out + err
    assert rounds == [(0, 4), (4, 5)] * 3  # every rate's chips went to the workers (rate 0 too: its read noise)
    assert closed == [2]  # the row's two actors, released when it was done
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "ray", None)  # import ray raises ImportError
        code, out, err = run_main(monkeypatch, capsys, *_sweep_args(ckpt, resolved, tmp_path / "alone"))
    assert code == 0, out + err
    spread, alone = _sweep_files(tmp_path / "ray"), _sweep_files(tmp_path / "alone")
    assert len(json.loads(alone["results/baseline.json"])["tests"]["0.02"]["chips"]) == 5
    assert spread == alone


def test_sweep_ray_options_are_refused_in_one_line(trained, tmp_path, monkeypatch, capsys):
    """--ray-workers without --ray, and --ray without Ray installed: one line, exit 2, nothing written."""
    ckpt, resolved = trained
    code, out, err = run_main(monkeypatch, capsys, *_sweep_args(ckpt, resolved, tmp_path / "s"), "--ray-workers", 2)
    assert code == 2 and err.strip() == "error: --ray-workers: sets the workers of --ray; give --ray too", err
    monkeypatch.setitem(sys.modules, "ray", None)
    code, out, err = run_main(monkeypatch, capsys, *_sweep_args(ckpt, resolved, tmp_path / "s"), "--ray")
    assert code == 2 and err.strip() == f"error: {MISSING_RAY}", err
    assert not (tmp_path / "s").exists()


@needs_ray
def test_a_stopped_sweep_evaluation_releases_the_rows_workers(cluster, trained, tmp_path, monkeypatch):
    """The evaluator's stop check raising after the first round: the row is not written and its
    actors are killed, not left holding the cluster's CPUs."""
    ckpt, resolved = trained
    settings = SweepSettings(pretrained=ckpt, profile=resolved, test_rates=[0.02], chips=4, seed=0,
                             recipe=TrainConfig(method="one-shot", epochs=1, device="cpu"), data_spec=None, val_split=None,
                             max_images=60, ray="local", ray_workers=2)  # fmt: skip
    closed = []
    close = RayChips.close
    monkeypatch.setattr(RayChips, "close", lambda self: closed.append(len(self.actors)) or close(self))

    def stop():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate_cells(settings, [Cell("baseline", None)], tmp_path, load_data(None), log=lambda line: None, on_chip=stop)
    assert closed == [2] and not (tmp_path / "results" / "baseline.json").exists()
