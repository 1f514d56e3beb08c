"""Every malformed or hostile input of the corpus (tests/corpus/make_corpus.py) refused by the
command line as the project's rule says: exit 2, one ``error:`` line on stderr naming the file
(and field), no traceback, and nothing written where the command would write.

The corpus is built once, as this module is collected (each case is its own test id, so the
cases must be known then): a tiny checkpoint and export (a few seconds), then every case's files."""

from __future__ import annotations

import atexit
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "corpus"))

from make_corpus import make_base, make_corpus  # noqa: E402

from conftest import run_main  # noqa: E402

_ROOT = Path(tempfile.mkdtemp(prefix="ftdeploy-corpus-"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)
CASES = {case.name: case for case in make_corpus(_ROOT / "cases", make_base(_ROOT / "base"))}
#: The line may quote a value: never more than this many characters of it (an alias bomb's or a
#: 100,000-character value's echo must not flood the terminal).
MAX_LINE = 1000


def test_the_corpus_is_large():
    assert len(CASES) >= 150


#: Seconds a case may take: a refusal is immediate, so a case still running is a hostile input
#: being processed (an alias bomb expanding, a decompression bomb decoding).
CASE_SECONDS = 30


class _TookTooLong(BaseException):  # not an Exception: the CLI's boundary must not swallow it
    pass


def _too_long(signum, frame):
    raise _TookTooLong(f"still running after {CASE_SECONDS} s")


@pytest.mark.parametrize("name", list(CASES))
def test_refused_cleanly(name, monkeypatch, capsys):
    case = CASES[name]
    previous = signal.signal(signal.SIGALRM, _too_long)
    signal.alarm(CASE_SECONDS)
    try:
        code, out, err = run_main(monkeypatch, capsys, *case.argv)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert "Traceback" not in err, err
    assert code == 2, (code, out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0].strip() != "error:", err
    line = lines[0]
    for word in case.names:
        assert word in line, f"{word!r} not named in: {line}"
    assert len(line) <= MAX_LINE, f"{len(line)} characters: {line[:200]}..."
    if case.out is not None:
        assert not case.out.exists(), f"{case.out} was left behind"


def test_a_merge_key_may_still_be_overridden(tmp_path):
    """Duplicate keys are refused as written: a key a YAML merge (``<<: *base``) brings in may
    still be set again beside it, as YAML intends."""
    from ftdeploy.profiles import read_yaml

    path = tmp_path / "merge.yaml"
    path.write_text("base: &b {a: 1, c: 2}\nx:\n  <<: *b\n  a: 5\n")
    assert read_yaml(path)["x"] == {"a": 5, "c": 2}
