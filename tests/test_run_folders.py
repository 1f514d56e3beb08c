"""Run folders under bad conditions: one writer at a time (a second is refused, exit 2), kills at
seeded points during training, a sweep and a sign-off followed by a rerun (folders complete and
consistent, no temporary file left, no training left running), read-only and full disks (one
line, exit 2, nothing torn, the previous files intact)."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_main
from ftdeploy import files
from ftdeploy.errors import FtdeployError, VerifyError
from ftdeploy.files import append_line, lock_holder, remove_stale_temps, run_folder_lock, write_atomic
from ftdeploy.training.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
#: Seeds of the kill points: each test draws its own from these, so a failure reproduces.
SEED = 20261207


def _temps(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.tmp"))


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by whoever adopted it, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return files.pid_alive(pid)
    return state not in ("Z", "X")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory) -> Path:
    """400 embedded images (40 per class) as an npz data file: an epoch of a handful of steps."""
    from ftdeploy.data import embedded_path

    with np.load(embedded_path()) as z:
        labels, offsets, jpeg, classes = z["labels"], z["offsets"].astype(np.int64), z["jpeg"], z["classes"]
    idx = np.concatenate([np.flatnonzero(labels == c)[:40] for c in range(10)])
    parts = [jpeg[offsets[i] : offsets[i + 1]] for i in idx]
    path = tmp_path_factory.mktemp("data") / "small.npz"
    np.savez(path, jpeg=np.concatenate(parts), offsets=np.concatenate([[0], np.cumsum([len(p) for p in parts])]),
             labels=labels[idx], classes=classes)  # fmt: skip
    return path


def _train_args(npz: Path, out: Path, epochs: int = 3, *extra) -> list[str]:
    return ["train", "--profile", "demo", "--method", "pretrain", "--epochs", str(epochs), "--batch-size", "64", "--device", "cpu",
            "--data", f"npz:{npz}", "--out", str(out), *extra]  # fmt: skip


#: Runs ``ftdeploy ARGV`` and SIGKILLs itself at the KILL_AT-th call of KILL_IN (``write``: a file's
#: bytes written to its temporary file, not yet renamed; ``replace``: just before a rename).
_KILLER = textwrap.dedent("""
    import os, signal, sys
    import ftdeploy.files as files
    where, at = os.environ["KILL_IN"], int(os.environ["KILL_AT"])
    calls = [0]
    def count():
        calls[0] += 1
        if calls[0] == at:
            os.kill(os.getpid(), signal.SIGKILL)
    if where == "write":
        whole = files._write_whole
        def _write_whole(path, data):
            whole(path, data)
            count()
        files._write_whole = _write_whole
    else:
        replace = os.replace
        def _replace(a, b):
            count()
            replace(a, b)
        files.os.replace = _replace
    from ftdeploy.cli import main
    sys.argv = ["ftdeploy", *sys.argv[1:]]
    main()
""")


def _run_killed(tmp_path: Path, argv: list[str], kill_in: str, kill_at: int) -> subprocess.CompletedProcess:
    script = tmp_path / "killer.py"
    script.write_text(_KILLER)
    # two threads, as the in-process runs (conftest): the same sums in the same order, bit for bit
    env = dict(ENV, KILL_IN=kill_in, KILL_AT=str(kill_at), OMP_NUM_THREADS="2")
    return subprocess.run([sys.executable, str(script), *argv], env=env, capture_output=True, text=True, timeout=300)


# --- files.py: the pieces ---------------------------------------------------------------------


def test_a_full_disk_leaves_the_previous_file_and_no_temporary_one(tmp_path, monkeypatch):
    path = tmp_path / "table.json"
    path.write_text("previous\n")
    real_write = os.write

    def full(fd, data):  # half the bytes land, then the disk is full
        if len(data) > 4:
            real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "write", full)
    with pytest.raises(FtdeployError, match=r"table.json: cannot write: No space left on device"):
        write_atomic(path, "new contents\n" * 10)
    assert path.read_text() == "previous\n" and _temps(tmp_path) == []


def test_clean_up_on_a_read_only_file_system_never_raises_over_the_real_error(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(files.os, "open", read_only)
    monkeypatch.setattr(Path, "unlink", read_only)  # as on a read-only mount: even removing a missing file fails
    with pytest.raises(FtdeployError, match="cannot write: Read-only file system") as exc:
        write_atomic(tmp_path / "config.yaml", "a: 1\n")
    assert exc.value.__suppress_context__, "one line: the OSError is not chained into a traceback"
    with pytest.raises(FtdeployError, match="Read-only file system"):
        append_line(tmp_path / "log.jsonl", "{}")


def test_a_log_line_cut_short_by_a_full_disk_is_taken_back(tmp_path, monkeypatch):
    log = tmp_path / "log.jsonl"
    append_line(log, json.dumps({"epoch": 1}))
    real_write = os.write
    monkeypatch.setattr(files.os, "write", lambda fd, data: real_write(fd, bytes(data[:5])))  # a short write
    with pytest.raises(FtdeployError, match="log.jsonl: cannot write"):
        append_line(log, json.dumps({"epoch": 2, "loss": 1.5}))
    assert log.read_text() == '{"epoch": 1}\n', "whole lines only"


def test_stale_temporary_files_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    dead, live = _dead_pid(), os.getppid()
    (tmp_path / "runs" / "a").mkdir(parents=True)
    stale = [tmp_path / f".model.pt.{dead}.tmp", tmp_path / "runs" / "a" / f".log.jsonl.{dead}.tmp"]
    kept = [tmp_path / f".model.pt.{live}.tmp", tmp_path / f".report.json.{os.getpid()}.tmp", tmp_path / "notes.tmp"]
    for p in stale + kept:
        p.write_text("x")
    assert sorted(remove_stale_temps(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale)


def _process_holding(folder) -> subprocess.Popen:
    """Another process, holding ``folder``'s run-folder lock (for up to two minutes) once this returns."""
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from ftdeploy.files import run_folder_lock
        with run_folder_lock({str(folder)!r}):
            print("held", flush=True)
            time.sleep(120)
    """)], env=ENV, stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_folder_lock_refuses_a_second_writer_naming_it_and_dies_with_its_holder(tmp_path):
    folder = tmp_path / "run"
    holder = _process_holding(folder)
    try:
        assert lock_holder(folder) == holder.pid
        with pytest.raises(FtdeployError, match=rf"^{folder}: run folder in use by process {holder.pid}; "):
            with run_folder_lock(folder):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert lock_holder(folder) is None, "a killed holder leaves no stale lock"
    with run_folder_lock(folder):
        with run_folder_lock(folder):  # re-entrant within one process
            assert lock_holder(folder) is None, "this process's own lock does not refuse it"
    assert list(folder.iterdir()) == [], "no lock file: the folder itself is locked"


def test_a_set_of_files_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    """A report's files: a full disk while the temporaries are written, or a rename failing
    midway, leaves the previous set as it was, every file of it, and no temporary file."""
    names = ["report.json", "report.md", "report.xml", "report.html", "report.sig"]
    for name in names[:-1]:
        (tmp_path / name).write_text(f"old {name}")
    new = {tmp_path / name: f"new {name}".encode() for name in names}
    real_write, real_replace = os.write, os.replace
    writes = []

    def third_file_fills_the_disk(fd, data):
        writes.append(fd)
        if len(writes) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(files.os, "write", third_file_fills_the_disk)
    with pytest.raises(OSError):
        files.replace_together(new)
    monkeypatch.setattr(files.os, "write", real_write)
    renames = []

    def third_rename_fails(a, b):
        renames.append(b)
        if len(renames) == 3:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_replace(a, b)

    monkeypatch.setattr(files.os, "replace", third_rename_fails)
    with pytest.raises(OSError):
        files.replace_together(new)
    monkeypatch.setattr(files.os, "replace", real_replace)
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {name: f"old {name}" for name in names[:-1]}
    files.replace_together(new, remove=[])
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {name: f"new {name}" for name in names}


def test_a_report_that_cannot_be_written_is_one_error_and_leaves_the_previous_one(tmp_path, monkeypatch):
    from ftdeploy import report as report_module

    (tmp_path / "report.json").write_text("old")
    monkeypatch.setattr(report_module, "_renderers", lambda report: {"report.md": lambda r: "md"})

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files, "_write_whole", full)
    with pytest.raises(VerifyError, match=rf"^{tmp_path}: cannot write report: No space left on device$"):
        report_module.write_report({"verdict": {}}, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"] and (tmp_path / "report.json").read_text() == "old"


# --- the command line -------------------------------------------------------------------------


def test_two_trainings_into_one_folder_the_second_refused_in_one_line(small_npz, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "ftdeploy", *_train_args(small_npz, out, epochs=40)], env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while lock_holder(out) != first.pid:
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.2)
        code, _, err = run_main(monkeypatch, capsys, *_train_args(small_npz, out, 2, "--resume"))
        assert code == 2 and err.splitlines() == [f"error: {out}: run folder in use by process {first.pid}; wait for it to end, or "
                                                  "stop it (a second run there would interleave their files)"], err  # fmt: skip
        while not (out / "model.pt").is_file():
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        first.kill()  # killed outright: its lock dies with it
        first.wait()
    code, _, err = run_main(monkeypatch, capsys, *_train_args(small_npz, out, 40, "--force", "--epochs", "1"))
    assert code == 0, err
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1] and _temps(out) == []


def test_an_unwritable_out_is_refused_before_any_work(small_npz, tmp_path, monkeypatch, capsys):
    """Where the folder cannot be written (read-only permissions or file system), one line and exit
    2 before the data loads; a file standing in the way likewise."""
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == ro else real_access(p, mode, **kw))
    code, _, err = run_main(monkeypatch, capsys, *_train_args(small_npz, ro / "run"))
    assert code == 2 and err.splitlines() == [f"error: --out: {ro}: not writable (folder to make {ro / 'run'} in; read-only file "
                                              "system or permissions)"], err  # fmt: skip
    assert not any(ro.iterdir())
    (tmp_path / "a-file").write_text("")
    code, _, err = run_main(monkeypatch, capsys, *_train_args(small_npz, tmp_path / "a-file" / "run"))
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err


def test_a_read_only_folder_for_real(small_npz, tmp_path, monkeypatch, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("permissions do not bind this user (root)")
        code, _, err = run_main(monkeypatch, capsys, *_train_args(small_npz, ro))
        assert code == 2 and err.startswith(f"error: --out: {ro}: not writable") and len(err.splitlines()) == 1
    finally:
        ro.chmod(0o755)


def test_a_full_disk_during_training_is_one_line_and_leaves_nothing_torn(small_npz, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real_write = os.write

    def full_at_the_checkpoint(fd, data):
        if len(data) > 100_000:  # the first checkpoint: config.yaml and the log went through
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(files.os, "write", full_at_the_checkpoint)
    code, _, err = run_main(monkeypatch, capsys, *_train_args(small_npz, out, 1))
    assert code == 2 and err.splitlines() == [f"error: {out / 'resume.pt'}: cannot write: No space left on device"], err
    assert _temps(out) == [] and not (out / "model.pt").exists()
    assert all(p.stat().st_size > 0 for p in out.iterdir() if not p.name.startswith(".")), "no 0-byte file"
    assert {p.name for p in out.iterdir() if not p.name.startswith(".")} == {"config.yaml", "log.jsonl", "summary.csv"}


def test_a_run_refused_for_its_data_writes_nothing(small_npz, tmp_path, monkeypatch, capsys):
    """A checkpoint of 10 classes retrained on data of 5: refused before the folder's first file."""
    from ftdeploy.data import load_data
    from ftdeploy.profiles import load_target

    from _quick_model import quick_checkpoint

    pre = quick_checkpoint(load_data(f"npz:{small_npz}"), load_target("paper-diff8")[0], tmp_path / "pre")
    with np.load(small_npz) as z:
        arrays = {k: z[k] for k in z.files}
    keep = arrays["labels"] < 5
    idx = np.flatnonzero(keep)
    offsets = arrays["offsets"].astype(np.int64)
    parts = [arrays["jpeg"][offsets[i] : offsets[i + 1]] for i in idx]
    five = tmp_path / "five.npz"
    np.savez(five, jpeg=np.concatenate(parts), offsets=np.concatenate([[0], np.cumsum([len(p) for p in parts])]),
             labels=arrays["labels"][idx], classes=arrays["classes"][:5])  # fmt: skip
    out = tmp_path / "run"
    code, _, err = run_main(monkeypatch, capsys, "train", "--profile", "demo", "--from", pre, "--method", "one-shot", "--epochs", "1",
                            "--device", "cpu", "--data", f"npz:{five}", "--out", out)  # fmt: skip
    assert code == 2 and err.splitlines() == [f"error: --data: the --from checkpoint has 10 classes, npz:{five} has 5"], err
    assert not out.exists()


# --- kills, then a rerun ------------------------------------------------------------------------


def test_a_training_killed_at_random_points_resumes_to_the_uninterrupted_model(small_npz, tmp_path, monkeypatch, capsys):
    """SIGKILL inside a write (its temporary file written, not yet renamed) and inside a rename, at
    seeded points; each rerun with --resume continues, and the run ends bit-identical to one never
    interrupted, with every log row once and no temporary file."""
    rng = random.Random(SEED)
    ref = tmp_path / "ref"
    code, _, err = run_main(monkeypatch, capsys, *_train_args(small_npz, ref, 3))
    assert code == 0, err
    out = tmp_path / "run"
    # writes per epoch: log rewrite (first), summary.csv, resume.pt, model.pt; config.yaml once
    for kill_in, kill_at in (("write", rng.randint(3, 6)), ("replace", rng.randint(2, 5))):
        killed = _run_killed(tmp_path, _train_args(small_npz, out, 3, "--resume"), kill_in, kill_at)
        assert killed.returncode == -signal.SIGKILL, (kill_in, kill_at, killed.stderr)
        if kill_in == "write":
            assert _temps(out), "the kill left a temporary file behind"
    code, _, err = run_main(monkeypatch, capsys, *_train_args(small_npz, out, 3, "--resume"))
    assert code == 0, err
    assert _temps(out) == [], "the rerun removed what the killed writers left"
    a, b = load_checkpoint(ref / "model.pt"), load_checkpoint(out / "model.pt")
    assert a["epochs_done"] == b["epochs_done"] == 3
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    ref_rows = [json.loads(line) for line in (ref / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [(r["train_loss"], r["val_acc"]) for r in rows] == [(r["train_loss"], r["val_acc"]) for r in ref_rows]


def test_a_killed_sweep_takes_its_trainings_with_it_and_the_rerun_completes(small_npz, tmp_path, monkeypatch, capsys):
    from ftdeploy.data import load_data
    from ftdeploy.profiles import load_target

    from _quick_model import quick_checkpoint

    pre = quick_checkpoint(load_data(f"npz:{small_npz}"), load_target("paper-diff8")[0], tmp_path / "pre")
    out = tmp_path / "sweep"
    args = ["sweep", "--from", str(pre), "--profile", "demo", "--out", str(out), "--methods", "one-shot,progressive",
            "--train-rates", "0.05", "--test-rates", "0,0.05", "--chips", "2", "--epochs", "4", "--device", "cpu",
            "--data", f"npz:{small_npz}"]  # fmt: skip
    sweep = subprocess.Popen([sys.executable, "-m", "ftdeploy", *args, "--jobs", "2"], env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)  # fmt: skip
    runs = [out / "runs" / "one-shot-0.05", out / "runs" / "progressive-0.05"]
    deadline = time.monotonic() + 240
    children: list[int] = []
    try:
        while len(children) < 2:
            assert sweep.poll() is None and time.monotonic() < deadline, sweep.communicate()[0]
            children = [pid for pid in (lock_holder(r) for r in runs) if pid]
            time.sleep(0.2)
        time.sleep(random.Random(SEED + 1).uniform(0.0, 1.5))  # somewhere in an epoch
    finally:
        sweep.kill()
        sweep.wait()
    assert all(pid != sweep.pid for pid in children)
    deadline = time.monotonic() + 60
    while any(_alive(pid) for pid in children):
        assert time.monotonic() < deadline, f"trainings {children} outlived their sweep"
        time.sleep(0.2)
    # The rerun (waiting a moment for trainings still stopping) resumes both cells where they stopped.
    code, stdout, err = run_main(monkeypatch, capsys, *args, "--jobs", "1")
    assert code == 0, err
    table = json.loads((out / "table.json").read_text())
    assert [r["model"] for r in table["rows"]] == ["baseline", "one-shot P^T=0.05", "progressive P^T=0.05"]
    assert all(r["epochs_done"] == r["epochs"] for r in table["rows"][1:])
    assert _temps(out) == []


def test_a_second_sweep_refuses_a_cell_another_process_still_trains(tmp_path, monkeypatch):
    from ftdeploy.errors import ConfigError
    from ftdeploy.sweep import refuse_runs_in_use

    run = tmp_path / "runs" / "one-shot-0.05"
    holder = _process_holding(run)
    try:
        with pytest.raises(ConfigError, match=rf"^{run}: still being trained by process {holder.pid} "):
            refuse_runs_in_use([run], wait_s=0.5)
    finally:
        holder.kill()
        holder.wait()
    refuse_runs_in_use([run], wait_s=0.5)  # free once its holder is gone


def test_a_sign_off_killed_while_writing_its_report_leaves_the_previous_one_then_completes(small_npz, tmp_path, monkeypatch,
                                                                                             capsys):  # fmt: skip
    from ftdeploy.data import load_data
    from ftdeploy.export import export_onnx
    from ftdeploy.profiles import load_profile

    from _quick_model import quick_checkpoint

    resolved = load_profile("demo")
    ckpt = quick_checkpoint(load_data(f"npz:{small_npz}"), resolved.target, tmp_path / "pre")
    onnx_path = tmp_path / "model.onnx"
    export_onnx(load_checkpoint(ckpt), resolved, onnx_path)
    out = tmp_path / "report"
    args = ["verify", str(onnx_path), "--profile", "demo", "--data", f"npz:{small_npz}", "--chips", "2", "--fixed-chips",
            "--out", str(out)]  # fmt: skip
    code, _, err = run_main(monkeypatch, capsys, *args)
    assert code in (0, 1), err
    before = {p.name: p.read_bytes() for p in out.glob("report.*")}
    assert set(before) == {"report.json", "report.md", "report.xml", "report.html"}
    # Killed with some of the new report's files written to their temporaries, none renamed yet
    # (a rename failing midway is undone: test_a_set_of_files_is_replaced_whole_or_not_at_all).
    killed = _run_killed(tmp_path, [*args, "--chip-seed", "7"], "write", random.Random(SEED + 2).randint(1, 4))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert {p.name: p.read_bytes() for p in out.glob("report.*")} == before, "the previous report, every file of it"
    assert _temps(out)
    code, _, err = run_main(monkeypatch, capsys, *args, "--chip-seed", "7")
    assert code in (0, 1), err
    after = {p.name: p.read_bytes() for p in out.glob("report.*")}
    assert set(after) == set(before) and after != before
    assert json.loads(after["report.json"])["signoff"]["seed"] == 7
    assert _temps(out) == []
