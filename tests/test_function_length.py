"""No function in ``src/modinv`` is longer than 80 lines (the project's bar), read with ``ast``:
methods and nested functions too, from the ``def`` line to the last line of the body.

KNOWN_LONG lists the functions still over the limit while they are being split (none now); it may
only shrink: an entry that is no longer too long (or no longer exists) fails the test until removed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import modinv

SRC = Path(modinv.__file__).parent
MAX_LINES = 80
KNOWN_LONG: set[str] = set()  # functions still over the limit while being split (none now)


def long_functions(path: Path, root: Path, limit: int = MAX_LINES) -> dict[str, int]:
    """``{"file:qualified.name": lines}`` of the functions in ``path`` longer than ``limit`` lines."""
    found = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef) and child.end_lineno - child.lineno + 1 > limit:
                    found[f"{path.relative_to(root).as_posix()}:{name}"] = child.end_lineno - child.lineno + 1
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(path.read_text(), filename=str(path)), "")
    return found


def test_no_function_is_over_80_lines():
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        found.update(long_functions(path, SRC))
    new = {name: lines for name, lines in found.items() if name not in KNOWN_LONG}
    assert not new, f"functions over {MAX_LINES} lines (split them): {new}"
    stale = KNOWN_LONG - set(found)
    assert not stale, f"no longer over {MAX_LINES} lines: remove from KNOWN_LONG {sorted(stale)}"


def test_the_scan_sees_long_methods_and_nested_functions(tmp_path):
    body = "\n".join(f"        x{i} = {i}" for i in range(MAX_LINES))
    (tmp_path / "probe.py").write_text(
        f"class A:\n    def long(self):\n{body}\n\n    def short(self):\n        return 1\n\n"
        f"def outer():\n    def inner():\n{body.replace('        ', '        ')}\n    return inner\n")
    found = long_functions(tmp_path / "probe.py", tmp_path)
    assert found == {"probe.py:A.long": MAX_LINES + 1, "probe.py:outer": MAX_LINES + 3,
                     "probe.py:outer.inner": MAX_LINES + 1}
