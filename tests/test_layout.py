"""The package layout shows the architecture, and the import graph keeps it.

Read from the source with ``ast`` (nothing is imported): every ``import`` / ``from ... import`` of an
nrinv module, at module level or inside a function, is an edge.
"""
import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "nrinv"

#: what each layer may import (besides itself); dependencies point one way
ALLOWED = {
    "core": {"errors", "_version"},
    "io": {"errors"},
    "errors": set(),
    "_version": set(),
    "metrics": set(),
    "api": {"core", "io", "errors"},
    "workflows": {"core", "io", "errors", "_version"},
    "loading": {"core", "errors", "shapes"},
    "batch": {"api", "io", "errors", "_version"},
    "demo": {"api", "core", "workflows", "io", "loading", "metrics", "shapes", "_version"},
    "bench": {"api", "core", "workflows", "io", "errors", "metrics", "shapes", "_version"},
    "app": {"api", "core", "workflows", "io", "errors", "loading", "metrics", "shapes"},
    "cli": {"api", "app", "batch", "bench", "core", "demo", "workflows", "errors", "io", "loading", "metrics",
            "_version"},
    "shapes": {"metrics", "errors"},
    "testing": {"core", "bench"},
    "__init__": {"api", "core", "workflows", "errors", "loading", "_version"},
    "__main__": {"cli"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (SRC.parent / rel).with_suffix(".py").is_file() or (SRC.parent / rel / "__init__.py").is_file()


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(imported nrinv module, names taken from it) for every import statement in ``path``."""
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.split(".")[0] == "nrinv"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "nrinv":
                continue
            names = [a.name for a in node.names]
            submodules = [f"{target}.{n}" for n in names if _is_module(f"{target}.{n}")]
            out += [(s, []) for s in submodules]
            rest = [n for n in names if not _is_module(f"{target}.{n}")]
            if rest or not submodules:
                out.append((target, rest))
    return out


def _graph() -> dict[str, list[tuple[str, list[str]]]]:
    return {_module_name(p): _imports(p) for p in SRC.rglob("*.py")}


def _layer(module: str) -> str:
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def test_import_graph_has_no_cycle():
    graph = {m: sorted({t for t, _ in edges}) for m, edges in _graph().items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in graph.get(m, []):
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m)
    assert len(graph) > 40  # the walk saw the whole package


def test_layers_depend_one_way():
    bad = []
    for module, edges in _graph().items():
        layer = _layer(module)
        for target, _ in edges:
            other = _layer(target)
            if other != layer and other not in ALLOWED[layer]:
                bad.append(f"{module} imports {target}")
    assert not bad, "\n".join(bad)


def test_no_private_names_imported_across_packages():
    bad = []
    for module, edges in _graph().items():
        for target, names in edges:
            private = [n for n in names if n.startswith("_") and n != "__version__"]
            if private and _layer(target) != _layer(module):
                bad.append(f"{module} imports {private} from {target}")
            if target.rpartition(".")[2].startswith("_") and _layer(target) != _layer(module) \
                    and target != "nrinv._version":
                bad.append(f"{module} imports the private module {target}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("layer", ["core", "io", "workflows", "bench", "cli", "testing"])
def test_layers_are_packages(layer):
    assert (SRC / layer / "__init__.py").is_file()


def test_the_license_is_an_spdx_expression():
    """setuptools >= 77 prints a deprecation banner for the table form (three times per `make install`)."""
    import tomllib

    project = tomllib.loads((SRC.parents[1] / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"
    assert "setuptools>=77" in project["build-system"]["requires"]


def test_methods_are_named_only_in_their_registry():
    """What callers need to know about a method (kind, contract, iterates? calls per iteration?) is in
    ``METHODS``: adding a solver touches ``core/solvers.py`` (its function and options), its entry in
    ``core/methods.py`` and its tests, and no code compares with a method's name elsewhere (the
    model-defaults registry, which picks a method per model, excepted)."""
    from nrinv.core.methods import METHODS as SOLVERS

    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if path in (SRC / "core" / "methods.py", SRC / "core" / "defaults.py"):
            continue
        offenders += [f"{path.relative_to(SRC)}:{node.lineno}: {node.value}"
                      for node in ast.walk(ast.parse(path.read_text()))
                      if isinstance(node, ast.Constant) and node.value in SOLVERS]
    assert not offenders


def test_comments_point_inside_the_repository():
    """No pointer to notes a reader of the repository cannot see (shared/ files, issue numbers)."""
    import re

    pattern = re.compile(r"shared/[A-Z_]+\.md|\bissue[- ]?#?\d+", re.I)
    offenders = [f"{p.relative_to(SRC.parents[1])}:{i}" for root in (SRC, SRC.parents[1] / "tests")
                 for p in sorted(root.rglob("*.py")) for i, line in enumerate(p.read_text().splitlines(), 1)
                 if pattern.search(line) and p.name != "test_layout.py"]
    assert not offenders
