"""Writing files so that nothing a user made is lost or torn: every output is written to a
temporary file beside its destination and renamed over it (atomic on POSIX), so an interrupted
run leaves either the previous file or the new one, never half of one."""

from __future__ import annotations

import fcntl
import hashlib
import os
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
