"""The house rules, read from the source: no module imports a module of a higher layer, no
import cycle, and no file outside `edgetune.methods` dispatches on a method's name."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "edgetune"

# Lowest first. A module may import modules of its own layer or below; the package's public
# face (`edgetune/__init__.py`) sits on top. Names are module paths below `edgetune`, a
# package name covering its modules unless a module is listed on its own.
LAYERS: list[set[str]] = [
    {
        "errors",
        "paths",
        "io",
        "units",
        "seeds",
        "version",
        "families",
        "fields",
        "scheme",
        "progress",
        "precision",
    },
    {"cost"},
    {"methods.options", "methods.registry", "methods.__init__", "models.registry"},
    {"config"},
    {"forecast"},
    {"placement"},
    {"data", "models", "methods", "measure"},
    {"pipeline", "evaluate", "checkpoint"},
    {"plan"},
    {"report"},
    {"train"},
    {"federated", "bench", "export"},
    {"commands"},
    {"cli", "__init__"},
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).with_suffix("")
        out[".".join(rel.parts)] = path
    return out


def _layer(module: str) -> int:
    """The layer of `module` (its most specific listing)."""
    best, depth = None, -1
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and name.count(".") > depth:
                best, depth = i, name.count(".")
    if best is None:
        raise AssertionError(f"edgetune.{module} is in no layer of tests/test_architecture.py")
    return best


def _imports(path: Path) -> set[str]:
    """The edgetune modules a file imports anywhere in it (lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("edgetune"):
                base = node.module.removeprefix("edgetune").lstrip(".")
                for alias in node.names:  # `from edgetune.cost import device` is a module
                    sub = f"{base}.{alias.name}".lstrip(".")
                    found.add(sub if sub in MODULES else base or "__init__")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("edgetune"):
                    found.add(alias.name.removeprefix("edgetune").lstrip(".") or "__init__")
    return {m if m in MODULES else f"{m}.__init__" for m in found}


MODULES = _modules()
GRAPH = {m: _imports(p) - {m} for m, p in MODULES.items()}


def test_every_module_has_a_layer():
    for module in MODULES:
        _layer(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_a_higher_layer(module):
    upward = sorted(m for m in GRAPH[module] if _layer(m) > _layer(module))
    assert not upward, f"edgetune.{module} (layer {_layer(module)}) imports {upward}"


def test_no_import_cycle():
    """Depth-first search for a back edge in the graph of modules (lazy imports included)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(GRAPH.get(m, ())):
            if state.get(n) == 1:
                cycle = stack[stack.index(n) :] + [n]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)


def test_no_method_name_is_compared_outside_methods():
    """Traits come from the registry (`edgetune.methods.registry`), never from a method's name
    matched as a string elsewhere."""
    from edgetune.methods import METHODS

    names = "|".join(METHODS)
    quoted = rf"""["']({names})["']"""
    compared = re.compile(rf"(==|!=|\bin)\s*\(?\s*{quoted}|{quoted}\s*(==|!=)")
    offenders = []
    for module, path in MODULES.items():
        if module.startswith("methods."):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if compared.search(line):
                offenders.append(f"edgetune/{path.relative_to(SRC)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
