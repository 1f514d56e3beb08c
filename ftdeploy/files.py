"""Writing files so that nothing a user made is lost or torn: every output is written to a
temporary file beside its destination and renamed over it (atomic on POSIX), so an interrupted
run leaves either the previous file or the new one, never half of one."""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import FtdeployError


def write_atomic(path: str | Path, data: bytes | str, error: type[FtdeployError] = FtdeployError) -> Path:
    """Write ``data`` to ``path`` via a temporary file and a rename; on failure raise ``error``
    with one line naming the file, and leave no temporary file behind."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise error(f"{path.parent}: cannot create folder: {exc.strerror}") from None
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        raise error(f"{path}: cannot write: {exc.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


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
