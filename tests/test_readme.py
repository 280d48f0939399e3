"""The README's Python snippets run as written (offline: random weights, small sizes), each in a
fresh namespace inside a temporary folder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_snippets() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.S | re.M)


def test_the_readme_has_python_snippets():
    assert len(python_snippets()) >= 2


@pytest.mark.parametrize("index", range(len(python_snippets())))
def test_readme_snippet_runs(index, tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    code = python_snippets()[index]
    exec(compile(code, f"README.md python snippet {index + 1}", "exec"), {"__name__": f"readme_{index}"})
