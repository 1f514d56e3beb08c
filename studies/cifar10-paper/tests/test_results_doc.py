"""The study's pages RESULTS.md (the study issue 3 is answered on, led by the tuned recipe),
RESULTS-plain-recipe.md (the first study on the paper-tracking target) and RESULTS-diff8-folded.md
(the first grid, on the BatchNorm-folded chip) are exactly what scripts/render_results.py makes of
the archived artefacts in results/ (all beside tests/, in studies/cifar10-paper): no figure in them
is typed by hand. The scripts that made and render them are tested here too."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ftdeploy.profiles import RetrainingRecipe, load_profile

#: studies/cifar10-paper: the study's pages, scripts/ and results/ (its archive).
STUDY = Path(__file__).resolve().parents[1]
#: The tuned recipe's grid, the one issue 3's limits are met with, leads the page of its study.
TUNED_GRID = "clean-steps-0.75-weight-clip-2-progressive-each"
#: page -> (archived study it is rendered from, the pages it links to, the grid it leads with)
PAGES = {
    "RESULTS.md": ("c10c", ("RESULTS-plain-recipe.md", "RESULTS-diff8-folded.md"), TUNED_GRID),
    "RESULTS-plain-recipe.md": ("c10p", ("RESULTS.md", "RESULTS-diff8-folded.md"), None),
    "RESULTS-diff8-folded.md": ("c10", ("RESULTS.md", "RESULTS-plain-recipe.md"), None),
}


@pytest.mark.parametrize("page", sorted(PAGES))
def test_results_page_is_rendered_from_the_archived_artefacts(page, tmp_path):
    study, others, headline = PAGES[page]
    out = tmp_path / page
    see_also = [arg for other in others for arg in ("--see-also", other)]
    subprocess.run([sys.executable, str(STUDY / "scripts" / "render_results.py"), str(STUDY / "results" / study),
                    "-o", str(out), *see_also, *(("--headline", headline) if headline else ())],
                   check=True, capture_output=True)  # fmt: skip
    assert out.read_text() == (STUDY / page).read_text()
    text = out.read_text()
    for section in ("## Table I (ours)", "## What the issue asked for", "## Training curves", *(f"]({o})" for o in others)):
        assert section in text


def test_a_page_leads_with_the_grid_it_is_told_to_and_refuses_a_folder_without_a_section(tmp_path):
    """--headline FOLDER puts that grid's own rows and criteria ahead of Table I and names the
    section that repeats them; a folder with no section is one clear line, and no page is written."""
    script, study = STUDY / "scripts" / "render_results.py", STUDY / "results" / "c10c"
    page = subprocess.run([sys.executable, str(script), str(study), "-o", str(tmp_path / "p.md"), "--headline", TUNED_GRID],
                          capture_output=True, text=True)  # fmt: skip
    assert page.returncode == 0, page.stderr
    text = (tmp_path / "p.md").read_text()
    lead = text.index(f"## The recipe this page leads with (`{TUNED_GRID}`)")
    assert lead < text.index("## Table I (ours)")
    section = next(line[3:] for line in text.splitlines() if line.startswith("## The `clean-steps-0.75-weight-clip-2` grid with"))
    assert f'The section "{section}" repeats these rows' in text[lead:text.index("## Table I (ours)")]
    bad = subprocess.run([sys.executable, str(script), str(study), "-o", str(tmp_path / "q.md"), "--headline", "pretrain"],
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and not (tmp_path / "q.md").exists()
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()] and "--headline pretrain" in bad.stderr
    assert TUNED_GRID in bad.stderr, "the message lists the folders that would do"


def _script(name: str):
    """The study's scripts/NAME.py loaded as a module (the scripts are not a package)."""
    import importlib.util

    if str(STUDY / "scripts") not in sys.path:  # as running scripts/NAME.py has it: the probes share probe_common
        sys.path.insert(0, str(STUDY / "scripts"))
    spec = importlib.util.spec_from_file_location(name, STUDY / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_two_invocations_sharing_a_run_folder_keep_each_others_steps(tmp_path):
    """The dense grid on one machine and the pruned one beside it write one manifest: each
    invocation merges its own steps in, so neither erases the other's command lines."""
    import json

    reproduce = _script("reproduce_cifar10")
    dense, pruned = reproduce.Runner(tmp_path), reproduce.Runner(tmp_path)
    dense.append("_invocations", "python reproduce --only dense")
    pruned.append("_invocations", "python reproduce --only pruned")
    assert dense("sweep-dense", ["models"])  # a real, quick ftdeploy command
    assert pruned("sweep-pruned", ["models"])
    dense.save()  # the dense invocation saves last, knowing nothing of the pruned step
    steps = json.loads((tmp_path / "manifest.json").read_text())["steps"]
    assert steps["sweep-dense"]["returncode"] == 0 and steps["sweep-pruned"]["returncode"] == 0
    assert steps["_invocations"] == ["python reproduce --only dense", "python reproduce --only pruned"]
    assert len(steps["_environments"]) == 2


def test_a_step_run_again_keeps_its_earlier_attempts(tmp_path):
    """A step stopped (or failed) and run again: the manifest and its log keep every attempt,
    and the rendered command line says what came before the run whose figures it gives."""
    import json

    reproduce, render = _script("reproduce_cifar10"), _script("render_results")
    run = reproduce.Runner(tmp_path)
    assert not run("sweep-dense", ["models", "--no-such-option"])  # exit 2
    assert reproduce.Runner(tmp_path)("sweep-dense", ["models"])  # a later invocation, from the manifest on disk
    step = json.loads((tmp_path / "manifest.json").read_text())["steps"]["sweep-dense"]
    assert step["returncode"] == 0 and step["command"] == "ftdeploy models"
    assert [(a["command"], a["returncode"]) for a in step["earlier"]] == [("ftdeploy models --no-such-option", 2)]
    log = (tmp_path / "logs" / "sweep-dense.log").read_text()
    assert "attempt 1" in log and "No such option" in log and "attempt 2" in log and "tv:NAME" in log
    line, = render.command_lines({"steps": {"sweep-dense": step}}, ["sweep-dense"])
    assert line.endswith(f"exit 0; before: exit 2 after {step['earlier'][0]['seconds']:.0f} s (as `ftdeploy models --no-such-option`)")
    assert "before" not in render.command_lines({"steps": {"s": {**step, "earlier": []}}}, ["s"])[0]


def test_a_study_reuses_an_earlier_studys_fault_free_models_and_says_so(tmp_path):
    import json

    reproduce = _script("reproduce_cifar10")
    earlier, study = tmp_path / "earlier", tmp_path / "study"
    (earlier / "pretrain").mkdir(parents=True)
    (earlier / "pretrain" / "model.pt").write_bytes(b"pretrained weights")
    (earlier / "pretrain" / "log.jsonl").write_text("{}\n")
    made = {"command": "ftdeploy train --method pretrain --out earlier/pretrain", "returncode": 0, "seconds": 93.0}
    (earlier / "manifest.json").write_text(json.dumps({"steps": {"pretrain": made}}))
    (earlier / "baseline-chen2015" / "results").mkdir(parents=True)
    (earlier / "baseline-chen2015" / "results" / "baseline.json").write_text("{}")
    run = reproduce.Runner(study)
    reproduce.reuse_fault_free_models(run, earlier)
    assert (study / "pretrain" / "log.jsonl").is_file(), "the whole run folder is copied"
    assert (study / "baseline-chen2015" / "results" / "baseline.json").is_file(), "measurements come as a cache"
    step = json.loads((study / "manifest.json").read_text())["steps"]["pretrain"]
    assert step["command"] == made["command"] and step["reused_from"] == str(earlier)
    assert "prune" not in json.loads((study / "manifest.json").read_text())["steps"], "no pruned model to reuse"
    assert run("pretrain", ["models"], done=study / "pretrain" / "model.pt"), "a reused step is not run again"
    assert json.loads((study / "manifest.json").read_text())["steps"]["pretrain"]["reused_from"] == str(earlier)

    second = tmp_path / "second"  # reusing the study's archive: the model still comes from `earlier`
    reproduce.reuse_fault_free_models(reproduce.Runner(second), study)
    assert json.loads((second / "manifest.json").read_text())["steps"]["pretrain"]["reused_from"] == str(earlier)

    other = tmp_path / "other"
    (other / "pretrain").mkdir(parents=True)
    (other / "pretrain" / "model.pt").write_bytes(b"another model")
    reproduce.reuse_fault_free_models(reproduce.Runner(other), earlier)
    assert (other / "pretrain" / "model.pt").read_bytes() == b"another model", "a study's own model is never replaced"
    assert not (other / "manifest.json").exists(), "nothing reused, nothing recorded"


def test_a_study_restored_from_its_own_archive_keeps_its_steps_as_made_there(tmp_path):
    """`--out runs/X --reuse studies/cifar10-paper/results/X` (the study's own archive) copies its models back;
    the pretraining and pruning were made by this study, so they are not recorded as reused."""
    import json

    reproduce = _script("reproduce_cifar10")
    archive, study = tmp_path / "archive", tmp_path / "study"
    made = {"command": f"ftdeploy train --method pretrain --out {study / 'pretrain'} --resume", "returncode": 0, "seconds": 93.0}
    # as the earlier code recorded such a restore: reused from the study's own archive
    mislabelled = {"command": f"ftdeploy prune x --out {study / 'pruned70'} --resume", "returncode": 0, "seconds": 50.0,
                   "reused_from": str(archive)}
    for folder in ("pretrain", "pruned70"):
        (archive / folder).mkdir(parents=True)
        (archive / folder / "model.pt").write_bytes(folder.encode())
    (archive / "manifest.json").write_text(json.dumps({"steps": {"pretrain": made, "prune": mislabelled}}))
    reproduce.reuse_fault_free_models(reproduce.Runner(study), archive)
    steps = json.loads((study / "manifest.json").read_text())["steps"]
    assert "reused_from" not in steps["pretrain"] and "reused_from" not in steps["prune"]
    assert steps["pretrain"]["seconds"] == 93.0 and steps["prune"]["command"] == mislabelled["command"]
    assert reproduce.made_in(made, study / "pretrain") and not reproduce.made_in(made, tmp_path / "other" / "pretrain")
    assert not reproduce.made_in({"command": None}, study / "pretrain")
    relative = {"command": f"ftdeploy train --out {os.path.relpath(study / 'pretrain')}"}
    assert reproduce.made_in(relative, study / "pretrain"), "typed relative, compared as the same folder"


def test_a_study_restored_from_its_own_archive_goes_on_with_the_archives_manifest(tmp_path):
    """Restored into an empty folder, the study keeps the archive's record (every step, every
    invocation); from another study's archive, or into a folder with a manifest, it does not."""
    reproduce = _script("reproduce_cifar10")
    archive, study = tmp_path / "archive", tmp_path / "study"
    steps = {"pretrain": {"command": f"ftdeploy train --out {study / 'pretrain'}", "returncode": 0},
             "baseline-chen2015": {"command": "ftdeploy sweep --out base", "returncode": 0},
             "_invocations": ["python reproduce --only baselines"], "_environments": [{"device": "CPU"}]}
    archive.mkdir()
    (archive / "manifest.json").write_text(json.dumps({"steps": steps}))
    reproduce.restore_own_manifest(archive, tmp_path / "other")  # another study's archive: nothing to go on with
    assert not (tmp_path / "other" / "manifest.json").exists()
    reproduce.restore_own_manifest(archive, study)
    run = reproduce.Runner(study)
    run.append("_invocations", "python reproduce --only collapse")
    run.record("collapse-chips-100:pretrain", {"command": "ftdeploy sweep --out c", "returncode": 0})
    kept = json.loads((study / "manifest.json").read_text())["steps"]
    assert kept["baseline-chen2015"] == steps["baseline-chen2015"] and "collapse-chips-100:pretrain" in kept
    assert kept["_invocations"] == ["python reproduce --only baselines", "python reproduce --only collapse"]
    (study / "manifest.json").write_text(json.dumps({"steps": {}}))
    reproduce.restore_own_manifest(archive, study)
    assert json.loads((study / "manifest.json").read_text()) == {"steps": {}}, "a folder's own manifest is never replaced"


def test_the_parts_of_a_grid_each_keep_their_command_line():
    render = _script("render_results")
    steps = {"sweep-dense": {"command": "ftdeploy sweep --train-rates 0.05", "returncode": 0, "seconds": 10.0},
             "sweep-dense:progressive@0.1": {"command": "ftdeploy sweep --train-rates 0.1", "returncode": 0, "seconds": 20.0},
             "sweep-densest": {"command": "not a part", "returncode": 0, "seconds": 1.0}}  # fmt: skip
    lines = render.command_lines({"steps": steps}, ["sweep-dense"])
    assert [line.split("    #")[0].strip() for line in lines] == ["ftdeploy sweep --train-rates 0.05", "ftdeploy sweep --train-rates 0.1"]


def test_stopping_the_study_stops_its_running_step_and_records_it(tmp_path):
    """What the accelerator deadline does (SIGTERM to reproduce_cifar10.py): the running ftdeploy
    command ends as on Ctrl-C (exit 130, its epochs saved), the manifest says so, no step starts."""
    import json
    import threading
    import time

    reproduce = _script("reproduce_cifar10")
    run = reproduce.Runner(tmp_path)
    out = tmp_path / "pre"
    argv = ["train", "--profile", "demo", "--method", "pretrain", "--epochs", "200", "--batch-size", "256",
            "--device", "cpu", "--out", str(out)]  # fmt: skip
    result = []
    worker = threading.Thread(target=lambda: result.append(run("pretrain", argv)))
    worker.start()
    deadline = time.monotonic() + 240
    while not (out / "model.pt").is_file():  # an epoch saved (its log row comes before its checkpoint)
        assert worker.is_alive() and time.monotonic() < deadline
        time.sleep(0.5)
    run.stop()
    worker.join(timeout=120)
    assert result == [False]
    step = json.loads((tmp_path / "manifest.json").read_text())["steps"]["pretrain"]
    assert step["returncode"] == 130
    assert "interrupted: completed epochs are saved" in (tmp_path / "logs" / "pretrain.log").read_text()
    assert run("next", ["models"]) is False and "next" not in json.loads((tmp_path / "manifest.json").read_text())["steps"]


def test_ctrl_c_and_sigterm_stop_the_study_as_the_deadline_does(tmp_path):
    """Ctrl-C (SIGINT) and SIGTERM each call the runner's stop, which ends the running steps and
    starts no more, instead of a KeyboardInterrupt traceback in the middle of the study."""
    import os
    import signal

    reproduce = _script("reproduce_cifar10")
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for signum in previous:
            signal.signal(signum, lambda *_: None)  # without stop_on_signals's handler, a plain failure below
            run = reproduce.Runner(tmp_path)
            reproduce.stop_on_signals(run)
            os.kill(os.getpid(), signum)  # handled in the main thread before kill returns here
            assert run.stopped, signal.Signals(signum).name
            assert run("next", ["models"]) is False
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def test_evaluate_only_tabulates_each_sweep_with_the_options_it_was_trained_with(tmp_path):
    """--evaluate-only reads the same sweep definitions as training: the distillation weight,
    the long branch's epochs, the pruned model and its rates all carry over, and only the folders
    that hold runs (of the --only branches) are tabulated."""
    reproduce = _script("reproduce_cifar10")
    for folder in ("pretrain", "pruned70"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "model.pt").write_bytes(b"weights")
    for folder in ("dense", "distill", "pruned", "dense-long", "unbiased", "clean-steps", "progressive-each"):
        (tmp_path / folder / "runs").mkdir(parents=True)
    options = ["--out", str(tmp_path), "--epochs", "7", "--long-epochs", "30", "--distill", "0.7", "--chips", "3"]
    trained = reproduce.parse_args([*options, "--methods", "progressive", "--train-rates", "0.05"])
    evaluated = reproduce.parse_args([*options, "--evaluate-only"])
    steps = {folder: argv for _, folder, argv in reproduce.evaluation_steps(evaluated)}
    assert sorted(steps) == ["clean-steps", "dense", "dense-long", "distill", "progressive-each", "pruned", "unbiased"], \
        "no runs, no tabulation"

    def option(argv, name):
        return argv[argv.index(name) + 1]

    for branch in reproduce.sweep_branches(trained, "progressive", "0.05"):
        if branch.folder not in steps:
            continue
        train_argv, eval_argv = branch.argv(trained), steps[branch.folder]
        assert "--no-train" in eval_argv and "--no-train" not in train_argv
        for name in ("--from", "--epochs", "--chips", "--lr", "--profile"):
            assert option(eval_argv, name) == option(train_argv, name), (branch.folder, name)
        assert [a for a in train_argv if a.startswith("--")] == [a for a in eval_argv if a != "--no-train" and a.startswith("--")]
    assert option(steps["distill"], "--distill") == "0.7"
    assert "--unbias-faults" in steps["unbiased"] and "--unbias-faults" not in steps["dense"]
    assert option(steps["clean-steps"], "--clean-steps") == "0.5" and "--clean-steps" not in steps["unbiased"]
    assert option(steps["progressive-each"], "--progressive-blocks") == "each" and "--progressive-blocks" not in steps["dense"]
    assert option(steps["dense-long"], "--epochs") == "30" and option(steps["dense"], "--epochs") == "7"
    assert option(steps["pruned"], "--from") == str(tmp_path / "pruned70" / "model.pt")
    assert option(steps["pruned"], "--train-rates") == "0.05,0.1" and option(steps["dense"], "--train-rates") == "0.01,0.05,0.1"
    only_dense = reproduce.parse_args([*options, "--evaluate-only", "--only", "dense"])
    assert [folder for _, folder, _ in reproduce.evaluation_steps(only_dense)] == ["dense"]


def test_each_baseline_step_measures_on_its_own_profile_with_the_studys_other_options(tmp_path):
    reproduce = _script("reproduce_cifar10")
    args = reproduce.parse_args(["--out", str(tmp_path), "--profile", "strict", "--chips", "4", "--max-images", "300"])
    dense = next(b for b in reproduce.sweep_branches(args, *reproduce.FULL_GRID) if b.branch == "dense").argv(args)
    steps = dict(reproduce.baseline_steps(args, tmp_path / "pretrain" / "model.pt"))
    assert sorted(steps) == [f"baseline-{p}" for p in reproduce.BASELINE_PROFILES]
    for name, argv in steps.items():
        assert argv.count("--profile") == 1 and argv[argv.index("--profile") + 1] == name.removeprefix("baseline-")
        for option in ("--data", "--chips", "--max-images", "--test-rates", "--batch-size"):
            assert argv[argv.index(option) + 1] == dense[dense.index(option) + 1], (name, option)


def test_a_runs_history_is_read_from_its_log_and_else_from_its_train_log(tmp_path):
    render = _script("render_results")
    rows = [{"epoch": 1, "started": "fresh"}, {"epoch": 2}, {"epoch": 3, "started": "resumed from weights"},
            {"epoch": 4, "started": "resumed exactly"}]  # fmt: skip
    missing = tmp_path / "train.log"
    assert render.run_history(rows, missing) == "resumed after epoch 2 (weights only); resumed after epoch 3 (exact)"
    assert render.run_history(rows[:2], missing) == "one run"
    assert render.run_history([{"epoch": 1}], missing) == "–", "an older in-process run: nothing to tell"
    missing.write_text("epoch 1\nresuming after epoch 1 (from resume.pt: optimiser ...)\n")
    assert render.run_history([{"epoch": 1}, {"epoch": 2}], missing) == "resumed after epoch 1 (exact)"


def test_a_part_of_a_grid_is_a_step_named_for_what_it_trains(tmp_path):
    reproduce = _script("reproduce_cifar10")
    args = reproduce.parse_args(["--out", str(tmp_path), "--train-rates", "0.05,0.1"])
    names = {b.branch: b.step_name(whole_grid=False) for b in reproduce.sweep_branches(args, args.methods, args.train_rates)}
    assert names["dense"] == "sweep-dense:one-shot,progressive@0.05,0.1"
    assert names["pruned"] == "sweep-pruned:progressive@0.05,0.1", "the pruned grid trains progressive only"
    assert names["bn-train"] == "sweep-bn-train:one-shot,progressive@0.05,0.1", "a named grid is a part of the ablation"
    assert names["ablation-grad"] == "ablation-stuck-pass", "a fixed ablation is one step whatever the grid"
    assert {b.step_name(whole_grid=True) for b in reproduce.sweep_branches(args, *reproduce.FULL_GRID)} >= {"sweep-dense", "sweep-pruned"}


def test_the_machines_line_names_each_run_of_invocations_once():
    render = _script("render_results")
    gpu = {"device": "NVIDIA H200", "torch": "2.14.1", "python": "3.12.3"}
    cpu = {"device": "CPU (x86_64)", "torch": "2.14.1", "python": "3.11.7"}
    assert render.machines_line([cpu, cpu, cpu]) == "Machine, for every invocation above: CPU (x86_64) (torch 2.14.1, Python 3.11.7)."
    assert render.machines_line([gpu, cpu, cpu, gpu]) == (
        "Machines, by invocation above: 1: NVIDIA H200 (torch 2.14.1, Python 3.12.3); "
        "2-3: CPU (x86_64) (torch 2.14.1, Python 3.11.7); 4: NVIDIA H200 (torch 2.14.1, Python 3.12.3).")


def test_a_grid_from_another_training_seed_has_a_folder_and_a_section_of_its_own(tmp_path):
    """--train-seed N retrains a branch on the same chips into FOLDER-train-seed-N; the page gives
    it a section of its own beside the same grid's first seed, not a second section of that grid."""
    reproduce, render = _script("reproduce_cifar10"), _script("render_results")
    options = ["--out", str(tmp_path), "--only", "clean-steps-clip", "--clean-steps", "0.75", "--weight-clip", "2"]
    branch = next(b for b in reproduce.sweep_branches(reproduce.parse_args([*options, "--train-seed", "1"]), "one-shot", "0.05")
                  if b.branch == "clean-steps-clip")  # fmt: skip
    argv = branch.argv(reproduce.parse_args([*options, "--train-seed", "1"]))
    assert branch.folder == "clean-steps-0.75-weight-clip-2-train-seed-1" and argv[argv.index("--out") + 1] == str(tmp_path / branch.folder)
    assert argv[argv.index("--train-seed") + 1] == "1" and branch.step_name(False) == f"sweep-{branch.folder}:one-shot@0.05"
    plain = next(b for b in reproduce.sweep_branches(reproduce.parse_args(options), "one-shot", "0.05") if b.branch == "clean-steps-clip")
    assert plain.folder == "clean-steps-0.75-weight-clip-2" and "--train-seed" not in plain.argv(reproduce.parse_args(options))

    archived = STUDY / "results/c10c/clean-steps-0.75-weight-clip-2/table.json"
    for folder in ("clean-steps-0.75-weight-clip-2", branch.folder):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "table.json").write_text(archived.read_text())
    assert render.clean_steps_clip_folders(tmp_path) == ["clean-steps-0.75-weight-clip-2"]
    assert render.train_seed_folders(tmp_path) == [branch.folder]
    table = json.loads(archived.read_text())
    dense = json.loads((STUDY / "results/c10c/dense/table.json").read_text())
    section = render.train_seed_md(branch.folder, {**table, "train_seed": 1}, table, dense, {"steps": {}})
    assert section[0] == "## The `clean-steps-0.75-weight-clip-2` grid from training seed 1 (`--train-seed 1`)"
    models = [line.split(" | ")[0].lstrip("| ") for line in section if line.startswith("| one-shot P^T=0.05") and "±" in line]
    assert models == ["one-shot P^T=0.05", "one-shot P^T=0.05 (training seed 0)", "one-shot P^T=0.05 (Table I)"], models


def test_a_grid_with_algorithm_1_blocks_has_a_folder_and_a_section_beside_its_split_grid(tmp_path):
    """--progressive-blocks each retrains a branch as the paper's Algorithm 1 into
    FOLDER-progressive-each; the page lists it once, in a section of its own beside the same
    recipe's split grid, not among that recipe's grids (whose pattern its name also matches)."""
    reproduce, render = _script("reproduce_cifar10"), _script("render_results")
    options = ["--out", str(tmp_path), "--only", "clean-steps-clip", "--clean-steps", "0.75", "--weight-clip", "2"]
    args = reproduce.parse_args([*options, "--progressive-blocks", "each", "--train-seed", "1"])
    by_branch = {b.branch: b for b in reproduce.sweep_branches(args, "one-shot,progressive", "0.05")}
    branch, argv = by_branch["clean-steps-clip"], by_branch["clean-steps-clip"].argv(args)
    assert branch.folder == "clean-steps-0.75-weight-clip-2-progressive-each-train-seed-1", "the seed is the outer variant"
    assert argv[argv.index("--progressive-blocks") + 1] == "each" and argv[argv.index("--out") + 1] == str(tmp_path / branch.folder)
    assert by_branch["blocks-each"].folder == "progressive-each-train-seed-1", "the plain grid's Algorithm 1 branch keeps its folder"
    assert by_branch["blocks-each"].argv(args).count("--progressive-blocks") == 1
    with pytest.raises(SystemExit):
        reproduce.parse_args([*options, "--progressive-blocks", "all"])

    archived = STUDY / "results/c10c/clean-steps-0.75-weight-clip-2/table.json"
    split = json.loads(archived.read_text())
    each = {**split, "epochs": 12, "progressive_blocks": "each"}
    folder = "clean-steps-0.75-weight-clip-2-progressive-each"
    for name, table in (("clean-steps-0.75-weight-clip-2", split), (folder, each), ("progressive-each", each)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "table.json").write_text(json.dumps(table))
    assert render.blocks_each_folders(tmp_path) == [folder]
    assert render.clean_steps_clip_folders(tmp_path) == ["clean-steps-0.75-weight-clip-2"]
    assert render.clean_steps_folders(tmp_path) == [], "a clipped grid, with or without blocks, is not a clean-steps section"
    dense = json.loads((STUDY / "results/c10c/dense/table.json").read_text())
    section = render.blocks_each_md(folder, each, split, dense, {"steps": {}})
    assert section[0] == ("## The `clean-steps-0.75-weight-clip-2` grid with progressive as in the paper's Algorithm 1: "
                          "12 epochs at every rate (`--progressive-blocks each`)")
    models = [line.split(" | ")[0].lstrip("| ") for line in section if line.startswith("| one-shot P^T=0.05") and "±" in line]
    assert models == ["one-shot P^T=0.05", "one-shot P^T=0.05 (`clean-steps-0.75-weight-clip-2`, 25 epochs)",
                      "one-shot P^T=0.05 (Table I)"], models
    assert render.blocks_each_md(folder, {**each, "rows": [r for r in each["rows"] if r["method"] == "baseline"]},
                                 split, dense, {"steps": {}}) == [], "a grid with no retrained model gets no section"


def test_a_grid_of_another_length_has_a_folder_and_a_section_beside_algorithm_1(tmp_path):
    """--epochs-in-folder retrains a branch for --epochs into FOLDER-epochs-N (a run folder keeps
    its length); the page lists it once, in a section of its own whose criteria set its one-shot
    rows against the recipe's Algorithm-1 progressive rows, not among the recipe's grids."""
    reproduce, render = _script("reproduce_cifar10"), _script("render_results")
    options = ["--out", str(tmp_path), "--only", "clean-steps-clip", "--clean-steps", "0.75", "--weight-clip", "2", "--epochs", "36"]
    args = reproduce.parse_args([*options, "--epochs-in-folder"])
    branch = next(b for b in reproduce.sweep_branches(args, "one-shot", "0.05") if b.branch == "clean-steps-clip")
    argv = branch.argv(args)
    assert branch.folder == "clean-steps-0.75-weight-clip-2-epochs-36" and argv[argv.index("--out") + 1] == str(tmp_path / branch.folder)
    assert argv[argv.index("--epochs") + 1] == "36" and branch.step_name(False) == f"sweep-{branch.folder}:one-shot@0.05"
    plain = next(b for b in reproduce.sweep_branches(reproduce.parse_args(options), "one-shot", "0.05") if b.branch == "clean-steps-clip")
    assert plain.folder == "clean-steps-0.75-weight-clip-2"

    results = STUDY / "results/c10c"
    split = json.loads((results / "clean-steps-0.75-weight-clip-2/table.json").read_text())
    each = json.loads((results / "clean-steps-0.75-weight-clip-2-progressive-each/table.json").read_text())
    progressive = next(r for r in each["rows"] if r["model"] == "progressive P^T=0.05")
    # a one-shot model a point ahead of Algorithm 1's progressive at every test rate above 0
    ahead = {**progressive, "model": "one-shot P^T=0.05", "method": "one-shot", "epochs": 36, "epochs_done": 36,
             "acc_defect": {r: a + (1 if r != "0" else 0) for r, a in progressive["acc_defect"].items()}}
    long = {**each, "epochs": 36, "progressive_blocks": "split", "rows": [each["rows"][0], ahead]}
    for name, table in (("clean-steps-0.75-weight-clip-2", split), ("clean-steps-0.75-weight-clip-2-progressive-each", each),
                        (branch.folder, long)):  # fmt: skip
        (tmp_path / name).mkdir()
        (tmp_path / name / "table.json").write_text(json.dumps(table))
    assert render.epochs_variant_folders(tmp_path) == [branch.folder]
    assert render.clean_steps_clip_folders(tmp_path) == ["clean-steps-0.75-weight-clip-2"], "listed once, in its own section"
    assert render.blocks_each_folders(tmp_path) == ["clean-steps-0.75-weight-clip-2-progressive-each"]
    dense = json.loads((results / "dense/table.json").read_text())
    section = render.epochs_variant_md(branch.folder, long, split, each, dense, {"steps": {}})
    assert section[0] == "## The `clean-steps-0.75-weight-clip-2` grid retrained for 36 epochs per model (`--epochs 36 --epochs-in-folder`)"
    models = [line.split(" | ")[0].lstrip("| ") for line in section if line.startswith("| ") and "±" in line]
    assert models == ["baseline", "one-shot P^T=0.05", "one-shot P^T=0.05 (`clean-steps-0.75-weight-clip-2-progressive-each`)",
                      "progressive P^T=0.05 (`clean-steps-0.75-weight-clip-2-progressive-each`)",
                      "one-shot P^T=0.05 (`clean-steps-0.75-weight-clip-2`, 25 epochs)", "one-shot P^T=0.05 (Table I)"], models
    verdict = next(line for line in section if line.startswith("| P^T=0.05: progressive ≥ one-shot"))
    assert "progressive behind at 0.02, 0.05, 0.1" in verdict and verdict.endswith("| NOT met |"), verdict
    assert render.epochs_variant_md(branch.folder, {**long, "rows": long["rows"][:1]}, split, each, dense, {"steps": {}}) == [], \
        "a grid with no retrained model gets no section"
    alone = render.epochs_variant_md(branch.folder, long, None, each, dense, {"steps": {}})
    assert "None epochs" not in alone[2] and "first trained for" not in alone[2], "no grid of the study's length, no mention"
    assert "trained as long, the one-shot models here tell" in section[2]
    shorter = render.epochs_variant_md("clean-steps-0.75-weight-clip-2-epochs-25", {**long, "epochs": 25}, split, each, dense, {"steps": {}})
    assert "those ran 36 epochs, not 25" in shorter[2] and "trained as long" not in shorter[2], "as long only where it is"
    lead = render.headline_md("clean-steps-0.75-weight-clip-2-progressive-each", each, "its section", None, [section])
    assert lead[lead.index(verdict) - 4].startswith("One-shot trained as long as progressive (section \"The `clean-steps-0.75"), \
        "the headline quotes the control's verdict under its own"
    assert sum(line.startswith("| P^T=0.05: progressive ≥ one-shot") for line in lead) == 2


def test_a_clean_steps_grid_at_another_fraction_has_a_folder_and_a_section_of_its_own(tmp_path):
    """--clean-steps F trains into clean-steps-F (the F = 0.5 grid keeps clean-steps), evaluates
    from there, and the page gives each fraction its section, in ascending order."""
    reproduce, render = _script("reproduce_cifar10"), _script("render_results")
    (tmp_path / "pretrain").mkdir()
    (tmp_path / "pretrain" / "model.pt").write_bytes(b"weights")
    for fraction, folder in (("0.5", "clean-steps"), ("0.75", "clean-steps-0.75")):
        args = reproduce.parse_args(["--out", str(tmp_path), "--clean-steps", fraction, "--only", "clean-steps"])
        branch = next(b for b in reproduce.sweep_branches(args, *reproduce.FULL_GRID) if b.branch == "clean-steps")
        argv = branch.argv(args)
        assert branch.folder == folder and argv[argv.index("--out") + 1] == str(tmp_path / folder)
        assert argv[argv.index("--clean-steps") + 1] == fraction and branch.step_name(True) == f"sweep-{folder}"
        (tmp_path / folder / "runs").mkdir(parents=True)
        evaluated = reproduce.parse_args(["--out", str(tmp_path), "--clean-steps", fraction, "--only", "clean-steps", "--evaluate-only"])
        assert [(step, f) for step, f, _ in reproduce.evaluation_steps(evaluated)] == [(f"eval-{folder}", folder)]
    with pytest.raises(SystemExit):
        reproduce.parse_args(["--clean-steps", "1"])

    for fraction, folder in ((0.75, "clean-steps-0.75"), (0.5, "clean-steps"), (0.9, "clean-steps-0.9")):
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / "table.json").write_text(json.dumps({"clean_steps": fraction}))
    assert render.clean_steps_folders(tmp_path) == ["clean-steps", "clean-steps-0.75", "clean-steps-0.9"]


def test_a_run_with_blocks_of_its_own_plans_its_epochs_per_rate(tmp_path):
    """The curves say "stopped after epoch k of N" with N the whole run's epochs."""
    from ftdeploy.training.config import TrainConfig

    render = _script("render_results")
    for blocks, method, planned in (("each", "progressive", 6), ("split", "progressive", 2), ("each", "one-shot", 2)):
        config = TrainConfig(method=method, progressive_rates=[0.01, 0.02, 0.05], epochs=2, progressive_blocks=blocks)
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
        assert render._planned_epochs(tmp_path / "config.yaml") == planned == config.run_epochs
    assert render._planned_epochs(tmp_path / "missing.yaml") is None


def test_the_archive_keeps_the_fault_free_starting_models_and_nothing_heavier(tmp_path):
    """A run folder is not committed: the archive must carry what a later session needs to continue
    the study (the pretrained and pruned models), and no retrained checkpoint or resume file."""
    archive = _script("archive_results")
    run, kept = tmp_path / "run", tmp_path / "archived"
    for path in ("pretrain/model.pt", "pretrain/resume.pt", "pruned70/model.pt", "dense/runs/one-shot-0.05/model.pt",
                 "dense/runs/one-shot-0.05/resume.pt", "pretrain-eq/model.pt", "signoff/progressive-0.05.onnx",
                 "pretrain-seed-1/model.pt", "pretrain-seed-1/resume.pt", "pretrain-length-60/model.pt"):
        (run / path).parent.mkdir(parents=True, exist_ok=True)
        (run / path).write_bytes(b"weights")
    (run / "dense" / "runs" / "one-shot-0.05" / "log.jsonl").write_text("{}\n")
    (run / "manifest.json").write_text('{"steps": {}}')
    for seed, epochs_done in ((1, 30), (2, 1)):  # seed 2 stopped after its first epoch: its model.pt is no finished model
        (run / f"pretrain-seed-{seed}").mkdir(exist_ok=True)
        (run / f"pretrain-seed-{seed}" / "config.yaml").write_text("epochs: 30\n")
        (run / f"pretrain-seed-{seed}" / "log.jsonl").write_text("".join(f'{{"epoch": {e}}}\n' for e in range(1, epochs_done + 1)))
        (run / f"pretrain-seed-{seed}" / "model.pt").write_bytes(b"weights")
    (run / "collapse-chips-100" / "pretrain" / "results").mkdir(parents=True)
    for path in ("collapse-chips-100/pretrain/table.json", "collapse-chips-100/pretrain/results/baseline.json"):
        (run / path).write_text("{}")
    archive.main(str(run), str(kept))
    files = sorted(str(p.relative_to(kept)) for p in kept.rglob("*") if p.is_file())
    assert [f for f in files if not f.startswith("pretrain-seed-")] == [
        "collapse-chips-100/pretrain/results/baseline.json", "collapse-chips-100/pretrain/table.json",
        "dense/runs/one-shot-0.05/log.jsonl", "manifest.json", "pretrain-length-60/model.pt", "pretrain/model.pt", "pruned70/model.pt"]
    assert "pretrain-seed-1/model.pt" in files and "pretrain-seed-2/model.pt" not in files and "pretrain-seed-2/log.jsonl" in files


def test_archiving_a_study_restored_from_its_archive_keeps_the_archives_earlier_steps(tmp_path):
    """A study restored from its own archive starts a manifest holding only what it runs now;
    archiving it must not drop the commands of the figures the archive already holds."""
    archive = _script("archive_results")
    cpu, gpu = {"device": "CPU"}, {"device": "H200"}
    archived = {"baseline-chen2015": {"command": "ftdeploy sweep --out base", "returncode": 0},
                "pretrain": {"command": "ftdeploy train --old", "returncode": 0},
                "_invocations": ["python reproduce --only baselines", "python reproduce --only dense"],
                "_environments": [cpu, cpu]}
    restored = {"pretrain": {"command": "ftdeploy train --new", "returncode": 0},
                "sweep-weight-clip-2:one-shot@0.05": {"command": "ftdeploy sweep --out wc2", "returncode": 0},
                "_invocations": ["python reproduce --only weight-clip"], "_environments": [gpu]}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "manifest.json").write_text(json.dumps({"steps": restored}))
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "manifest.json").write_text(json.dumps({"steps": archived}))
    archive.main(str(tmp_path / "run"), str(tmp_path / "kept"))
    merged = json.loads((tmp_path / "kept" / "manifest.json").read_text())["steps"]
    assert merged["baseline-chen2015"] == archived["baseline-chen2015"]
    assert merged["pretrain"]["command"] == "ftdeploy train --new"  # the run folder's, where both have one
    assert merged["_invocations"] == [*archived["_invocations"], "python reproduce --only weight-clip"]
    assert merged["_environments"] == [cpu, cpu, gpu]
    # Archived again after one more invocation: the folder now continues the archive, nothing twice.
    grown = {**merged, "_invocations": [*merged["_invocations"], "python reproduce --only collapse"],
             "_environments": [*merged["_environments"], cpu]}
    assert archive.merge_manifests(merged, grown) == grown
    # A folder that repeats the archive's later invocations and adds its own: each once, in order.
    tail = {"_invocations": ["python reproduce --only weight-clip", "python reproduce --only seeds"], "_environments": [gpu, cpu]}
    assert archive.merge_manifests(merged, tail)["_invocations"] == [*merged["_invocations"], "python reproduce --only seeds"]


def test_every_commands_block_of_the_results_pages_names_its_commands():
    """A figure without the command that made it is not published: no section's "Commands:" is empty."""
    for page in PAGES:
        lines = (STUDY / page).read_text().splitlines()
        empty = [i + 1 for i, line in enumerate(lines) if line == "Commands:" and not lines[i + 2].startswith("    ")]
        assert not empty, f"{page}: empty Commands: blocks at lines {empty}"


def test_reusing_a_folder_without_a_pretrained_model_is_refused_before_anything_runs(tmp_path):
    """Else the study would pretrain anew while its command line says it started from another's."""
    reproduce = _script("reproduce_cifar10")
    with pytest.raises(SystemExit):
        reproduce.parse_args(["--out", str(tmp_path / "new"), "--reuse", str(tmp_path / "gone")])
    (tmp_path / "earlier" / "pretrain").mkdir(parents=True)
    (tmp_path / "earlier" / "pretrain" / "model.pt").write_bytes(b"weights")
    assert reproduce.parse_args(["--reuse", str(tmp_path / "earlier")]).reuse == tmp_path / "earlier"


def test_the_equalized_grid_retrains_from_the_equalized_pretrained_model(tmp_path):
    reproduce = _script("reproduce_cifar10")
    args = reproduce.parse_args(["--out", str(tmp_path), "--only", "equalized", "--train-rates", "0.05"])
    branch = next(b for b in reproduce.sweep_branches(args, args.methods, args.train_rates) if b.branch == "equalized")
    argv = branch.argv(args)
    assert argv[argv.index("--from") + 1] == str(tmp_path / reproduce.EQUALIZED / "model.pt")
    assert argv[argv.index("--out") + 1] == str(tmp_path / "equalized") and "--train-rates" in argv


def test_the_inverted_grid_retrains_the_pretrained_model_on_the_inverted_profile(tmp_path):
    reproduce = _script("reproduce_cifar10")
    args = reproduce.parse_args(["--out", str(tmp_path), "--only", "inverted", "--train-rates", "0.05"])
    branch = next(b for b in reproduce.sweep_branches(args, args.methods, args.train_rates) if b.branch == "inverted")
    argv = branch.argv(args)
    assert argv[argv.index("--profile") + 1] == reproduce.INVERTED_PROFILE == "chen2015-inverted"
    assert argv[argv.index("--from") + 1] == str(tmp_path / "pretrain" / "model.pt")
    assert argv[argv.index("--out") + 1] == str(tmp_path / "inverted")
    dense = next(b for b in reproduce.sweep_branches(args, args.methods, args.train_rates) if b.branch == "dense")
    assert dense.argv(args)[dense.argv(args).index("--profile") + 1] == "chen2015"


def test_the_baseline_collapse_is_checked_on_the_papers_mapping_only():
    """An inverted pair is meant not to collapse: the criterion stays the paper's."""
    render = _script("render_results")
    row = {"model": "baseline", "method": "baseline", "train_rate": None, "acc_clean": 86.0,
           "acc_defect": {"0.005": 80.0, "0.01": 75.0}}  # fmt: skip
    inverted = {"target": "paper-diff8-inverted", "target_config": {"mapping": "differential-inverted"},
                "acc_pretrain": 86.0, "rows": [row]}  # fmt: skip
    plain = dict(inverted, target="paper-diff8", target_config={"mapping": "differential"})
    assert not any("baseline collapses" in line for line in render.criteria(inverted))
    assert any("baseline collapses" in line and "`paper-diff8`" in line for line in render.criteria(inverted, [plain]))


def test_progressive_and_one_shot_are_not_compared_when_one_diverged():
    """Chance against chance would read as "progressive at least as good": a diverged model's
    comparison is marked not compared instead."""
    render = _script("render_results")
    rates = ["0", "0.005", "0.01", "0.02", "0.05"]

    def row(method, accs):
        return {"model": f"{method} P^T=0.05", "method": method, "train_rate": 0.05, "acc_clean": accs[0],
                "acc_defect": dict(zip(rates, accs))}  # fmt: skip

    def table(one, prog):
        return {"target": "paper-diff8", "target_config": {"mapping": "differential"}, "acc_pretrain": 86.0,
                "test_rates": rates, "rows": [row("one-shot", one), row("progressive", prog)]}  # fmt: skip

    [line] = [x for x in render.criteria(table([10.0] * 5, [10.0, 10.0, 10.1, 10.2, 10.2])) if "progressive ≥" in x]
    assert "not compared: a model diverged" in line and line.endswith("| – |")
    [line] = [x for x in render.criteria(table([82.0, 81.0, 80.5, 80.0, 78.0], [83.0, 82.0, 81.5, 81.0, 79.0])) if "progressive ≥" in x]
    assert line.endswith("| met |")


def test_the_weight_range_probe_reports_gain_crest_and_the_share_above_half_the_peak():
    probe = _script("probe_weight_ranges")
    weight = torch.tensor([[1.0, -1.0, 1.0, -1.0], [0.5, 0.0, 0.0, 0.0], [0.25, 0.25, -0.25, 0.25]])
    gain, crest, above = probe.layer_figures(weight)
    assert gain == 2.0  # channels peak at 1, 1/2 and 1/4 of the layer's peak
    assert crest == 1.0  # 1 and 1 (flat channels) and 2 (one spike): median 1
    assert above == pytest.approx(4 / 12)


def test_a_grid_retrained_at_another_learning_rate_has_a_folder_and_a_section_of_its_own(tmp_path):
    """--lr-study LR retrains the grid at peak learning rate LR into retrain-lr-LR (its only --lr
    is LR; every other sweep keeps --retrain-lr), evaluates from there, and the page gives each
    learning rate its section beside Table I, in ascending order."""
    reproduce, render = _script("reproduce_cifar10"), _script("render_results")
    (tmp_path / "pretrain").mkdir()
    (tmp_path / "pretrain" / "model.pt").write_bytes(b"weights")
    for lr, folder in (("0.1", "retrain-lr-0.1"), ("0.05", "retrain-lr-0.05")):
        args = reproduce.parse_args(["--out", str(tmp_path), "--retrain-lr", "0.02", "--lr-study", lr, "--only", "retrain-lr"])
        branches = {b.branch: b for b in reproduce.sweep_branches(args, *reproduce.FULL_GRID)}
        argv = branches["retrain-lr"].argv(args)
        assert branches["retrain-lr"].folder == folder and argv[argv.index("--out") + 1] == str(tmp_path / folder)
        assert argv.count("--lr") == 1 and argv[argv.index("--lr") + 1] == lr
        dense = branches["dense"].argv(args)
        assert dense[dense.index("--lr") + 1] == "0.02", "the other grids keep --retrain-lr"
        (tmp_path / folder / "runs").mkdir(parents=True)
        evaluated = reproduce.parse_args(["--out", str(tmp_path), "--lr-study", lr, "--only", "retrain-lr", "--evaluate-only"])
        assert [(step, f) for step, f, _ in reproduce.evaluation_steps(evaluated)] == [(f"eval-{folder}", folder)]
    with pytest.raises(SystemExit):
        reproduce.parse_args(["--lr-study", "0"])

    dense_table = {"lr": 0.02, "rows": [{"method": "baseline", "train_rate": None}]}
    for lr, folder in ((0.1, "retrain-lr-0.1"), (0.05, "retrain-lr-0.05")):
        (tmp_path / folder / "table.json").write_text(json.dumps({"lr": lr}))
    assert render.retrain_lr_folders(tmp_path) == ["retrain-lr-0.05", "retrain-lr-0.1"]
    assert render.retrain_lr_md("retrain-lr-0.1", {"lr": 0.1, "rows": [{"method": "baseline"}]}, dense_table,
                                {"steps": {}}) == [], "a grid with no retrained model gets no section"


def test_the_batchnorm_training_grid_takes_a_learning_rate_and_epochs_of_its_own(tmp_path):
    """bn-train retrains its ablation grid (P_sa^T 0.01, 0.05) unless a grid is named, at
    --retrain-lr into bn-train or at --bn-train-lr into bn-train-lr-LR, for --bn-train-epochs N
    into a folder ending -N-epochs; the page gives each its section beside Table I, in ascending
    order of learning rate, then epochs."""
    reproduce, render = _script("reproduce_cifar10"), _script("render_results")
    def bn_branch(*options):
        args = reproduce.parse_args(["--out", str(tmp_path), "--retrain-lr", "0.02", *options])
        branch = next(b for b in reproduce.sweep_branches(args, args.methods, args.train_rates) if b.branch == "bn-train")
        argv = branch.argv(args)
        return branch, {o: argv[argv.index(o) + 1] for o in ("--lr", "--bn", "--methods", "--train-rates", "--out")}

    branch, argv = bn_branch()
    assert (branch.folder, branch.step_name(True)) == ("bn-train", "sweep-bn-train")
    assert argv == {"--lr": "0.02", "--bn": "train", "--methods": "one-shot,progressive", "--train-rates": "0.01,0.05",
                    "--out": str(tmp_path / "bn-train")}
    branch, argv = bn_branch("--bn-train-lr", "0.1", "--methods", "one-shot", "--train-rates", "0.05")
    assert branch.step_name(False) == "sweep-bn-train-lr-0.1:one-shot@0.05"
    assert argv == {"--lr": "0.1", "--bn": "train", "--methods": "one-shot", "--train-rates": "0.05",
                    "--out": str(tmp_path / "bn-train-lr-0.1")}
    assert bn_branch("--bn-train-lr", "0.02")[0].folder == "bn-train", "the study's own rate is the plain folder"
    branch, argv = bn_branch("--epochs", "25", "--bn-train-epochs", "40", "--methods", "one-shot", "--train-rates", "0.05")
    assert (branch.folder, branch.epochs) == ("bn-train-40-epochs", 40)
    assert bn_branch("--bn-train-lr", "0.1", "--bn-train-epochs", "40")[0].folder == "bn-train-lr-0.1-40-epochs"
    assert bn_branch("--epochs", "25", "--bn-train-epochs", "25")[0].folder == "bn-train", "the study's own epochs too"
    for bad in (["--bn-train-lr", "-1"], ["--bn-train-epochs", "0"]):
        with pytest.raises(SystemExit):
            reproduce.parse_args(bad)

    dense = json.loads((STUDY / "results" / "c10c" / "dense" / "table.json").read_text())
    for lr, epochs, folder in ((0.1, 25, "bn-train-lr-0.1"), (0.02, 40, "bn-train-40-epochs"), (0.02, 25, "bn-train")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "table.json").write_text(json.dumps({**dense, "lr": lr, "epochs": epochs}))
    dense = {**dense, "lr": 0.02, "epochs": 25}
    assert render.bn_train_folders(tmp_path) == ["bn-train", "bn-train-40-epochs", "bn-train-lr-0.1"]
    plain = render.bn_train_md("bn-train", dense, dense, {"steps": {}})
    faster = render.bn_train_md("bn-train-lr-0.1", {**dense, "lr": 0.1}, dense, {"steps": {}})
    longer = render.bn_train_md("bn-train-40-epochs", {**dense, "epochs": 40}, dense, {"steps": {}}, bn_plain=dense)
    assert plain[0] == "## The grid with BatchNorm in training mode (`--bn train`)"
    assert "Same pretrained model, epochs, learning rate and chips as Table I;" in plain[2]
    assert faster[0] == "## The grid with BatchNorm in training mode at peak learning rate 0.1 (`--bn train --lr 0.1`)"
    assert "Same pretrained model, epochs and chips as Table I; peak learning rate 0.1 where Table I's is 0.02" in faster[2]
    assert longer[0] == "## The grid with BatchNorm in training mode for 40 epochs (`--bn train --epochs 40`)"
    assert "Same pretrained model, learning rate and chips as Table I; 40 retraining epochs where Table I's are 25" in longer[2]
    models = [line.split(" | ")[0] for line in longer if line.startswith("| one-shot P^T=0.05") and line.split(" | ")[1].isdigit()]
    assert models == ["| one-shot P^T=0.05", "| one-shot P^T=0.05 (BatchNorm in training mode, 25 epochs at lr 0.02)",
                      "| one-shot P^T=0.05 (Table I)"], "the longer run, the run at Table I's length, Table I's frozen run"
    assert any("one-shot P^T=0.05 (Table I)" in line for line in faster), "beside Table I's run of the same method and rate"
    assert render.bn_train_md("bn-train", {**dense, "rows": dense["rows"][:1]}, dense, {"steps": {}}) == [], \
        "a grid with no retrained model gets no section"


def test_a_grid_retrained_with_clipped_weights_has_a_folder_and_a_section_of_its_own(tmp_path):
    """--weight-clip K retrains the grid with `--weight-clip K` into weight-clip-K (no other sweep
    clips), and the page gives each K its section beside Table I, in ascending order."""
    reproduce, render = _script("reproduce_cifar10"), _script("render_results")
    for k, folder in (("3", "weight-clip-3"), ("2.5", "weight-clip-2.5")):
        args = reproduce.parse_args(["--out", str(tmp_path), "--weight-clip", k, "--only", "weight-clip"])
        branches = {b.branch: b for b in reproduce.sweep_branches(args, *reproduce.FULL_GRID)}
        argv = branches["weight-clip"].argv(args)
        assert branches["weight-clip"].folder == folder and argv[argv.index("--out") + 1] == str(tmp_path / folder)
        assert argv[argv.index("--weight-clip") + 1] == k
        assert all("--weight-clip" not in b.argv(args) for name, b in branches.items() if name not in ("weight-clip", "clean-steps-clip", "pruned-clean-steps-clip"))
    with pytest.raises(SystemExit):
        reproduce.parse_args(["--weight-clip", "0"])

    dense = json.loads((STUDY / "results" / "c10c" / "dense" / "table.json").read_text())
    for k, folder in ((3.0, "weight-clip-3"), (2.5, "weight-clip-2.5")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "table.json").write_text(json.dumps({**dense, "weight_clip": k}))
    assert render.weight_clip_folders(tmp_path) == ["weight-clip-2.5", "weight-clip-3"]
    section = render.weight_clip_md("weight-clip-3", {**dense, "weight_clip": 3.0}, dense, {"steps": {}})
    assert section[0] == "## Weights clipped to ± 3 standard deviations (`--weight-clip 3`)"
    assert any(line.startswith("| one-shot P^T=0.05 (Table I) |") for line in section), "beside Table I's run"
    assert render.weight_clip_md("weight-clip-3", {**dense, "rows": dense["rows"][:1]}, dense, {"steps": {}}) == [], \
        "a grid with no retrained model gets no section"


def test_fault_free_steps_with_clipped_weights_have_a_folder_and_a_section_beside_the_unclipped_grid(tmp_path):
    """--only clean-steps-clip trains with both options into clean-steps-F-weight-clip-K; the page
    gives it a section of its own (not the clean-steps one), with the same fraction's unclipped
    rows between it and Table I's."""
    reproduce, render = _script("reproduce_cifar10"), _script("render_results")
    args = reproduce.parse_args(["--out", str(tmp_path), "--clean-steps", "0.75", "--weight-clip", "2", "--only", "clean-steps-clip"])
    branch = next(b for b in reproduce.sweep_branches(args, *reproduce.FULL_GRID) if b.branch == "clean-steps-clip")
    argv = branch.argv(args)
    assert branch.folder == "clean-steps-0.75-weight-clip-2" and argv[argv.index("--out") + 1] == str(tmp_path / branch.folder)
    assert argv[argv.index("--clean-steps") + 1] == "0.75" and argv[argv.index("--weight-clip") + 1] == "2"
    assert "--unbias-faults" in argv, "the same faulty steps as the clean-steps grid it is compared with"

    dense = json.loads((STUDY / "results" / "c10c" / "dense" / "table.json").read_text())
    for folder, settings in (("clean-steps-0.75", {"clean_steps": 0.75}),
                             ("clean-steps-0.75-weight-clip-2", {"clean_steps": 0.75, "weight_clip": 2.0})):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "table.json").write_text(json.dumps({**dense, **settings}))
    assert render.clean_steps_folders(tmp_path) == ["clean-steps-0.75"], "the clipped grid is not a clean-steps section"
    assert render.clean_steps_clip_folders(tmp_path) == ["clean-steps-0.75-weight-clip-2"]
    clipped, unclipped = {**dense, "clean_steps": 0.75, "weight_clip": 2.0}, {**dense, "clean_steps": 0.75}
    section = render.clean_steps_clip_md(clipped, unclipped, dense, {"steps": {}}, "clean-steps-0.75-weight-clip-2")
    assert section[0] == ("## 0.75 of the steps fault-free and weights clipped to ± 2 standard deviations "
                          "(`--clean-steps 0.75 --weight-clip 2`, on unbiased chips)")
    rows = [line.split(" |")[0] for line in section if line.startswith("| progressive P^T=0.05")
            and ":" not in line.split(" |")[0]]  # the table's rows, not the criteria under it
    assert rows == ["| progressive P^T=0.05", "| progressive P^T=0.05 (0.75 of the steps fault-free, not clipped)",
                    "| progressive P^T=0.05 (Table I)"]
    alone = render.clean_steps_clip_md(clipped, None, dense, {"steps": {}}, "clean-steps-0.75-weight-clip-2")
    assert not any("not clipped" in line for line in alone), "without the unclipped grid, only Table I beside it"


def test_the_pruned_model_retrained_with_the_tuned_recipe_has_a_folder_and_a_section_beside_the_dense_one(tmp_path):
    """--only pruned-clean-steps-clip retrains the pruned model (pruned70) with both options into
    pruned-clean-steps-F-weight-clip-K; its section sets its rows between both baselines and the
    dense grid retrained with the same recipe."""
    reproduce, render = _script("reproduce_cifar10"), _script("render_results")
    args = reproduce.parse_args(["--out", str(tmp_path), "--clean-steps", "0.75", "--weight-clip", "2",
                                 "--only", "pruned-clean-steps-clip", "--methods", "one-shot", "--train-rates", "0.01,0.05"])  # fmt: skip
    branch = next(b for b in reproduce.sweep_branches(args, "one-shot", "0.01,0.05") if b.branch == "pruned-clean-steps-clip")
    argv = branch.argv(args)
    assert branch.folder == "pruned-clean-steps-0.75-weight-clip-2" and argv[argv.index("--out") + 1] == str(tmp_path / branch.folder)
    assert argv[argv.index("--from") + 1] == str(tmp_path / "pruned70" / "model.pt")
    assert argv[argv.index("--clean-steps") + 1] == "0.75" and argv[argv.index("--weight-clip") + 1] == "2" and "--unbias-faults" in argv
    assert argv[argv.index("--methods") + 1] == "one-shot" and argv[argv.index("--train-rates") + 1] == "0.01,0.05", \
        "the recipe's pruned grid trains the rates named, 0.01 included"
    whole = reproduce.parse_args(["--out", str(tmp_path), "--clean-steps", "0.75", "--weight-clip", "2"])
    whole_branch = next(b for b in reproduce.sweep_branches(whole, *reproduce.FULL_GRID) if b.branch == "pruned-clean-steps-clip")
    assert (whole_branch.methods, whole_branch.rates) == ("progressive", "0.05,0.1"), \
        "the whole grid's pruned rows follow the paper's Table II (P_sa^T >= 0.05)"

    dense = json.loads((STUDY / "results" / "c10c" / "dense" / "table.json").read_text())
    tuned = json.loads((STUDY / "results" / "c10c" / "clean-steps-0.75-weight-clip-2" / "table.json").read_text())
    pruned = {**tuned, "acc_pretrain": 85.0, "rows": [r for r in tuned["rows"] if r["method"] == "baseline" or r["model"] == "one-shot P^T=0.05"]}
    (tmp_path / branch.folder).mkdir()
    (tmp_path / branch.folder / "table.json").write_text(json.dumps(pruned))
    assert render.pruned_recipe_folders(tmp_path) == [branch.folder]
    assert render.clean_steps_clip_folders(tmp_path) == [], "not a dense clean-steps-clip grid"
    section = render.pruned_recipe_md(branch.folder, pruned, dense, tuned, None, {"steps": {}})
    assert section[0].startswith("## Pruned model retrained with 0.75 of the steps fault-free and weights clipped to ± 2")
    rows = [line.split(" |")[0] for line in section if line.startswith("| ") and " | " in line and ":" not in line.split(" |")[0]]
    assert rows[1:5] == ["| dense baseline (unpruned)", "| pruned baseline (no FT retraining)", "| one-shot P^T=0.05",
                         "| one-shot P^T=0.05 (dense, same recipe)"], rows
    assert render.pruned_recipe_md(branch.folder, {**pruned, "rows": pruned["rows"][:1]}, dense, tuned, None, {"steps": {}}) == [], \
        "a grid with no retrained model gets no section"


def test_the_pruned_model_retrained_with_algorithm_1_blocks_has_the_pruned_section_and_joins_the_headline(tmp_path):
    """--only pruned-clean-steps-clip --progressive-blocks each retrains the pruned model into
    pruned-FOLDER-progressive-each; the page lists it among the pruned grids (beside the dense grid
    retrained alike and the pruned grid whose rates share the epochs), not among the dense
    Algorithm-1 grids, and a headline of that dense grid shows the pruned rows after its own."""
    reproduce, render = _script("reproduce_cifar10"), _script("render_results")
    args = reproduce.parse_args(["--out", str(tmp_path), "--clean-steps", "0.75", "--weight-clip", "2", "--only", "pruned-clean-steps-clip",
                                 "--progressive-blocks", "each", "--methods", "progressive", "--train-rates", "0.05"])  # fmt: skip
    branch = next(b for b in reproduce.sweep_branches(args, "progressive", "0.05") if b.branch == "pruned-clean-steps-clip")
    assert branch.folder == f"pruned-{TUNED_GRID}"
    assert branch.argv(args)[branch.argv(args).index("--from") + 1] == str(tmp_path / "pruned70" / "model.pt")

    results = STUDY / "results/c10c"
    tuned = json.loads((results / TUNED_GRID / "table.json").read_text())
    split = json.loads((results / "pruned-clean-steps-0.75-weight-clip-2/table.json").read_text())
    each = {**tuned, "acc_pretrain": split["acc_pretrain"], "sparsity": split["sparsity"],
            "rows": [split["rows"][0], *(r for r in tuned["rows"] if r["method"] != "baseline" and r["train_rate"] == 0.05)]}
    for name, table in ((TUNED_GRID, tuned), ("pruned-clean-steps-0.75-weight-clip-2", split), (branch.folder, each)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "table.json").write_text(json.dumps(table))
    assert render.pruned_recipe_folders(tmp_path) == ["pruned-clean-steps-0.75-weight-clip-2", branch.folder]
    assert render.blocks_each_folders(tmp_path) == [TUNED_GRID], "a pruned grid is not a dense Algorithm-1 section"
    dense = json.loads((results / "dense/table.json").read_text())
    section = render.pruned_recipe_md(branch.folder, each, dense, tuned, None, {"steps": {}}, split)
    assert section[0].endswith("on unbiased chips) and progressive as the paper's Algorithm 1 (`--progressive-blocks each`)")
    assert "Retrained for 12 epochs at every rate of progressive's list" in section[2]
    models = [line.split(" | ")[0].lstrip("| ") for line in section if line.startswith("| one-shot P^T=0.05") and "±" in line]
    assert models == ["one-shot P^T=0.05", "one-shot P^T=0.05 (pruned, 25 epochs, rates sharing them)",
                      "one-shot P^T=0.05 (dense, same recipe)"], models

    lead = render.headline_md(TUNED_GRID, tuned, "its section", each)
    models = [line.split(" | ")[0].lstrip("| ") for line in lead if line.startswith("| ") and "±" in line]
    assert models[-3:] == ["pruned baseline (no FT retraining)", "pruned one-shot P^T=0.05", "pruned progressive P^T=0.05"], models
    assert "70 % magnitude-pruned model (Acc_pretrain 86.10 %" in lead[2]
    verdicts = [line for line in lead if line.endswith(("| met |", "| NOT met |"))]
    assert verdicts and not any("pruned" in line or "86.10" in line for line in verdicts), "the issue's criteria stay the dense model's"
    assert render.headline_md(TUNED_GRID, tuned, "its section")[2].endswith("the commands that made them.")


def test_each_grid_folder_the_study_names_is_found_again_by_its_own_pattern_only():
    """reproduce_cifar10.py names the folders and render_results.py lists them by pattern, both
    from study_folders: a name must match its own pattern, and only the patterns it should."""
    from fnmatch import fnmatch

    names = _script("study_folders")
    named = {names.bn_train(0.1, 40): names.BN_TRAIN_GLOB, names.retrain_lr(0.05): names.RETRAIN_LR_GLOB,
             names.weight_clip(2.5): names.WEIGHT_CLIP_GLOB, names.clean_steps(0.75): names.CLEAN_STEPS_GLOB,
             names.clean_steps_clip(0.75, 2): names.CLEAN_STEPS_CLIP_GLOB, names.pruned(names.clean_steps_clip(0.75, 2)): names.PRUNED_GLOB}  # fmt: skip
    for folder, pattern in named.items():
        matches = {p for p in named.values() if fnmatch(folder, p)}
        # a clipped clean-steps grid matches both clean-steps patterns (render tells them apart by the table)
        assert matches == ({pattern, names.CLEAN_STEPS_GLOB} if pattern == names.CLEAN_STEPS_CLIP_GLOB else {pattern}), folder
        assert names.split_train_seed(names.with_train_seed(folder, 3)) == (folder, 3)
        assert fnmatch(names.with_train_seed(folder, 3), names.TRAIN_SEED_GLOB) and not fnmatch(folder, names.TRAIN_SEED_GLOB)
        each = names.with_blocks_each(folder)
        assert names.of_blocks_each(each) == folder and fnmatch(each, names.BLOCKS_EACH_GLOB) and not fnmatch(folder, names.BLOCKS_EACH_GLOB)
        assert names.is_variant(each) and names.is_variant(names.with_train_seed(folder, 3)) and not names.is_variant(folder)
        longer = names.with_epochs(folder, 36)
        assert names.split_epochs(longer) == (folder, 36) and names.is_variant(longer)
        assert fnmatch(longer, names.EPOCHS_GLOB) and not fnmatch(folder, names.EPOCHS_GLOB), folder
        for run in ("pretrain-length-60", "pretrain-seed-2"):
            other = names.retrained_from(folder, run)
            assert names.split_retrained_from(other) == (folder, run) and names.is_variant(other)
            assert names.split_retrained_from(names.with_epochs(other, 36)) == (names.with_epochs(folder, 36), run)
            assert fnmatch(other, names.RETRAINED_FROM_GLOB) and not fnmatch(folder, names.RETRAINED_FROM_GLOB), folder
    assert names.dense_of_pruned(names.pruned("clean-steps-0.5-weight-clip-2")) == "clean-steps-0.5-weight-clip-2"
    assert (names.bn_train(), names.clean_steps(0.5)) == ("bn-train", "clean-steps"), "the first grids' folders keep their names"
    again = names.pretrain_seed_baseline(4)
    assert names.seed_of_pretrain_baseline(again) == 4 and fnmatch(again, names.PRETRAIN_SEED_BASELINE_GLOB)
    assert not any(fnmatch(again, p) for p in (*named.values(), names.TRAIN_SEED_GLOB, "baseline-*")), "not a baseline of a target"
    longer = names.pretrain_length_baseline(60)
    assert fnmatch(longer, names.PRETRAIN_LENGTH_BASELINE_GLOB) and not fnmatch(again, names.PRETRAIN_LENGTH_BASELINE_GLOB)
    others = (*named.values(), names.TRAIN_SEED_GLOB, names.EPOCHS_GLOB, names.BLOCKS_EACH_GLOB, names.PRETRAIN_SEED_BASELINE_GLOB, "baseline-*")
    assert not any(fnmatch(f, p) for f in (longer, names.pretrain_length(60)) for p in others), "no grid's pattern, nor the seeds'"


def test_a_step_two_branches_share_runs_once(tmp_path, monkeypatch):
    """Both pruned branches start with the pruning: asked for together, it runs once and the
    other branch finds it done."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    reproduce = _script("reproduce_cifar10")
    run = reproduce.Runner(tmp_path)
    done = tmp_path / "models.txt"
    started = []
    original = reproduce.subprocess.Popen

    def popen(argv, **kwargs):  # a real, quick ftdeploy command that leaves the step's output late
        started.append(argv)
        time.sleep(0.5)  # the other branch asks meanwhile
        done.write_text("done")
        return original(argv, **kwargs)

    monkeypatch.setattr(reproduce.subprocess, "Popen", popen)
    with ThreadPoolExecutor(2) as pool:
        assert all(pool.map(lambda _: run("prune", ["models"], done=done), range(2)))
    assert len(started) == 1


def test_the_weight_clip_probe_clips_with_the_trainers_clip_and_leaves_k_0_alone():
    from ftdeploy.models import create_model, deployed_layers
    from ftdeploy.profiles import load_target

    probe = _script("probe_weight_clip")
    target, _ = load_target("paper-diff8")
    torch.manual_seed(0)
    model = create_model("democnn", width=8)
    before = {name: layer.weight.detach().clone() for name, layer in deployed_layers(model)}
    assert all(torch.equal(layer.weight, before[name]) for name, layer in deployed_layers(probe.clipped(model, target, 0)))
    for name, layer in deployed_layers(probe.clipped(model, target, 1.5)):
        assert layer.weight.abs().max() <= 1.5 * before[name].std() * (1 + 1e-6), name
        assert not torch.equal(layer.weight, before[name]), name


def test_the_probes_measure_on_the_sweeps_stratified_subset_or_every_image_when_it_asks_for_more():
    """probe_common is what every probe measures with: --max-images below the validation set is
    the sweep's stratified subset; at or above it, every image (it used to crash there)."""
    from ftdeploy.data import load_validation
    from ftdeploy.models import create_model
    from ftdeploy.verify import subset_indices

    common = _script("probe_common")
    every = load_validation(None)
    for asked in (20, len(every.val_y), len(every.val_y) + 5):
        args = common.probe_parser("doc", rates="0.01", chips=1).parse_args(["--profile", "demo", "--max-images", str(asked)])
        args.data = None  # the embedded default set
        probe, _ = common.probe_from_args(args)
        keep = subset_indices(every.val_y.numpy(), asked)
        assert torch.equal(probe.val_y, every.val_y if keep is None else every.val_y[torch.from_numpy(keep)]), asked
    torch.manual_seed(0)
    line = probe.measure(create_model("democnn", width=8).eval(), {"mean": [0.5] * 3, "std": [0.25] * 3})
    assert line.startswith("clean ") and "  P=0.01: " in line, line


def test_the_probes_one_line_summary_is_the_sweeps_measurement():
    """probe_common.accuracy_line, the study's own copy of DeployedNetwork.accuracy_line (a package
    method only the probes used): the fault-free accuracy, then each rate's mean over the chips
    the sweep would draw."""
    from ftdeploy.chip import DeployedNetwork
    from ftdeploy.models import create_model
    from ftdeploy.nonideality import FaultModel
    from ftdeploy.population import SimulatedChips, chip_accuracies
    from ftdeploy.profiles import load_target

    common = _script("probe_common")
    torch.manual_seed(0)
    net = DeployedNetwork(create_model("democnn", width=8).eval(), load_target("paper-diff8")[0])
    x, y = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 10, (16,))
    mean, std = [0.5] * 3, [0.25] * 3
    line = common.accuracy_line(net, [0.0, 0.5], FaultModel.stuck_at(0.0, (1.75, 9.04)), 2, x, y, mean, std)
    clean = net.accuracy(x, y, mean, std)
    accs = chip_accuracies(net.backend(x, y, mean, std), SimulatedChips(FaultModel.stuck_at(0.5, (1.75, 9.04)), 0.5, 0, 2))
    assert line == f"clean {clean:.2f}  P=0: {clean:.2f}  P=0.5: {sum(accs) / len(accs):.2f}"


def _results_file(path, label, clean, chips_by_rate, **measured):
    tests = {rate: {"mean": sum(chips) / len(chips), "chips": chips} for rate, chips in chips_by_rate.items()}
    path.write_text(json.dumps({"label": label, "acc_clean": clean, "tests": tests,
                                "measured": {"checkpoint_sha256": label, "chips": 3, "seed": 0, **measured}}))  # fmt: skip
    return path


def test_the_paired_comparison_differences_two_models_chip_by_chip_and_refuses_other_chips(tmp_path, capsys):
    """Chip i is the same fault map for both models, so A − B is taken per chip: here B trails A
    by exactly 1 on every chip (a zero-width CI) though its chips spread over 20 points."""
    from ftdeploy.figures import summarize_chips

    compare = _script("compare_models")
    a = _results_file(tmp_path / "a.json", "A", 80.0, {"0": [80.0], "0.01": [70.0, 80.0, 90.0], "0.05": [50.0, 60.0, 40.0]})
    b = _results_file(tmp_path / "b.json", "B", 79.0, {"0": [79.0], "0.01": [69.0, 79.0, 89.0], "0.05": [52.0, 59.0, 40.0]})
    assert compare.main([str(a), str(b)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == ["A: A (clean 80.00)", "B: B (clean 79.00)"]
    assert "| 0 | 80.00 | 79.00 | +1.00 (n/a) | 1 / 1 |" in out, "one chip: no CI"
    assert "| 0.01 | 80.00 | 79.00 | +1.00 (+1.00 … +1.00) | 3 / 3 |" in out
    low, high = summarize_chips([-2.0, 1.0, 0.0])["ci95"]
    assert f"| 0.05 | 50.00 | 50.33 | -0.33 ({low:+.2f} … {high:+.2f}) | 1 / 3 |" in out
    other = _results_file(tmp_path / "c.json", "C", 79.0, {"0": [79.0]}, seed=1)
    assert compare.main([str(a), str(other)]) == 2
    assert capsys.readouterr().err.strip() == "error: measured on other chips or images: seed differs"


def test_the_tuned_profile_retrains_as_the_run_whose_figures_the_readme_gives():
    """profiles/chen2015-tuned.yaml ships the recipe of the archived one-shot P^T=0.05 run that
    meets issue 3's limits, pretrained as that run's model was, for chen2015's deployment; a
    profile drifting from that run would ship figures it never earned."""
    study = STUDY / "results/c10c"
    run = yaml.safe_load((study / "clean-steps-0.75-weight-clip-2/runs/one-shot-0.05/config.yaml").read_text())
    pretrain = yaml.safe_load((study / "pretrain/config.yaml").read_text())
    profile, chen2015 = load_profile("chen2015-tuned").profile, load_profile("chen2015").profile
    training = profile.training
    assert (profile.target, profile.faults, profile.signoff) == (chen2015.target, chen2015.faults, chen2015.signoff)
    assert list(profile.fault_model.stuck.split) == run["split"]
    assert (training.method.value, training.target_rate, training.epochs, training.retrain_lr, training.batch_size) == \
        (run["method"], run["target_rate"], run["epochs"], run["lr"], run["batch_size"])
    assert training.recipe() == {f: run[f] for f in RetrainingRecipe.model_fields}
    assert (training.model, training.pretrain_epochs, training.lr) == (pretrain["model"], pretrain["epochs"], pretrain["lr"])
    assert training.clean_steps == 0.75 and training.weight_clip == 2 and training.unbias_faults


def test_the_pruned_models_length_control_has_a_pruned_section_and_joins_the_headline(tmp_path):
    """--only pruned-clean-steps-clip --epochs-in-folder retrains the pruned model into
    pruned-FOLDER-epochs-N; its section sits among the pruned ones, beside the pruned Algorithm-1
    grid and the dense model's grid of the same recipe and length, checks only progressive against
    one-shot (the issue's limits are the dense model's), and the headline quotes that verdict."""
    reproduce, render = _script("reproduce_cifar10"), _script("render_results")
    args = reproduce.parse_args(["--out", str(tmp_path), "--clean-steps", "0.75", "--weight-clip", "2", "--only", "pruned-clean-steps-clip",
                                 "--epochs", "36", "--epochs-in-folder", "--methods", "one-shot", "--train-rates", "0.05,0.1"])  # fmt: skip
    branch = next(b for b in reproduce.sweep_branches(args, "one-shot", "0.05,0.1") if b.branch == "pruned-clean-steps-clip")
    folder = "pruned-clean-steps-0.75-weight-clip-2-epochs-36"
    assert branch.folder == folder and branch.argv(args)[branch.argv(args).index("--from") + 1] == str(tmp_path / "pruned70" / "model.pt")

    results = STUDY / "results/c10c"
    names = (folder, "pruned-clean-steps-0.75-weight-clip-2", f"pruned-{TUNED_GRID}", "clean-steps-0.75-weight-clip-2-epochs-36")
    table, same, each, dense_same = (json.loads((results / name / "table.json").read_text()) for name in names)
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "table.json").write_text((results / name / "table.json").read_text())
    assert render.epochs_variant_folders(tmp_path, pruned=True) == [folder]
    assert render.epochs_variant_folders(tmp_path) == ["clean-steps-0.75-weight-clip-2-epochs-36"], "a pruned grid is not a dense control"
    section = render.pruned_epochs_variant_md(folder, table, same, each, dense_same, {"steps": {}})
    assert section[0].startswith("## Pruned model: the `pruned-clean-steps-0.75-weight-clip-2` grid retrained for 36 epochs")
    models = [line.split(" | ")[0].lstrip("| ") for line in section if line.startswith("| ") and "±" in line]
    assert models[0] == "pruned baseline (no FT retraining)" and "one-shot P^T=0.1 (dense, same recipe and length)" in models
    assert f"progressive P^T=0.1 (`pruned-{TUNED_GRID}`)" in models
    verdicts = [line for line in section if line.endswith(("| met |", "| NOT met |"))]
    assert [line.split(":")[0] for line in verdicts] == ["| P^T=0.05", "| P^T=0.1"], "only progressive against one-shot"
    # the figures the section compares: Algorithm 1's progressive against one-shot trained as long
    prog = next(r for r in each["rows"] if r["model"] == "progressive P^T=0.1")
    one = next(r for r in table["rows"] if r["model"] == "one-shot P^T=0.1")
    ahead = all(prog["acc_defect"][r] >= one["acc_defect"][r] for r in ("0.02", "0.05", "0.1"))
    assert verdicts[1].endswith("| met |" if ahead else "| NOT met |")

    dense_each = json.loads((results / TUNED_GRID / "table.json").read_text())
    lead = render.headline_md(TUNED_GRID, dense_each, "its section", each, [], [section])
    preface = next(i for i, line in enumerate(lead) if line.startswith("The pruned model's one-shot trained as long as progressive"))
    assert "(section \"Pruned model:" in lead[preface] and lead[preface + 4:preface + 6] == verdicts, \
        "the headline quotes the pruned control's verdicts under the pruned rows"


def test_the_page_names_the_models_trained_on_the_accelerator(tmp_path):
    """A table may hold rows from both kinds of machine: the page lists, by grid, the models whose
    run config says `device: cuda`, and says nothing where every model trained on the CPU."""
    render = _script("render_results")
    for key, device in (("one-shot-0.01", "cuda"), ("progressive-0.1", "cuda"), ("one-shot-0.05", "cpu")):
        (tmp_path / "grid" / "runs" / key).mkdir(parents=True)
        (tmp_path / "grid" / "runs" / key / "config.yaml").write_text(yaml.safe_dump({"epochs": 12, "device": device}))
    assert render.trained_on_accelerator(tmp_path) == {"grid": ["one-shot-0.01", "progressive-0.1"]}
    line = render.accelerator_md(tmp_path)[0]
    assert line.endswith("`grid`: one-shot P^T=0.01, progressive P^T=0.1.") and "one-shot P^T=0.05" not in line
    assert render.accelerator_md(STUDY / "results/c10") == [], "every model of that study trained on the CPU"


def test_progressive_against_one_shot_also_says_where_it_stands_chip_for_chip(tmp_path):
    """The criterion compares means, as the issue words it; where both rows' results files hold
    every chip on the same chips, the verdict also says, per test rate, whether the per-chip
    difference's 95 % CI puts progressive ahead, level or behind (scripts/compare_models.py)."""
    render, compare = _script("render_results"), _script("compare_models")
    results = STUDY / "results/c10c"
    each, long = render.load_table(results / TUNED_GRID), render.load_table(results / "clean-steps-0.75-weight-clip-2-epochs-36")
    prog = next(r for r in each["rows"] if r["model"] == "progressive P^T=0.01")
    one = next(r for r in long["rows"] if r["model"] == "one-shot P^T=0.01")
    assert prog["results"] == str(results / TUNED_GRID / "results" / "progressive-0.01.json")
    paired = {r["rate"]: r["ci95"] for r in compare.paired_rows(*(compare.load_result(Path(x["results"])) for x in (prog, one)))}
    sides = ["ahead" if paired[r][0] > 0 else "behind" if paired[r][1] < 0 else "level" for r in ("0.02", "0.05", "0.1")]
    detail = render._chip_for_chip(one, prog, ["0.02", "0.05", "0.1"])
    assert detail.startswith(" (chip for chip on the same 10 chips: ") and f"{sides[0]} at 0.02" in detail, detail
    verdict = next(line for line in render.criteria({**long, "rows": [*long["rows"], prog]}) if line.startswith("| P^T=0.01: progressive"))
    assert detail in verdict, "the page's verdict carries it"

    assert render._chip_for_chip({k: v for k, v in one.items() if k != "results"}, prog, ["0.02"]) == "", "a row without its results"
    other = json.loads(Path(one["results"]).read_text())
    other["measured"]["seed"] = 1
    (tmp_path / "one-shot-0.01.json").write_text(json.dumps(other))
    assert render._chip_for_chip({**one, "results": str(tmp_path / "one-shot-0.01.json")}, prog, ["0.02"]) == "", "other chips"
    assert render._chip_for_chip({**one, "results": str(tmp_path / "missing.json")}, prog, ["0.02"]) == ""


def test_the_pretraining_again_from_other_seeds_pretrains_each_seed_and_measures_its_baseline(tmp_path):
    """pretrain-seeds: for each seed, the study's pretraining command with --train-seed N into
    pretrain-seed-N, then that model's baseline with the study's chips, images and profile into
    pretrain-seed-N-baseline (not baseline-*: those are the study's model on other targets)."""
    reproduce = _script("reproduce_cifar10")
    args = reproduce.parse_args(["--out", str(tmp_path), "--only", "pretrain-seeds", "--pretrain-seeds", "1,3",
                                 "--chips", "4", "--max-images", "300", "--pretrain-epochs", "7"])  # fmt: skip
    steps = reproduce.pretrain_seed_steps(args)
    assert [s[0] for s in steps] == ["pretrain-seed-1", "pretrain-seed-1-baseline", "pretrain-seed-3", "pretrain-seed-3-baseline"]
    study = reproduce.pretrain_argv(args, tmp_path / "pretrain")
    name, argv, done = steps[0]
    assert done == tmp_path / "pretrain-seed-1" / "model.pt" and argv[argv.index("--train-seed") + 1] == "1" and "--train-seed" not in study
    assert [w for w in argv if w not in ("--train-seed", "1")] == [w.replace(str(tmp_path / "pretrain"), str(done.parent)) for w in study]
    baseline = steps[1][1]
    own = dict(reproduce.baseline_steps(args, tmp_path / "pretrain" / "model.pt"))["baseline-chen2015"]
    assert baseline[baseline.index("--from") + 1] == str(done)
    assert [w for w in baseline if "pretrain" not in w] == [w for w in own if "pretrain" not in w and "baseline-" not in w]
    for bad in ("1,1", "-1", "x"):
        with pytest.raises(SystemExit):
            reproduce.parse_args(["--pretrain-seeds", bad])


def test_the_pretraining_for_longer_pretrains_the_studys_seed_for_each_length_and_measures_its_baseline(tmp_path):
    """pretrain-lengths: the study's pretraining command, --epochs E instead of --pretrain-epochs,
    into pretrain-length-E, then its baseline as the seeds' are measured; the collapse branch
    measures these models too, after the seeds'."""
    reproduce = _script("reproduce_cifar10")
    options = ["--out", str(tmp_path), "--chips", "4", "--max-images", "300", "--pretrain-epochs", "7", "--pretrain-seeds", "1"]
    args = reproduce.parse_args([*options, "--only", "pretrain-lengths", "--pretrain-lengths", "14,21"])
    steps = reproduce.pretrain_length_steps(args)
    assert [s[0] for s in steps] == ["pretrain-length-14", "pretrain-length-14-baseline", "pretrain-length-21", "pretrain-length-21-baseline"]
    study = reproduce.pretrain_argv(args, tmp_path / "pretrain")
    name, argv, done = steps[0]
    assert done == tmp_path / "pretrain-length-14" / "model.pt" and "--train-seed" not in argv
    assert argv == [w.replace(str(tmp_path / "pretrain"), str(done.parent)) for w in study[:study.index("--epochs") + 1]] + [
        "14", *[w.replace(str(tmp_path / "pretrain"), str(done.parent)) for w in study[study.index("--epochs") + 2:]]]
    seed_baseline = reproduce.pretrain_seed_steps(args)[1][1]
    assert steps[1][1] == [w.replace("pretrain-seed-1", "pretrain-length-14") for w in seed_baseline]
    collapse = reproduce.collapse_steps(args, tmp_path / "pretrain" / "model.pt")
    assert [s[0] for s in collapse] == ["collapse-chips-100:pretrain", "pretrain-seed-1", "collapse-chips-100:pretrain-seed-1",
                                        "pretrain-length-14", "collapse-chips-100:pretrain-length-14",
                                        "pretrain-length-21", "collapse-chips-100:pretrain-length-21"]  # fmt: skip
    assert [s[0] for s in reproduce.collapse_steps(reproduce.parse_args(options), tmp_path / "pretrain" / "model.pt")] == [
        "collapse-chips-100:pretrain", "pretrain-seed-1", "collapse-chips-100:pretrain-seed-1"], "no lengths unless asked"
    for bad in (["--pretrain-lengths", "0"], ["--pretrain-lengths", "60,60"], ["--only", "pretrain-lengths"]):
        with pytest.raises(SystemExit):
            reproduce.parse_args(bad)


def test_other_pretrained_models_baselines_sit_beside_the_studys_with_their_collapse_verdict(tmp_path):
    render, names = _script("render_results"), _script("study_folders")
    archived = STUDY / "results/c10c"
    (tmp_path / "baseline-chen2015").mkdir()
    (tmp_path / "baseline-chen2015" / "table.json").write_text((archived / "baseline-chen2015" / "table.json").read_text())
    (tmp_path / "pretrain").mkdir()
    (tmp_path / "pretrain" / "config.yaml").write_text((archived / "pretrain" / "config.yaml").read_text())
    assert render.pretrain_seeds_md(tmp_path) == [], "no other pretrained model: no section"
    table = json.loads((archived / "baseline-chen2015" / "table.json").read_text())
    table["rows"][0]["acc_defect"].update({"0.005": 60.0, "0.01": 30.0})
    (tmp_path / names.pretrain_seed_baseline(2)).mkdir()
    (tmp_path / names.pretrain_seed_baseline(2) / "table.json").write_text(json.dumps(table))
    (tmp_path / names.pretrain_seed(2)).mkdir()
    (tmp_path / names.pretrain_seed(2) / "config.yaml").write_text(yaml.safe_dump({"seed": 2, "device": "cpu", "epochs": 30}))
    assert render.baseline_tables(tmp_path)[0]["profile"] == "chen2015" and len(render.baseline_tables(tmp_path)) == 1
    md = render.pretrain_seeds_md(tmp_path)
    rows = {line.split(" | ")[0].lstrip("| "): line for line in md if line.startswith("| ") and "---" not in line}
    assert rows["seed 0: the study's (every grid on this page retrains it)"].endswith("| no |"), "43.89 % at 0.01"
    assert rows["seed 2"].endswith("| yes |") and "| 60.00 ±" in rows["seed 2"] and "| 30.00 ±" in rows["seed 2"]
    mean = rows["mean of the 2 models"].split(" | ")
    assert mean[4:6] == [f"{(65.67 + 60) / 2:.2f}", f"{(43.89 + 30) / 2:.2f}"], mean


def test_a_longer_pretrainings_baseline_follows_the_seeds_and_stays_out_of_their_mean(tmp_path):
    """A model pretrained for longer is another model, not another draw of the study's: its row
    names its length and comes after the seeds', and the mean is of the models as long as the study's."""
    render, names = _script("render_results"), _script("study_folders")
    archived = STUDY / "results/c10c"
    table = json.loads((archived / "baseline-chen2015" / "table.json").read_text())
    for folder, config, at_001 in (("pretrain", {"seed": 0, "epochs": 30}, None), (names.pretrain_seed(1), {"seed": 1, "epochs": 30}, 41.0),
                                   (names.pretrain_length(60), {"seed": 0, "epochs": 60}, 20.0)):  # fmt: skip
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "config.yaml").write_text(yaml.safe_dump({**config, "device": "cpu"}))
        sweep = "baseline-chen2015" if folder == "pretrain" else folder + names.PRETRAIN_SEED_BASELINE
        (tmp_path / sweep).mkdir()
        row = {**table["rows"][0], "acc_defect": {**table["rows"][0]["acc_defect"], **({"0.01": at_001} if at_001 else {})}}
        (tmp_path / sweep / "table.json").write_text(json.dumps({**table, "rows": [row]}))
    md = render.pretrain_seeds_md(tmp_path)
    rows = [line.split(" | ")[0].lstrip("| ") for line in md if line.startswith("| ") and "---" not in line and "pretrained model" not in line]
    assert rows == ["seed 0: the study's (every grid on this page retrains it)", "seed 1", "seed 0, 60 epochs",
                    "mean of the 2 models pretrained for 30 epochs"]  # fmt: skip
    mean = next(line for line in md if line.startswith("| mean")).split(" | ")
    assert mean[5] == f"{(43.89 + 41.0) / 2:.2f}", mean
    assert "or for longer" in md[2]
    assert [run for run, _ in render.other_pretrained_tables(tmp_path)] == [names.pretrain_seed(1), names.pretrain_length(60)]


def test_the_study_runs_one_retraining_at_a_time_on_the_cpu_unless_told_otherwise(tmp_path):
    """--jobs defaults to 6 only with an accelerator; a branch's own count never exceeds --jobs."""
    reproduce = _script("reproduce_cifar10")
    assert reproduce.parse_args(["--device", "cpu"]).jobs == 1 and reproduce.parse_args(["--device", "cuda"]).jobs == 6
    assert reproduce.parse_args(["--device", "cpu", "--jobs", "3"]).jobs == 3
    with pytest.raises(SystemExit):
        reproduce.parse_args(["--jobs", "0"])
    for given, expected in (("1", "1"), ("6", "2")):  # the pruned branch's own count is 2
        args = reproduce.parse_args(["--out", str(tmp_path), "--jobs", given])
        argv = next(b for b in reproduce.sweep_branches(args, *reproduce.FULL_GRID) if b.branch == "pruned").argv(args)
        assert argv[argv.index("--jobs") + 1] == expected


def test_the_collapse_branch_measures_each_pretrained_model_on_more_chips_at_the_issues_rates(tmp_path):
    reproduce = _script("reproduce_cifar10")
    args = reproduce.parse_args(["--out", str(tmp_path), "--only", "collapse", "--collapse-chips", "40", "--pretrain-seeds", "1",
                                 "--chips", "4", "--max-images", "300"])  # fmt: skip
    steps = reproduce.collapse_steps(args, tmp_path / "pretrain" / "model.pt")
    assert [s[0] for s in steps] == ["collapse-chips-40:pretrain", "pretrain-seed-1", "collapse-chips-40:pretrain-seed-1"]
    assert steps[1] == reproduce.pretrain_seed_steps(args)[0], "the same pretraining step as the pretrain-seeds branch's"
    ten_chips = reproduce.pretrain_seed_steps(args)[1][1]
    for (_, argv), model in ((steps[0], "pretrain"), (steps[2], "pretrain-seed-1")):
        assert argv[argv.index("--chips") + 1] == "40" and argv[argv.index("--test-rates") + 1] == "0,0.005,0.01"
        assert argv[argv.index("--out") + 1] == str(tmp_path / "collapse-chips-40" / model)
        assert argv[argv.index("--from") + 1] == str(tmp_path / model / "model.pt")
        for option in ("--data", "--max-images", "--profile", "--no-train"):
            assert option in argv and (option == "--no-train" or argv[argv.index(option) + 1] == ten_chips[ten_chips.index(option) + 1])
    with pytest.raises(SystemExit):
        reproduce.parse_args(["--collapse-chips", "1"])


def test_the_collapse_on_more_chips_gets_a_table_and_a_criterion_of_its_own(tmp_path):
    render = _script("render_results")
    archived = STUDY / "results/c10c"
    (tmp_path / "pretrain").mkdir()
    (tmp_path / "pretrain" / "config.yaml").write_text((archived / "pretrain" / "config.yaml").read_text())
    table = json.loads((archived / "baseline-chen2015" / "table.json").read_text())
    rates = ["0", "0.005", "0.01"]
    table.update(chips=40, test_rates=rates, ss_rates=["0.01"])
    base = table["rows"][0]
    base.update(acc_defect={"0": 86.45, "0.005": 62.0, "0.01": 33.0}, ci95={"0": None, "0.005": [60.0, 64.0], "0.01": [31.0, 35.0]})
    (tmp_path / "collapse-chips-40" / "pretrain").mkdir(parents=True)
    (tmp_path / "collapse-chips-40" / "pretrain" / "table.json").write_text(json.dumps(table))
    assert render.study_collapse(tmp_path)["chips"] == 40
    md = render.pretrain_seeds_md(tmp_path)
    assert any(line.startswith("On 40 chips per rate (`--only collapse --collapse-chips 40`") for line in md)
    row = next(line for line in md if line.startswith("| seed 0"))
    assert row.endswith("| cpu | 86.45 | 62.00 ±2.00 | 33.00 ±2.00 | yes |"), row
    dense = json.loads((archived / "dense" / "table.json").read_text())
    lines = render.criteria(dense, collapse=render.study_collapse(tmp_path))
    assert "| baseline collapses: 55-70 % at 0.005, < 35 % at 0.01 (`paper-diff8`) | 65.67 % / 43.89 % | NOT met |" in lines
    assert "| baseline collapses: 55-70 % at 0.005, < 35 % at 0.01 (`paper-diff8`, 40 chips per rate) | 62.00 ±2.00 % / 33.00 ±2.00 % | met |" in lines
    other = dict(render.study_collapse(tmp_path), pretrained="runs/elsewhere/model.pt")
    assert not any("40 chips" in line for line in render.criteria(dense, collapse=other)), "another model's collapse is not this one's"


def test_a_grid_retrained_from_another_pretrained_model_has_a_folder_and_a_section_of_its_own(tmp_path):
    """--retrain-from RUN retrains a branch from another pretrained model of the study into
    FOLDER-from-RUN, its pretraining first (skipped once done); the page gives the grid one section,
    checked on that model's own Acc_pretrain, baseline and collapse on more chips, and keeps it out
    of every listing of the study's own grids."""
    reproduce, render, names = _script("reproduce_cifar10"), _script("render_results"), _script("study_folders")
    options = ["--out", str(tmp_path), "--only", "clean-steps-clip", "--clean-steps", "0.75", "--weight-clip", "2",
               "--retrain-from", "pretrain-length-60"]  # fmt: skip
    args = reproduce.parse_args(options)
    branch = next(b for b in reproduce.sweep_branches(args, "one-shot", "0.05") if b.branch == "clean-steps-clip")
    argv = branch.argv(args)
    folder = "clean-steps-0.75-weight-clip-2-from-pretrain-length-60"
    assert branch.folder == folder and argv[argv.index("--out") + 1] == str(tmp_path / folder)
    assert argv[argv.index("--from") + 1] == str(tmp_path / "pretrain-length-60" / "model.pt")
    assert reproduce.other_pretrained_step(args, "pretrain-length-60") == reproduce.pretrain_length_step(args, 60)
    steps = reproduce.branch_steps(args, tmp_path / "pretrain" / "model.pt")
    assert list(steps) == ["clean-steps-clip"] and steps["clean-steps-clip"][0] == reproduce.pretrain_length_step(args, 60)
    name, grid_argv = steps["clean-steps-clip"][1]
    assert name == f"sweep-{folder}" and grid_argv[grid_argv.index("--from") + 1] == str(tmp_path / "pretrain-length-60" / "model.pt"), \
        "then the grid, from that model"
    assert reproduce.other_pretrained_step(args, "pretrain-seed-2") == reproduce.pretrain_seed_step(args, 2)
    each = next(b for b in reproduce.sweep_branches(reproduce.parse_args([*options, "--progressive-blocks", "each"]), "one-shot", "0.05")
                if b.branch == "clean-steps-clip")  # fmt: skip
    assert names.split_retrained_from(each.folder) == ("clean-steps-0.75-weight-clip-2-progressive-each", "pretrain-length-60")
    for bad in (["--retrain-from", "pretrain-length-60"], ["--retrain-from", "pruned70", "--only", "dense"],
                ["--retrain-from", "pretrain-seed-1", "--only", "dense,pruned"], ["--retrain-from", "pretrain-length-x", "--only", "dense"]):  # fmt: skip
        with pytest.raises(SystemExit):
            reproduce.parse_args(bad)

    archived = STUDY / "results/c10c"
    same = json.loads((archived / "clean-steps-0.75-weight-clip-2" / "table.json").read_text())
    model = str(tmp_path / "pretrain-length-60" / "model.pt")
    table = {**same, "pretrained": model, "acc_pretrain": 88.0, "rows": [same["rows"][0], same["rows"][2]]}
    table["rows"][0] = {**same["rows"][0], "acc_clean": 88.0, "acc_defect": {**same["rows"][0]["acc_defect"], "0.005": 60.0, "0.01": 30.0}}
    for grid, content in ((folder, table), (folder + names.BLOCKS_EACH, table), ("clean-steps-0.75-weight-clip-2", same)):
        (tmp_path / grid).mkdir()
        (tmp_path / grid / "table.json").write_text(json.dumps(content))
    for run, config in (("pretrain", {"seed": 0, "epochs": 30}), ("pretrain-length-60", {"seed": 0, "epochs": 60})):
        (tmp_path / run).mkdir()
        (tmp_path / run / "config.yaml").write_text(yaml.safe_dump({**config, "device": "cpu"}))
    collapse = json.loads((archived / "collapse-chips-100" / "pretrain" / "table.json").read_text())
    collapse["pretrained"] = model
    collapse["rows"][0]["acc_defect"].update({"0.005": 61.0, "0.01": 33.0})
    (tmp_path / "collapse-chips-100" / "pretrain-length-60").mkdir(parents=True)
    (tmp_path / "collapse-chips-100" / "pretrain-length-60" / "table.json").write_text(json.dumps(collapse))

    assert render.clean_steps_clip_folders(tmp_path) == ["clean-steps-0.75-weight-clip-2"]
    assert render.blocks_each_folders(tmp_path) == [] and render.epochs_variant_folders(tmp_path) == []
    assert render.retrained_from_folders(tmp_path) == [folder, folder + names.BLOCKS_EACH]
    assert render.study_collapse(tmp_path) is None and render.study_collapse(tmp_path, "pretrain-length-60")["chips"] == 100
    section = render.retrained_from_md(tmp_path, folder, render.load_table(tmp_path / folder), {"steps": {}})
    assert section[0] == ("## The `clean-steps-0.75-weight-clip-2` grid retrained from another pretrained model: seed 0, 60 epochs "
                          "(`--retrain-from pretrain-length-60`)")  # fmt: skip
    table_lines = section[section.index("| model | epochs | P=0 | P=0.001 | P=0.005 | P=0.01 | P=0.02 | P=0.05 | P=0.1 | SS@0.01 | SS@0.02 |"):]
    models = [line.split(" | ")[0].lstrip("| ") for line in table_lines[2:table_lines.index("")]]
    assert models == ["baseline", "one-shot P^T=0.05", "baseline (from the study's model)", "one-shot P^T=0.05 (from the study's model)"]
    assert "| baseline collapses: 55-70 % at 0.005, < 35 % at 0.01 (`paper-diff8`) | 60.00 % / 30.00 % | met |" in section
    assert any(line.startswith("| baseline collapses") and "100 chips per rate" in line and "61.00 ±" in line and line.endswith("| met |")
               for line in section), "its own collapse on more chips, not the study's model's"
    assert "| one-shot P^T=0.05: Acc_retrain within 1 point of Acc_pretrain | 86.65 vs 88.00 | NOT met |" in section
    headline = render.headline_md("clean-steps-0.75-weight-clip-2", same, "t", other_models=[section])
    quoted = headline[headline.index(next(line for line in headline if line.startswith("The same recipe retrained from another"))):]
    assert "| one-shot P^T=0.05: Acc_retrain within 1 point of Acc_pretrain | 86.65 vs 88.00 | NOT met |" in quoted
