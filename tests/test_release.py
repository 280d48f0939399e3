"""Release files agree with the package: one version, written once, named everywhere it must be."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import modinv

ROOT = Path(__file__).resolve().parents[1]


def test_version_is_declared_once_and_every_release_file_names_it():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert "version" not in project and "version" in project["dynamic"]
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## \[([^\]]+)\]", changelog, re.M)
    assert headings[0] in ("Unreleased", modinv.__version__)  # changes since the release gather above it
    assert next(h for h in headings if h != "Unreleased") == modinv.__version__
    citation = (ROOT / "CITATION.cff").read_text(encoding="utf-8")
    assert re.search(r'^version: "(\S+)"', citation, re.M).group(1) == modinv.__version__


def test_licence_is_an_spdx_expression_backed_by_the_licence_file():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text(encoding="utf-8").startswith("MIT License")
    assert (ROOT / "src" / "modinv" / "py.typed").is_file()
