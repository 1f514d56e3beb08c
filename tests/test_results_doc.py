"""docs/RESULTS.md is exactly what scripts/render_results.py makes of the archived artefacts in
docs/results/c10: no figure in it is typed by hand."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_results_page_is_rendered_from_the_archived_artefacts(tmp_path):
    out = tmp_path / "RESULTS.md"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "render_results.py"), str(ROOT / "docs" / "results" / "c10"),
                    "-o", str(out)], check=True, capture_output=True)  # fmt: skip
    assert out.read_text() == (ROOT / "docs" / "RESULTS.md").read_text()
    text = out.read_text()
    for section in ("## Table I (ours)", "## What the issue asked for", "## Pruned model", "## Training curves"):
        assert section in text
