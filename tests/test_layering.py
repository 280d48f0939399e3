"""The package's layers (DESIGN.md, "Layers of the code") stay one-way: nothing imports a layer above it,
and no module imports itself back through others (no import cycle, inside a layer either).

Every ``import`` / ``from ... import`` under ``src/modinv`` is read with ``ast`` (imports inside
functions and under ``TYPE_CHECKING`` too: a lazy import is still a dependency), and each module's
layer is compared with the layer of what it imports. The import graph of all modules must have no
strongly connected component of more than one module.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import networkx as nx

import modinv

SRC = Path(modinv.__file__).parent

# Lowest first. A module's layer is the first entry that its dotted name equals or starts with.
LAYERS: list[tuple[str, ...]] = [
    ("modinv.errors", "modinv.fileio", "modinv.runtime", "modinv.distributed", "modinv.figures"),
    ("modinv.data",),
    ("modinv.models",),
    ("modinv.inverse",),
    ("modinv.hub",),  # wraps InverseChain for the Hugging Face hub; the chain never imports it
    ("modinv.training", "modinv.metrics"),
    ("modinv.analysis",),
    ("modinv.demo",),
    ("modinv.explore",),
    ("modinv.cli", "modinv.__main__"),
]
PACKAGE_ROOT = "modinv"  # `import modinv` / modinv/__init__.py: the public face, may import any layer
# What a module inside the package may take from the root (which re-exports every layer): the version.
ROOT_NAMES_ALLOWED = {"modinv.__version__"}


def layer_of(module: str) -> int | None:
    for rank, names in enumerate(LAYERS):
        if any(module == name or module.startswith(name + ".") for name in names):
            return rank
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, name: str | None = None) -> list[tuple[int, str]]:
    """``(line, module)`` for every modinv import in the file (relative imports resolved);
    ``name``: the file's dotted module name (default: from its place under ``src/``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = name or module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from modinv import y` names a submodule or a name of the root: report modinv.y
            found += [(node.lineno, f"{target}.{alias.name}" if target == PACKAGE_ROOT else target)
                      for alias in node.names]
    return [(line, name) for line, name in found if name == PACKAGE_ROOT or name.startswith(PACKAGE_ROOT + ".")]


def test_every_module_has_a_layer():
    unplaced = [module_name(p) for p in SRC.rglob("*.py")
                if module_name(p) != PACKAGE_ROOT and layer_of(module_name(p)) is None]
    assert not unplaced, f"modules with no layer in LAYERS (add them where they belong): {unplaced}"


def test_no_module_imports_a_higher_layer():
    violations = []
    for path in sorted(SRC.rglob("*.py")):
        name = module_name(path)
        if name == PACKAGE_ROOT:
            continue
        mine = layer_of(name)
        for line, target in imported_modules(path):
            theirs = layer_of(target)
            if theirs is None:  # the package root itself (`import modinv`, `from modinv import X`): every layer
                if target in ROOT_NAMES_ALLOWED:
                    continue
                theirs = len(LAYERS)
            if mine is not None and theirs > mine:
                violations.append(f"{path.relative_to(SRC.parent)}:{line} ({name}) imports {target}")
    assert not violations, "lower layers import higher ones:\n" + "\n".join(violations)


def test_argparse_lives_only_in_the_cli():
    users = [str(p.relative_to(SRC.parent)) for p in SRC.rglob("*.py")
             if layer_of(module_name(p)) != layer_of("modinv.cli")
             and any(name == "argparse" for _, name in _all_imports(p))]
    assert not users, f"argparse outside modinv.cli: {users}"


def _all_imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.lineno, node.module))
    return out


def test_the_checker_sees_a_violation(tmp_path):
    """The check itself can fail: a fake analysis module importing the CLI is reported."""
    fake = tmp_path / "probe.py"
    fake.write_text("def f():\n    from modinv.cli.common import model_from_args\n    from ..cli import main\n")
    found = imported_modules(fake, name="modinv.analysis.probe")
    assert found == [(2, "modinv.cli.common"), (3, "modinv.cli")]
    assert all(layer_of(target) > layer_of("modinv.analysis.probe") for _, target in found)


def test_the_checker_sees_the_package_root(tmp_path):
    """`import modinv` or `from modinv import InverseChain` in a layer reaches every layer; only the
    version may be taken from the root."""
    fake = tmp_path / "probe.py"
    fake.write_text("import modinv\nfrom modinv import InverseChain, __version__\nfrom modinv import data\n")
    found = imported_modules(fake, name="modinv.models.probe")
    assert found == [(1, "modinv"), (2, "modinv.InverseChain"), (2, "modinv.__version__"), (3, "modinv.data")]
    assert [layer_of(t) for _, t in found] == [None, None, None, layer_of("modinv.data")]
    assert [t for _, t in found if layer_of(t) is None and t not in ROOT_NAMES_ALLOWED] == ["modinv", "modinv.InverseChain"]


# -- import cycles -------------------------------------------------------------------------------------

def all_modules() -> dict[str, Path]:
    """Dotted name -> file of every module under ``src/modinv`` (packages by their ``__init__``)."""
    return {module_name(p): p for p in SRC.rglob("*.py")}


def module_edges(path: Path, name: str, modules: Iterable[str]) -> set[str]:
    """The modules ``name`` imports: ``from a.b import c`` is ``a.b.c`` when that is a module, else
    ``a.b``. A name taken from the package root that ROOT_NAMES_ALLOWED lists (the version) is its
    own node with no imports, not the root (which imports every layer)."""
    known = set(modules)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            edges |= {alias.name for alias in node.names if alias.name in known}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                taken = f"{target}.{alias.name}"
                if taken in known or taken in ROOT_NAMES_ALLOWED:
                    edges.add(taken)
                elif target in known:
                    edges.add(target)
    edges.discard(name)
    return edges


def import_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Every set of modules that import each other (directly or through others), sorted."""
    g = nx.DiGraph()
    g.add_nodes_from(graph)
    g.add_edges_from((a, b) for a, targets in graph.items() for b in targets)
    return sorted(sorted(c) for c in nx.strongly_connected_components(g) if len(c) > 1)


def import_graph(modules: Mapping[str, Path]) -> dict[str, set[str]]:
    return {name: module_edges(path, name, modules) for name, path in modules.items()}


def test_no_import_cycles():
    cycles = import_cycles(import_graph(all_modules()))
    assert not cycles, "modules that import each other (break each cycle):\n" + "\n".join(map(" <-> ".join, cycles))


def test_the_cycle_check_sees_a_planted_cycle(tmp_path):
    """A lazy import inside a function and one under TYPE_CHECKING close cycles too."""
    (tmp_path / "a.py").write_text("def f():\n    from modinv.metrics.b import g\n")
    (tmp_path / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from modinv.metrics import c\n")
    (tmp_path / "c.py").write_text("from . import a\nfrom modinv import __version__\n")
    (tmp_path / "d.py").write_text("from modinv.metrics import a\n")  # imports into the cycle, not part of it
    modules = {f"modinv.metrics.{n}": tmp_path / f"{n}.py" for n in "abcd"}
    graph = import_graph(modules)
    assert graph["modinv.metrics.c"] == {"modinv.metrics.a", "modinv.__version__"}
    assert import_cycles(graph) == [["modinv.metrics.a", "modinv.metrics.b", "modinv.metrics.c"]]
    assert import_cycles({**graph, "modinv.metrics.c": {"modinv.__version__"}}) == []
