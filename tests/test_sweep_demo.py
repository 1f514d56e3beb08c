"""The sweep (Table I grid: train, evaluate, tabulate, resume) and the demo command."""

import dataclasses
import json
import math
import shutil

import pytest
import torch
from typer.testing import CliRunner

from conftest import demo_profile_with
from ftdeploy.cli import app
from ftdeploy.errors import ConfigError, ModelError
from ftdeploy.data import load_data
from ftdeploy.profiles import load_profile
from ftdeploy.sweep import SweepSettings, plan, render_markdown, run_sweep, signoff_screen
from ftdeploy.training.checkpoint import load_checkpoint
from ftdeploy.training.config import TrainConfig
from ftdeploy.training.loop import train

TEST_RATES = [0.0, 0.02, 0.05]


@pytest.fixture(scope="module")
def small_data():
    full = load_data()
    # strided: the embedded set is sorted by class
    return dataclasses.replace(full, train_x=full.train_x[::6], train_y=full.train_y[::6],
                               val_x=full.val_x[::3], val_y=full.val_y[::3])  # fmt: skip


@pytest.fixture(scope="module")
def pretrained(small_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("pre")
    resolved = load_profile("demo")
    train(TrainConfig(model="democnn", method="pretrain", epochs=2, lr=0.05, batch_size=64, device="cpu"),
          small_data, resolved.target, out)  # fmt: skip
    return out / "model.pt"


def _settings(pretrained, epochs=1):
    recipe = TrainConfig(method="one-shot", epochs=epochs, lr=0.01, batch_size=64, device="cpu")
    return SweepSettings(pretrained=pretrained, profile=load_profile("demo"), test_rates=TEST_RATES, chips=3, seed=0,
                         recipe=recipe, data_spec=None, val_split=None, ss_rates=(0.02,))  # fmt: skip


def _with_recipe(settings, **fields):
    """``settings`` retraining otherwise: ``fields`` changed in the shared recipe."""
    return dataclasses.replace(settings, recipe=settings.recipe.model_copy(update=fields))


def test_plan_rejects_unknown_methods():
    assert [c.key for c in plan(["one-shot", "progressive"], [0.05])] == ["baseline", "one-shot-0.05", "progressive-0.05"]
    with pytest.raises(Exception, match="--methods"):
        plan(["annealed"], [0.05])


def test_sweep_trains_evaluates_tabulates_and_resumes(pretrained, small_data, tmp_path):
    logs = []
    table = run_sweep(_settings(pretrained), ["one-shot", "progressive"], [0.05], tmp_path, small_data, log=logs.append)
    assert [r["model"] for r in table["rows"]] == ["baseline", "one-shot P^T=0.05", "progressive P^T=0.05"]
    base = table["rows"][0]
    assert base["acc_defect"]["0"] == pytest.approx(table["acc_pretrain"])
    assert base["acc_defect"]["0.05"] < base["acc_defect"]["0"], "faults must hurt the baseline"
    for row in table["rows"]:
        ss = row["ss"]["0.02"]
        expected = row["acc_clean"] / (table["acc_pretrain"] - row["acc_defect"]["0.02"])
        assert math.isinf(ss) or ss == pytest.approx(expected)
    for name in ("table.json", "table.csv", "table.md"):
        assert (tmp_path / name).is_file()
    assert json.loads((tmp_path / "table.json").read_text())["rows"][1]["model"] == "one-shot P^T=0.05"
    assert (table["seed"], table["train_seed"]) == (0, 0), "chips and trainings: the profile's seed"
    assert "| progressive P^T=0.05 |" in render_markdown(table)
    # The demo profile's one limit is at P = 0.01, which this grid does not test.
    assert {r["signoff_screen"]["verdict"] for r in table["rows"]} == {"untested"}
    md = render_markdown(table)
    assert "Sign-off limits: profile demo's (max_acc_drop_pct 10 at P=0.01), applied to the 3 chips" in md
    head, _, *body = md.split("\n\n")[0].splitlines()
    assert head == "| model | 0 | 0.02 | 0.05 | SS@0.02 | sign-off limits |"
    assert all(line.count("|") == head.count("|") for line in body), "every row fills every column"
    untested_ss = render_markdown({**table, "ss_rates": ["0.01", "0.02"]}).splitlines()[0]
    assert untested_ss == head, "an SS rate the grid did not test gets no column"
    assert load_checkpoint(tmp_path / "runs" / "progressive-0.05" / "model.pt")["schedule"] == [0.05]  # 1 epoch: the target

    # An interruption after training, before evaluating one row: the rerun evaluates it, retrains nothing.
    (tmp_path / "results" / "one-shot-0.05.json").unlink()
    (tmp_path / "table.json").unlink()
    mtime = (tmp_path / "runs" / "one-shot-0.05" / "model.pt").stat().st_mtime_ns
    logs.clear()
    again = run_sweep(_settings(pretrained), ["one-shot", "progressive"], [0.05], tmp_path, small_data, log=logs.append)
    assert (tmp_path / "runs" / "one-shot-0.05" / "model.pt").stat().st_mtime_ns == mtime
    assert not any(line.startswith("[sweep] training") for line in logs), logs
    assert again["rows"] == table["rows"], "same chips, same models: same table"

    # A row measured otherwise is stale: other chips, or a checkpoint trained further since.
    logs.clear()
    more_chips = dataclasses.replace(_settings(pretrained), chips=4)
    run_sweep(more_chips, ["one-shot", "progressive"], [0.05], tmp_path, small_data, log=logs.append)
    assert sum("evaluating again" in line for line in logs) == 3, logs
    assert len(json.loads((tmp_path / "results" / "baseline.json").read_text())["tests"]["0.05"]["chips"]) == 4
    ckpt_path = tmp_path / "runs" / "one-shot-0.05" / "model.pt"
    ckpt = load_checkpoint(ckpt_path)
    ckpt["state_dict"] = {k: v * 0.5 if v.dtype.is_floating_point else v for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, ckpt_path)
    logs.clear()
    run_sweep(more_chips, ["one-shot", "progressive"], [0.05], tmp_path, small_data, log=logs.append)
    assert [line.split(":")[0] for line in logs if "evaluating again" in line] == ["[sweep] one-shot P^T=0.05"]


def _result(clean, chips_by_rate):
    """A results file's figures: clean accuracy and every chip's accuracy per test rate."""
    return {"acc_clean": clean, "tests": {rate: {"chips": accs} for rate, accs in chips_by_rate.items()}}


def test_the_table_screens_each_model_with_the_verifiers_judgement_of_the_profiles_limits(pretrained, tmp_path):
    """Each row says whether the profile's sign-off limits hold on the sweep's chips: the
    verifier's own judge on the figures the sweep measured (drop from the baseline's clean
    accuracy, stability score, lower CI bound), untested where the grid lacks a rate or a chip."""
    profile = demo_profile_with(tmp_path, signoff={"min_acc_retrain_pct": 80.0, "acceptance": [
        {"rate": 0.01, "max_acc_drop_pct": 3.0}, {"rate": 0.02, "min_stability": 5.0, "min_acc_defect_lower_ci_pct": 70.0}]})
    settings = dataclasses.replace(_settings(pretrained), profile=load_profile(profile))
    acc_pretrain = 90.0
    passing = _result(89.0, {"0.01": [88.0, 87.5, 87.0], "0.02": [80.0, 81.0, 79.0]})  # drop 2.5; SS 89/10; CI ≈ 77.5
    assert signoff_screen(settings, passing, acc_pretrain) == {"verdict": "PASS", "failed": []}
    dropped = _result(89.0, {"0.01": [86.0, 87.0, 87.0], "0.02": [80.0, 81.0, 79.0]})  # drop 3.33
    assert signoff_screen(settings, dropped, acc_pretrain) == {"verdict": "FAIL", "failed": ["max_acc_drop_pct@0.01"]}
    spread = _result(79.0, {"0.01": [88.0, 87.5, 87.0], "0.02": [95.0, 80.0, 65.0]})  # clean below 80; CI reaches 42.7
    assert signoff_screen(settings, spread, acc_pretrain) == {
        "verdict": "FAIL", "failed": ["min_acc_retrain_pct", "min_acc_defect_lower_ci_pct@0.02"]}
    assert signoff_screen(settings, _result(89.0, {"0.01": [88.0, 87.0]}), acc_pretrain) == {
        "verdict": "untested", "why": "not tested at P=0.02"}
    one_chip = dataclasses.replace(settings, chips=1)
    assert signoff_screen(one_chip, _result(89.0, {"0.01": [88.0], "0.02": [80.0]}), acc_pretrain)["verdict"] == "untested"
    # No limit at all: nothing to fail, as the verifier's verdict says.
    bare = dataclasses.replace(settings, profile=load_profile(demo_profile_with(tmp_path, "bare.yaml", signoff={"acceptance": []})))
    assert signoff_screen(bare, _result(10.0, {}), acc_pretrain) == {"verdict": "PASS", "failed": []}


def test_sweep_continues_a_cell_cut_short_mid_training(pretrained, small_data, tmp_path, monkeypatch):
    """A cell interrupted after epoch 1 of 2 (an accelerator window closing) continues from that
    epoch when the sweep is rerun: its first epoch is kept, not trained again."""
    import ftdeploy.training.loop as tr  # the loop saves through its own name for save_atomic

    settings = _settings(pretrained, epochs=2)
    cell = plan(["one-shot"], [0.05])[1]
    run_dir = tmp_path / "runs" / cell.key
    original = tr.save_atomic

    def stop_after_first_epoch(obj, path):
        original(obj, path)
        if path.name == "model.pt":
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(tr, "save_atomic", stop_after_first_epoch)
        with pytest.raises(KeyboardInterrupt):
            train(settings.train_config(cell), small_data, settings.profile.target, run_dir,
                  init=load_checkpoint(pretrained))  # fmt: skip
    first = json.loads((run_dir / "log.jsonl").read_text())
    run_sweep(settings, ["one-shot"], [0.05], tmp_path, small_data, log=lambda line: None)
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[0] == first, "epoch 1 (its timing included) is the interrupted run's, not a retraining's"
    # The log tells the history although this sweep trained in-process (no train.log).
    assert [r.get("started") for r in rows] == ["fresh", "resumed exactly"]
    assert load_checkpoint(run_dir / "model.pt")["epochs_done"] == 2


def test_two_sweeps_sharing_a_folder_leave_one_table_with_both_grids(pretrained, small_data, tmp_path):
    """Two grids trained into one folder (say, one training rate per CPU lane) make one table, in
    rate order; a row measured on other chips, or whose checkpoint changed since, stays out."""
    quiet = dict(log=lambda line: None)
    settings = _settings(pretrained)
    run_sweep(settings, ["progressive"], [0.05], tmp_path, small_data, **quiet)
    table = run_sweep(settings, ["one-shot"], [0.02], tmp_path, small_data, **quiet)
    assert [r["model"] for r in table["rows"]] == ["baseline", "one-shot P^T=0.02", "progressive P^T=0.05"]
    assert json.loads((tmp_path / "table.json").read_text())["rows"] == table["rows"]
    alone = run_sweep(settings, ["progressive"], [0.05], tmp_path / "alone", small_data, **quiet)
    assert table["rows"][2] == alone["rows"][1], "the same model on the same chips: the same row"

    no_train = dataclasses.replace(settings, train=False)
    other_recipe = run_sweep(_with_recipe(no_train, lr=0.02), ["one-shot"], [0.1], tmp_path, small_data, **quiet)
    assert [r["model"] for r in other_recipe["rows"]] == ["baseline"], "the other rows were trained otherwise"
    more_chips = run_sweep(dataclasses.replace(no_train, chips=4), ["one-shot"], [0.02], tmp_path, small_data, **quiet)
    assert [r["model"] for r in more_chips["rows"]] == ["baseline", "one-shot P^T=0.02"], "other chips"
    assert len(run_sweep(no_train, ["one-shot"], [0.02], tmp_path, small_data, **quiet)["rows"]) == 3, "as before"
    changed = tmp_path / "runs" / "progressive-0.05" / "model.pt"
    changed.write_bytes((tmp_path / "runs" / "one-shot-0.02" / "model.pt").read_bytes())
    stale = run_sweep(no_train, ["one-shot"], [0.02], tmp_path, small_data, **quiet)
    assert [r["model"] for r in stale["rows"]] == ["baseline", "one-shot P^T=0.02"], "checkpoint changed since"
    # An archive keeps results, not retrained checkpoints: restored, its rows stay as measured.
    restored = tmp_path / "restored"
    shutil.copytree(tmp_path / "alone", restored)
    (restored / "runs" / "progressive-0.05" / "model.pt").unlink()
    beside = run_sweep(settings, ["one-shot"], [0.02], restored, small_data, **quiet)
    assert [r["model"] for r in beside["rows"]] == ["baseline", "one-shot P^T=0.02", "progressive P^T=0.05"]
    assert beside["rows"][2] == alone["rows"][1], "the archived row, as it was measured"


def test_a_folder_holding_a_run_trained_otherwise_is_refused_before_any_work(pretrained, small_data, tmp_path):
    """A cell's run trained with another recipe or training seed, finished or cut short, would be
    kept (or resumed) and tabulated as this grid's: the sweep refuses it in one line, and leaves
    the folder as it was."""
    quiet = dict(log=lambda line: None)
    run_sweep(_settings(pretrained), ["one-shot"], [0.05], tmp_path, small_data, **quiet)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    run_dir = tmp_path / "runs" / "one-shot-0.05"
    for changed, differ in [(dict(seed=1), "seed: 0 there, 1 now"), (dict(clean_steps=0.5), "clean_steps: 0.0 there, 0.5 now")]:
        for trains in (True, False):
            settings = dataclasses.replace(_with_recipe(_settings(pretrained), **changed), train=trains)
            with pytest.raises(ConfigError) as exc:
                run_sweep(settings, ["one-shot"], [0.05], tmp_path, small_data, **quiet)
            assert str(exc.value) == f"{run_dir}: a run of one-shot P^T=0.05 trained otherwise ({differ}); " \
                                     "use another --out, or this run's settings"
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == before
    again = run_sweep(_with_recipe(_settings(pretrained), eval_chips=0), ["one-shot"], [0.05], tmp_path, small_data, **quiet)
    assert [r["model"] for r in again["rows"]] == ["baseline", "one-shot P^T=0.05"], "how closely epochs are checked may differ"


def test_the_training_seed_is_the_chip_seed_unless_train_seed_is_typed(pretrained, small_data, tmp_path, monkeypatch):
    """Another training seed on the same chips: how much of a row is one training's luck."""
    import ftdeploy.data
    import ftdeploy.sweep

    seen = []

    def capture(settings, *args, **kwargs):
        seen.append((settings.seed, settings.recipe.seed))
        raise KeyboardInterrupt  # the settings are all this test needs

    monkeypatch.setattr(ftdeploy.data, "load_data", lambda spec=None, val_split=None, image_size=32, stream=None: small_data)
    monkeypatch.setattr(ftdeploy.sweep, "run_sweep", capture)
    sweep = ["sweep", "--from", str(pretrained), "--profile", "demo", "--out", str(tmp_path / "s")]
    for extra in ([], ["--chip-seed", "4"], ["--train-seed", "2"], ["--chip-seed", "4", "--train-seed", "2"]):
        CliRunner().invoke(app, [*sweep, *extra])
    assert seen == [(0, 0), (4, 4), (0, 2), (4, 2)]
    result = CliRunner().invoke(app, [*sweep, "--train-seed", "-1"])
    assert result.exit_code == 2 and "--train-seed" in result.output


def test_trainings_do_not_wait_for_evaluations(pretrained, small_data, tmp_path, monkeypatch):
    """The baseline's evaluation is held until a training has finished: a sweep that evaluated in
    its scheduling loop would wait forever here (the timeout turns that into a failure)."""
    import threading

    import ftdeploy.sweep as sw

    trained = threading.Event()
    seen_trained_first = []
    real_train, real_evaluate = sw.train, sw.evaluate_cells

    def train_then_signal(*args, **kwargs):
        result = real_train(*args, **kwargs)
        trained.set()
        return result

    def evaluate_after_a_training(s, cells, *args, **kwargs):
        if cells[0].method == "baseline":
            seen_trained_first.append(trained.wait(timeout=120))
        return real_evaluate(s, cells, *args, **kwargs)

    monkeypatch.setattr(sw, "train", train_then_signal)
    monkeypatch.setattr(sw, "evaluate_cells", evaluate_after_a_training)
    table = run_sweep(_settings(pretrained), ["one-shot"], [0.05], tmp_path, small_data, log=lambda line: None)
    assert seen_trained_first == [True]
    assert [r["model"] for r in table["rows"]] == ["baseline", "one-shot P^T=0.05"]


def test_an_evaluation_error_reaches_the_caller(pretrained, small_data, tmp_path, monkeypatch):
    import ftdeploy.sweep as sw

    def broken(*args, **kwargs):
        raise sw.ModelError("checkpoint unreadable")

    monkeypatch.setattr(sw, "evaluate_cells", broken)
    settings = dataclasses.replace(_settings(pretrained), train=False)
    with pytest.raises(sw.ModelError, match="unreadable"):
        run_sweep(settings, ["one-shot"], [0.05], tmp_path, small_data, log=lambda line: None)


def test_a_cell_trains_with_the_same_config_in_process_or_in_its_own_process(pretrained, small_data, tmp_path, monkeypatch):
    """--jobs 1 trains each cell in the sweep's process, --jobs N in `ftdeploy train` processes:
    the process must train the very config the in-process path uses (the per-epoch chip check
    once differed: 3 chips in a process of its own, none in-process). It gets that config as a
    file in the run folder (train --config), not as options rebuilt from it."""
    import ftdeploy.data
    import ftdeploy.training.loop
    from ftdeploy.sweep import _train_command

    settings = _with_recipe(_settings(pretrained), eval_chips=2, distill=0.5, rate_warmup_epochs=1.5, unbias_faults=True,
                            clean_steps=0.25, scale_grad="detach", seed=3, progressive_blocks="each")
    cell = plan(["progressive"], [0.05])[1]
    argv = _train_command(settings, cell, tmp_path / "run")
    assert argv[1:3] == ["-m", "ftdeploy"] and argv[argv.index("--config") + 1] == str(tmp_path / "run" / "cell-config.yaml")
    assert not {"--epochs", "--lr", "--train-seed", "--eval-chips"} & set(argv)
    seen = []
    monkeypatch.setattr(ftdeploy.data, "load_data", lambda spec=None, val_split=None, image_size=32, stream=None: small_data)
    monkeypatch.setattr(ftdeploy.training.loop, "train", lambda config, *a, **k: seen.append(config) or load_checkpoint(pretrained))
    result = CliRunner().invoke(app, argv[3:])
    assert result.exit_code == 0, result.output
    assert seen == [settings.train_config(cell)]


def test_the_sweep_retrains_with_the_profiles_recipe_unless_an_option_is_typed(pretrained, small_data, tmp_path, monkeypatch):
    import ftdeploy.data
    import ftdeploy.sweep

    profile = demo_profile_with(tmp_path, training=dict(unbias_faults=True, bn="train", rate_warmup_epochs=1.0))
    recipes = []

    def capture(settings, *args, **kwargs):
        recipes.append(settings.recipe)
        raise KeyboardInterrupt  # the settings are all this test needs

    monkeypatch.setattr(ftdeploy.data, "load_data", lambda spec=None, val_split=None, image_size=32, stream=None: small_data)
    monkeypatch.setattr(ftdeploy.sweep, "run_sweep", capture)
    sweep = ["sweep", "--from", str(pretrained), "--profile", profile, "--out", str(tmp_path / "s")]
    CliRunner().invoke(app, sweep)
    CliRunner().invoke(app, [*sweep, "--raw-faults", "--bn", "frozen"])
    assert [(r.unbias_faults, r.bn, r.rate_warmup_epochs) for r in recipes] == [(True, "train", 1.0), (False, "frozen", 1.0)]


def test_the_sweep_command_names_the_models_that_pass_the_screen_and_how_to_sign_them_off(pretrained, small_data, tmp_path,
                                                                                          monkeypatch):  # fmt: skip
    import ftdeploy.data

    monkeypatch.setattr(ftdeploy.data, "load_data", lambda spec=None, val_split=None, image_size=32, stream=None: small_data)
    def sweep(name, limit):
        profile = demo_profile_with(tmp_path, name, signoff={"rates": [0.02], "acceptance": [{"rate": 0.02, **limit}]})
        result = CliRunner().invoke(app, ["sweep", "--from", str(pretrained), "--profile", profile, "--no-train", "--chips", "2",
                                          "--test-rates", "0,0.02", "--out", str(tmp_path / f"sweep-{name}")])  # fmt: skip
        assert result.exit_code == 0, result.output
        return result.output, profile

    output, profile = sweep("lax.yaml", {"max_acc_drop_pct": 100.0})
    assert f"passes the screen: baseline; sign off with: ftdeploy export {pretrained} --profile {profile}" in output
    output, _ = sweep("strict.yaml", {"min_stability": 1000.0})
    assert "FAIL: min_stability@0.02 |" in output and "no model passes profile demo's sign-off limits" in output


def test_a_passing_row_kept_from_an_archive_says_its_checkpoint_is_gone_rather_than_naming_it(pretrained, tmp_path):
    from ftdeploy.cli import screen_pass_lines

    gone = tmp_path / "runs" / "one-shot-0.05" / "model.pt"
    lines = screen_pass_lines([("baseline", pretrained), ("one-shot P^T=0.05", gone)], "demo")
    assert lines[0].startswith(f"passes the screen: baseline; sign off with: ftdeploy export {pretrained} --profile demo")
    assert lines[1] == (f"passes the screen: one-shot P^T=0.05; its checkpoint {gone} is not in the folder (a row kept from "
                        "an archive): retrain it to sign it off")  # fmt: skip


def test_a_sweep_trains_progressive_cells_on_the_profiles_list_where_it_names_one(pretrained, tmp_path):
    profile = load_profile(demo_profile_with(tmp_path, training=dict(target_rate=0.05, progressive_rates=[0.01, 0.05])))
    settings = dataclasses.replace(_settings(pretrained), profile=profile)
    at_05, at_1 = (settings.train_config(c) for c in plan(["progressive"], [0.05, 0.1])[1:])
    assert at_05.progressive_rates == [0.01, 0.05] and at_1.progressive_rates == [0.02, 0.05, 0.1]


def test_a_cell_is_finished_when_its_whole_run_is(pretrained):
    """With progressive blocks of their own, a progressive cell runs --epochs per rate: its
    checkpoint is finished only after all of them (else a rerun would take a first block for
    the model)."""
    settings = _with_recipe(_settings(pretrained, epochs=2), progressive_blocks="each")
    one_shot, progressive = plan(["one-shot", "progressive"], [0.05])[1:]
    assert settings.run_epochs(one_shot) == 2 and settings.run_epochs(progressive) == 6
    assert _settings(pretrained, epochs=2).run_epochs(progressive) == 2


def test_an_interrupted_sweep_stops_the_trainings_it_started(pretrained, small_data, tmp_path, monkeypatch):
    import subprocess

    import ftdeploy.sweep as sw

    started = []
    real_popen = subprocess.Popen

    def recording_popen(*args, **kwargs):
        started.append(real_popen(*args, **kwargs))
        return started[-1]

    def interrupt(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(sw.subprocess, "Popen", recording_popen)
    monkeypatch.setattr(sw.time, "sleep", interrupt)  # Ctrl-C right after both trainings started
    settings = _settings(pretrained)
    with pytest.raises(KeyboardInterrupt):
        sw.train_cells(settings, plan(["one-shot", "progressive"], [0.05]), tmp_path, small_data, jobs=2, log=lambda line: None)
    assert len(started) == 2 and all(p.poll() is not None for p in started), "no training left running unwatched"


def test_an_interrupted_sweep_stops_its_evaluation_at_the_next_chip(pretrained, small_data, tmp_path, monkeypatch):
    """Ctrl-C or SIGTERM while a row is being measured: the evaluator's thread stops after the
    chip in measurement and is gone when the sweep returns (a thread still inside torch at exit
    aborted the process: exit -6, "terminate called without an active exception"); the row it
    stopped in has no results file, so the rerun measures it."""
    import threading

    import ftdeploy.sweep as sw

    measuring, chips_measured = threading.Event(), []
    real_evaluate = sw.evaluate_cells

    def evaluate_slowly(s, cells, out, data, log, on_chip=None):
        def chip():
            measuring.set()
            chips_measured.append(1)
            on_chip()

        return real_evaluate(s, cells, out, data, log, on_chip=chip)

    def interrupt_once_measuring(*args, **kwargs):
        assert measuring.wait(timeout=120)
        raise KeyboardInterrupt

    monkeypatch.setattr(sw, "evaluate_cells", evaluate_slowly)
    monkeypatch.setattr(sw, "train", interrupt_once_measuring)
    settings = dataclasses.replace(_settings(pretrained), chips=50)  # many chips: the row is mid-way when stopped
    with pytest.raises(KeyboardInterrupt):
        run_sweep(settings, ["one-shot"], [0.05], tmp_path, small_data, log=lambda line: None)
    assert not any(t.name == "sweep-evaluator" and t.is_alive() for t in threading.enumerate())
    assert len(chips_measured) < 50 * (len(settings.test_rates) - 1), "stopped mid-row, not after it"
    assert not (tmp_path / "results" / "baseline.json").exists(), "the row it stopped in is left out, not half-written"


def test_a_stopped_evaluator_measures_no_row_submitted_before_the_stop():
    import threading

    from ftdeploy.sweep import Cell, _BackgroundEvaluator

    seen, started = [], threading.Event()

    def evaluate(cell, on_chip):
        seen.append(cell.key)
        started.set()
        while True:  # a row of endless chips: only the stop ends it
            on_chip()

    evaluator = _BackgroundEvaluator(evaluate)
    evaluator.submit(Cell("baseline", None))
    evaluator.submit(Cell("one-shot", 0.05))
    assert started.wait(timeout=10)
    evaluator.stop()
    assert seen == ["baseline"], "the queued row is dropped"
    evaluator.finish()  # after a stop, finishing is a no-op: nothing to report


def test_sweep_cli_bad_input_exits_2(tmp_path, pretrained):
    runner = CliRunner()
    result = runner.invoke(app, ["sweep", "--from", str(tmp_path / "missing.pt"), "--profile", "demo", "--out", str(tmp_path / "s")])
    assert result.exit_code != 0
    assert not (tmp_path / "s").exists(), "bad input must not leave an output folder"
    (tmp_path / "junk.pt").write_text("not a checkpoint\n")
    result = runner.invoke(app, ["sweep", "--from", str(tmp_path / "junk.pt"), "--profile", "demo", "--out", str(tmp_path / "s")])
    assert isinstance(result.exception, ModelError) and "not a loadable checkpoint" in str(result.exception)
    assert not (tmp_path / "s").exists(), "a file that is no checkpoint must not leave an output folder"
    result = runner.invoke(app, ["sweep", "--from", str(pretrained), "--profile", "demo", "--bn", "sometimes",
                                 "--out", str(tmp_path / "s")])  # fmt: skip
    assert result.exit_code != 0 and not (tmp_path / "s").exists()
    # each message names the option the user typed (TrainConfig's field is rate_warmup_epochs)
    for option, value in (("--clean-steps", "1.5"), ("--distill", "2"), ("--rate-warmup", "-1"), ("--test-rates", "0.1,0.05"),
                          ("--train-rates", "0.05,x"), ("--chips", "0"), ("--max-images", "0"), ("--jobs", "0"), ("--epochs", "0"),
                          ("--device", "cuda:99"), ("--ss-rates", "0.03")):  # fmt: skip
        result = runner.invoke(app, ["sweep", "--from", str(pretrained), "--profile", "demo", option, value,
                                     "--out", str(tmp_path / "s")])  # fmt: skip
        # the entry point (cli.main) turns a ConfigError into one line and exit code 2
        assert isinstance(result.exception, ConfigError) and not (tmp_path / "s").exists(), result.output
        assert str(result.exception).startswith(f"{option}: ") and "\n" not in str(result.exception)
    assert str(result.exception) == "--ss-rates: 0.03 not among --test-rates (0,0.001,0.005,0.01,0.02,0.05,0.1)"
