"""Writing files so that nothing a user made is lost or torn: every output is written to a
temporary file beside its destination and renamed over it (atomic on POSIX), so an interrupted
run leaves either the previous file or the new one, never half of one."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import FtdeployError


def temp_name(path: Path) -> Path:
    """The temporary file a write of ``path`` by this process goes through: ``.NAME.PID.tmp``
    beside it (the pid tells a later run whether its writer is still alive)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def remove_quietly(path: Path) -> None:
    """Remove ``path`` if it is there; clean-up that never raises over the error that made it
    necessary (a read-only or vanished folder leaves nothing to remove)."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def _write_whole(path: Path, data: bytes) -> None:
    """Write ``data`` as a new file and flush it to the disk before it is renamed into place: a
    power cut after the rename must not leave a 0-byte file under the final name."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | Path, data: bytes | str, error: type[FtdeployError] = FtdeployError) -> Path:
    """Write ``data`` to ``path`` via a temporary file and a rename; on failure raise ``error``
    with one line naming the file, and leave no temporary file behind."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise error(f"{path.parent}: cannot create folder: {exc.strerror}") from None
    tmp = temp_name(path)
    try:
        _write_whole(tmp, data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except OSError as exc:
        raise error(f"{path}: cannot write: {exc.strerror}") from None
    finally:
        remove_quietly(tmp)
    return path


def replace_together(files: dict[Path, bytes], remove: list[Path] = ()) -> None:
    """Put ``files`` (path: bytes) in place as one set, and remove the files ``remove`` names:
    every file is written to its temporary file first (a full disk fails there, before any
    file is replaced); then each is renamed over its destination. Should a rename fail, those
    already made are undone, so the previous set stays whole. Every temporary file is removed,
    whatever happens; clean-up never raises over the error. Raises the first OSError."""
    files = {Path(p): data for p, data in files.items()}
    tmps: dict[Path, Path] = {}
    backups: dict[Path, Path | None] = {}  # destination -> a link to its previous file (None: there was none)
    done: list[Path] = []
    try:
        for path, data in files.items():
            tmps[path] = temp_name(path)
            _write_whole(tmps[path], data)
        for path in [*files, *remove]:
            backups[path] = _keep_previous(path)
        try:
            for path, tmp in tmps.items():
                os.replace(tmp, path)
                done.append(path)
            for path in remove:
                path.unlink(missing_ok=True)
        except OSError:
            for path in done:  # undo: the previous files back, or none where there was none
                try:
                    if backups[path] is not None:
                        os.replace(backups[path], path)
                    else:
                        path.unlink(missing_ok=True)
                except OSError:
                    pass
            for path in remove:
                if backups.get(path) is not None and not path.exists():
                    try:
                        os.replace(backups[path], path)
                    except OSError:
                        pass
            raise
    finally:
        for tmp in [*tmps.values(), *(b for b in backups.values() if b is not None)]:
            remove_quietly(tmp)


def _keep_previous(path: Path) -> Path | None:
    """A hard link to ``path``'s current file (to put back should the set fail), None where
    there is no file."""
    if not path.is_file():
        return None
    backup = path.with_name(f".{path.name}.previous.{os.getpid()}.tmp")
    remove_quietly(backup)
    try:
        os.link(path, backup)
    except OSError:
        _write_whole(backup, path.read_bytes())  # a file system without hard links
    return backup


def append_line(path: str | Path, line: str, error: type[FtdeployError] = FtdeployError) -> None:
    """Append one line to ``path`` (a log) in one write, flushed to the disk: a reader sees whole
    lines only. A write cut short (a full disk) is taken back, so the file ends at its last whole
    line, and ``error`` is raised naming the file."""
    path = Path(path)
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError as exc:
        raise error(f"{path}: cannot write: {exc.strerror}") from None
    try:
        size = os.fstat(fd).st_size
        try:
            if os.write(fd, data) != len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.fsync(fd)
        except OSError as exc:
            try:
                os.ftruncate(fd, size)
            except OSError:
                pass
            raise error(f"{path}: cannot write: {exc.strerror}") from None
    finally:
        os.close(fd)


def writable_folder_problem(folder: str | Path) -> str | None:
    """Why files cannot be written in ``folder`` (made if missing), known before any work: the
    folder, or the nearest existing folder above it, is not writable (read-only permissions or a
    read-only file system). None where nothing stands in the way that can be known in advance
    (a full disk shows only when written)."""
    folder = Path(folder)
    for part in (folder, *folder.parents):
        if part.exists():
            if part.is_dir() and not os.access(part, os.W_OK | os.X_OK):
                what = "folder" if part == folder else f"folder to make {folder} in"
                return f"{part}: not writable ({what}; read-only file system or permissions)"
            return None
    return None


# --- run folders: one writer at a time, and what a killed writer left -------------------------

_TEMP_NAME = re.compile(r"^\..+\.(\d+)\.tmp$")
_held: dict[str, list] = {}  # resolved folder -> [its locked descriptor, depth]: this process's locks


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (on this machine, in this pid namespace)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's, alive
        return True
    return True


def remove_stale_temps(folder: str | Path, depth: int = 2) -> list[Path]:
    """Remove the temporary files (``.NAME.PID.tmp``) that writers killed mid-write left in
    ``folder`` and its subfolders ``depth`` levels down: those whose pid is no live process.
    A live writer's temporary file is never touched. Returns what was removed."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                if depth > 0:
                    removed += remove_stale_temps(entry.path, depth - 1)
                continue
        except OSError:
            continue
        found = _TEMP_NAME.match(entry.name)
        if found and int(found.group(1)) != os.getpid() and not pid_alive(int(found.group(1))):
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except OSError:
                pass
    return removed


def _open_folder(folder: Path) -> int:
    return os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))


def _flock_holder(fd: int) -> int | None:
    """The pid holding an flock on the file open as ``fd``, from the kernel's list of locks
    (/proc/locks on Linux); None where it cannot be told."""
    st = os.fstat(fd)
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    found = None
    try:
        with open("/proc/locks") as locks:
            for line in locks:
                fields = line.split()
                if len(fields) > 5 and fields[1] == "FLOCK" and fields[5].endswith(f":{st.st_ino}") and fields[4].isdigit():
                    if fields[5] == device:
                        return int(fields[4])
                    found = found or int(fields[4])  # the device numbered otherwise (an overlay file system)
    except OSError:
        return None
    return found


def lock_holder(folder: str | Path) -> int | None:
    """The pid of the process holding ``folder``'s lock (-1 where it cannot be told which), None
    where none holds it (this process's own lock counts as none). Takes no lock."""
    folder = Path(folder)
    if not folder.is_dir() or str(folder.resolve()) in _held:
        return None
    try:
        fd = _open_folder(folder)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _flock_holder(fd) or -1
        except OSError:
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _holder_words(pid: int | None) -> str:
    return f"process {pid}" if pid and pid > 0 else "another process"


@contextmanager
def run_folder_lock(folder: str | Path, error: type[FtdeployError] = FtdeployError, what: str = "run folder") -> Iterator[Path]:
    """Hold ``folder``'s lock (the folder made if missing) for the block: one process writes a
    run folder at a time. Another process holding it is refused at once, in one line naming the
    folder and its pid (``error``). Re-entrant within a process (a training inside a command
    that already holds its folder). The lock is an ``flock`` on the folder itself: no lock file
    is written, and it dies with its process, so a killed run never leaves a stale lock.
    Acquiring it removes the temporary files killed writers left (:func:`remove_stale_temps`)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise error(f"{folder}: cannot create folder: {exc.strerror}") from None
    key = str(folder.resolve())
    if key in _held:
        _held[key][1] += 1
        try:
            yield folder
        finally:
            _held[key][1] -= 1
        return
    try:
        fd = _open_folder(folder)
    except OSError as exc:
        raise error(f"{folder}: cannot open folder: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise error(f"{folder}: {what} in use by {_holder_words(_flock_holder(fd))}; wait for it to end, or stop it "
                        f"(a second run there would interleave their files)") from None  # fmt: skip
        except OSError:
            pass  # a file system without flock (some network mounts): the run goes unlocked
        remove_stale_temps(folder)
        _held[key] = [fd, 1]
        try:
            yield folder
        finally:
            del _held[key]
    finally:
        os.close(fd)  # releases the flock


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (a model may be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextmanager
def exclusive_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if missing) for the block: processes
    that read, merge and rewrite one shared file (a sweep folder's table, a study's manifest)
    take turns, so none overwrites what another has just added."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file is closed
        yield


# --- what a file holds, told by its bytes, not by its name ----------------------------------

#: The first bytes torch.save writes: a zip archive (PyTorch 1.6 and later) or, in the legacy
#: format, a pickled magic number.
_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"
_FTDEPLOY_FORMAT = re.compile(rb"ftdeploy-[a-z]+/[0-9]+")


def torch_file_format(path: str | Path) -> str | None:
    """Whether ``path`` is a file torch.save wrote, read from its bytes: the ftdeploy format it
    declares (``ftdeploy-checkpoint/1``, ``ftdeploy-resume/1``), '' for another PyTorch file, None
    for any other file (or none). Unpickles nothing: the format, the first value of an ftdeploy
    file's dict, is found in the first bytes of the archive's pickle."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(_LEGACY_TORCH_MAGIC))
        if head == _LEGACY_TORCH_MAGIC:
            return ""
        if not head.startswith(_ZIP_MAGIC):
            return None
        with zipfile.ZipFile(path) as archive:
            pickles = [name for name in archive.namelist() if name == "data.pkl" or name.endswith("/data.pkl")]
            if not pickles:
                return None
            with archive.open(pickles[0]) as pickled:
                found = _FTDEPLOY_FORMAT.search(pickled.read(256))
    except (OSError, zipfile.BadZipFile):
        return None
    return found.group().decode() if found else ""


def is_onnx_file(path: str | Path) -> bool:
    """Whether ``path`` parses as an ONNX model with a graph, whatever its name."""
    import onnx

    try:
        return len(onnx.load(str(path), load_external_data=False).graph.node) > 0
    except Exception:  # protobuf's DecodeError and onnx's own errors share no base class
        return False


def folder_given(path: str | Path, expected: str, usual: str | None = None) -> str:
    """The line for a folder given where ``expected`` (a file) was: naming the ``usual`` file
    inside it where there is one (a run folder given for its model.pt)."""
    inside = Path(path) / usual if usual else None
    hint = f"; did you mean {inside}?" if inside is not None and inside.is_file() else ""
    return f"{path}: a folder, expected {expected}{hint}"


_ANSI_STYLE = re.compile(r"\x1b\[[0-9;]*m")


def reason_line(exc: BaseException) -> str:
    """One line of an exception's text for a user: styling removed, its first non-empty line, or
    where torch's weights-only unpickler refused a file, its reason without its advice on
    allowlisting what the file holds (ftdeploy never unpickles code)."""
    lines = [line.strip() for line in _ANSI_STYLE.sub("", str(exc)).splitlines() if line.strip()]
    refusal = next((line for line in lines if line.startswith("WeightsUnpickler error: ")), None)
    if refusal:
        return refusal.removeprefix("WeightsUnpickler error: ").split(". Please use")[0]
    return lines[0] if lines else ""


# --- processes a run starts -------------------------------------------------------------------

#: Set by a sweep in the environment of each training it starts: the sweep's pid. The child asks
#: the kernel to send it SIGTERM when that process dies (:func:`die_with_parent`), so a killed
#: sweep never leaves trainings running unwatched.
PARENT_PID_ENV = "FTDEPLOY_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Where :data:`PARENT_PID_ENV` names this process's parent: be sent SIGTERM when it dies
    (Linux ``prctl(PR_SET_PDEATHSIG)``; SIGTERM stops a training like Ctrl-C, its finished epochs
    saved), and exit at once where it has died already. Elsewhere, or without the variable, nothing."""
    import signal
    import sys

    wanted = os.environ.pop(PARENT_PID_ENV, "")  # not handed down to this process's own children
    if not wanted.isdigit():
        return
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != int(wanted):  # the parent died before the request: nobody watches this run
        sys.exit(130)
