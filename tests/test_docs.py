"""The documentation site builds with warnings as errors, API reference included.

``mkdocs build --strict`` fails on a broken link, a missing image or page, and on any mkdocstrings
reference that no longer resolves (a renamed function, a docstring griffe cannot read), so a change
that breaks the documentation fails the suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_docs_build_strictly_with_the_api_reference(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    reference = (site / "reference" / "index.html").read_text(encoding="utf-8")
    assert "modinv.load_model" in reference and "modinv.StagedModel" in reference
    assert "modinv.inverse.chain.InverseChain" in (site / "reference" / "inverse" / "index.html").read_text(encoding="utf-8")
    for page in ("quickstart", "models", "training", "analyses", "hub"):
        assert (site / page / "index.html").is_file(), page
