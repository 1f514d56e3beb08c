"""The overhead benchmark still runs and writes its JSON. No timing is asserted: a unit test on a
shared box cannot tell a slow fault path from a busy neighbour (bench/README.md)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_train_overhead.py"
SEQUENTIAL_BENCH = BENCH.with_name("bench_sequential.py")


def _load_bench(path: Path = BENCH):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_bench_runs_every_kind_and_writes_json(tmp_path, capsys):
    bench = _load_bench()
    out = tmp_path / "bench.json"
    args = ["--model", "democnn", "--batch-size", "8", "--steps", "1", "--repeats", "2", "--warmup-steps", "1",
            "--device", "cpu", "--json", str(out)]  # fmt: skip
    assert bench.main(args) == 0
    result = json.loads(out.read_text())
    assert all(len(result["wall_s"][kind]) == 2 for kind in bench.KINDS)
    assert result["ratio"] > 0 and isinstance(result["meets_requirement"], bool)
    assert "distill" not in result["wall_s"] and result["distill_ratio"] is None
    assert result["fault_draw"] == "sparse", "the trainer's default draw"
    assert "RATIO faulty/plain" in capsys.readouterr().out


def test_bench_times_the_dense_draw_when_asked(tmp_path):
    bench = _load_bench()
    out = tmp_path / "bench.json"
    args = ["--model", "democnn", "--batch-size", "8", "--steps", "1", "--repeats", "1", "--warmup-steps", "1",
            "--device", "cpu", "--fault-draw", "dense", "--json", str(out)]  # fmt: skip
    assert bench.main(args) == 0
    assert json.loads(out.read_text())["fault_draw"] == "dense"


def test_bench_times_distillation_when_asked(tmp_path, capsys):
    bench = _load_bench()
    out = tmp_path / "bench.json"
    args = ["--model", "democnn", "--batch-size", "8", "--steps", "1", "--repeats", "2", "--warmup-steps", "1",
            "--device", "cpu", "--distill", "--json", str(out)]  # fmt: skip
    assert bench.main(args) == 0
    result = json.loads(out.read_text())
    assert len(result["wall_s"]["distill"]) == 2 and result["distill_ratio"] > 0
    assert "DISTILL ratio distill/faulty" in capsys.readouterr().out


def test_sequential_bench_compares_chips_drawn_with_the_fixed_count(tmp_path, capsys):
    """--quick: a briefly trained model, 20 chips per rate in batches of 5. Both cases decide
    before the cap and agree with the fixed count's verdict: the ratios are ratios of real runs."""
    bench = _load_bench(SEQUENTIAL_BENCH)
    out = tmp_path / "bench.json"
    assert bench.main(["--quick", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    cases = {c["case"]: c for c in result["cases"]}
    assert set(cases) == {"clear-pass", "clear-fail"}
    for case in cases.values():
        assert case["chips_fixed"] == 2 * 20 and case["chips_sequential"] < case["chips_fixed"]
        assert case["chip_ratio"] == case["chips_sequential"] / case["chips_fixed"] and case["wall_ratio"] > 0
        assert case["verdict_sequential"] is case["verdict_fixed"]
    assert cases["clear-pass"]["verdict_fixed"] is True and cases["clear-fail"]["verdict_fixed"] is False
    assert "RATIO chips sequential/fixed" in capsys.readouterr().out


def test_programming_bench_times_one_chip_against_reading_the_export(tmp_path, capsys):
    """--quick: democnn, 2 chips. Every timing is measured and the ratios are of real runs."""
    bench = _load_bench(BENCH.with_name("bench_programming.py"))
    out = tmp_path / "bench.json"
    assert bench.main(["--quick", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert all(len(values) == 2 for values in result["wall_s"].values())
    assert result["ratio_program_to_read"] > 0 and isinstance(result["meets_goal"], bool)
    assert result["weights_with_stuck_cells_median"] > 0
    assert isinstance(result["meets_goal_permuted"], bool)
    assert all(p <= u for p, u in zip(result["residual_codes"]["permuted"], result["residual_codes"]["unpermuted"]))
    printed = capsys.readouterr().out
    assert "ftdeploy program --permute-rows" in printed and "RATIO ftdeploy program / read export" in printed


def test_streaming_bench_measures_peak_memory_at_two_folder_sizes(tmp_path, capsys):
    """--quick: 40 and 400 images, streamed, each signed off in a fresh process. No memory goal
    is asserted (a shared box's allocator varies); the figures are of real sign-offs."""
    bench = _load_bench(BENCH.with_name("bench_streaming.py"))
    out = tmp_path / "bench.json"
    assert bench.main(["--quick", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [(r["folder_images"], r["stream"]) for r in result["rows"]] == [(40, True), (400, True)]
    assert [r["images"] for r in result["rows"]] == [40, 400]
    assert all(r["peak_rss_mib"] > 0 for r in result["rows"]) and result["ratio_streamed"] > 0
    assert "RATIO peak RSS 400/40 images, streamed" in capsys.readouterr().out


def test_streaming_bench_measures_a_training_epoch_at_two_folder_sizes(tmp_path, capsys):
    """--training --quick: one epoch of a pretraining on 40 and 400 images, streamed, each in a
    fresh process."""
    bench = _load_bench(BENCH.with_name("bench_streaming.py"))
    out = tmp_path / "bench.json"
    assert bench.main(["--quick", "--training", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["work"] == "training epoch" and [r["images"] for r in result["rows"]] == [40, 400]
    assert all(r["peak_rss_mib"] > 0 and len(r["weights_sha256"]) == 16 for r in result["rows"])
    assert "RATIO peak RSS 400/40 images, streamed training epoch" in capsys.readouterr().out


def test_signoff_bench_measures_every_ratio_and_never_fakes_the_gpu_campaign(tmp_path, capsys):
    """--quick: democnn, 64 random images, 4 chips. Each ratio is of real runs; batched chips are
    the one-at-a-time chips; the campaign is run only on a GPU, and says so otherwise."""
    bench = _load_bench(BENCH.with_name("bench_signoff.py"))
    out = tmp_path / "bench.json"
    assert bench.main(["--quick", "--device", "cpu", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["a_chip_over_plain"]["ratio"] > 0 and len(result["a_chip_over_plain"]["wall_s"]["chip"]) == 2
    b = result["b_batched_over_single"]
    assert b["speedup"] > 0 and b["device"] == "cpu" and b["goal"] is None and b["max_accuracy_difference_pct"] <= 100 / 64
    assert result["c_campaign"] is None and result["d_train_epoch"]["ratio"] > 0
    printed = capsys.readouterr().out
    assert "not run: no GPU" in printed and "RATIO batched / one-at-a-time" in printed
