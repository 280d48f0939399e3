"""No model or stage name of a particular model in analysis/, training/, demo/ or cli/ (issue 22).

Knowledge of a model family lives in its adapter under models/; the layers above ask the model's
declared roles and metadata. This test reads those packages' syntax trees and fails on any string
constant that is a registered family's name or one of its stage names (``"detr-r50"``, ``"bb"``,
``"enc"``, ``"pred"``, ``"s4"``, ...), except in docstrings and in argparse's help texts
(``help=``, ``description=``, ``epilog=``, ``usage=``), where examples belong.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from modinv.models.registry import families

SRC = Path(__file__).resolve().parents[1] / "src" / "modinv"
PACKAGES = ("analysis", "training", "demo", "cli")
TEXT_KEYWORDS = {"help", "description", "epilog", "usage"}
# The names the issue lists, and every built-in family's name and stages (new families join by registering).
LISTED = {"detr-r50", "vit-b16", "deit-b16", "swin-b", "mobilenet-v2", "bb", "enc", "dec", "pred", "s1", "s2", "s3",
          "s4"}


def forbidden_names() -> set[str]:
    """The issue's names plus every registered (non-prefix) family's name and stage names."""
    declared = [f for f in families().values() if not f.is_prefix]
    return LISTED | {f.name for f in declared} | {s for f in declared for s in f.stages}


def _texts(tree: ast.AST) -> set[int]:
    """ids of the constants that are docstrings or sit inside a help/description/epilog/usage argument."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                skip.add(id(first.value))
        if isinstance(node, ast.keyword) and node.arg in TEXT_KEYWORDS:
            skip.update(id(sub) for sub in ast.walk(node.value))
    return skip


def model_names_in(source: str, names: set[str]) -> list[tuple[int, str]]:
    """``(line, string)`` of every string constant of ``source`` that is one of ``names``, outside
    docstrings and help texts."""
    tree = ast.parse(source)
    skip = _texts(tree)
    return sorted((node.lineno, node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str)
                  and node.value in names and id(node) not in skip)


def test_the_check_finds_names_in_code_but_not_in_texts():
    source = ('"""Module text: "bb"."""\n'
              'STAGE = "bb"\n'
              'def f(p):\n'
              '    """bb"""\n'
              '    p.add_argument("--x", default="enc", help="e.g. bb", description=f"{1} enc")\n'
              '    return {"pred": 1}, f"{p}" + "s4"\n')
    assert model_names_in(source, {"bb", "enc", "pred", "s4"}) == [(2, "bb"), (5, "enc"), (6, "pred"), (6, "s4")]


def test_forbidden_names_cover_every_built_in_family():
    names = forbidden_names()
    assert {"vit-b16-noselfattn", "s8", "s16", "s32"} <= names and "img" not in names  # stage 0 is no model's


@pytest.mark.parametrize("package", PACKAGES)
def test_no_model_or_stage_name_outside_models(package):
    names = forbidden_names()
    found = [f"{path.relative_to(SRC.parent)}:{line}: {text!r}"
             for path in sorted((SRC / package).rglob("*.py"))
             for line, text in model_names_in(path.read_text(encoding="utf-8"), names)]
    assert not found, ("model or stage names outside models/ (ask the model's roles or metadata instead): "
                       + "; ".join(found))
