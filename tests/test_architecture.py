"""The architecture's rules, checked on the source (docs/architecture.md).

* no import cycle anywhere in ``monitor/``, ``offline/`` or ``silentwatch/`` (imports inside
  functions count: a cycle hidden in a function is still a cycle);
* ``monitor`` never imports torch, transformers, peft, ray or ``offline`` (the sidecar
  installs and starts without them);
* ``bundle/`` is the format only: it never imports training, serving or the engine;
* every package directory is listed in pyproject.toml, so a wheel ships all of them.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The repository keeps monitor/ and offline/ at the top; they install under silentwatch.
PACKAGE_DIRS = {
    "silentwatch": ROOT / "silentwatch",
    "silentwatch.monitor": ROOT / "monitor",
    "silentwatch.offline": ROOT / "offline",
}
GENERATED = ("silentwatch.v1",)


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for base, folder in PACKAGE_DIRS.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([base, *parts])
            if name.startswith(GENERATED) or (
                base == "silentwatch" and rel.parts[0] in ("monitor", "offline")
            ):
                continue
            out[name] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _imports(name: str, path: Path) -> Iterator[str]:
    """Every module ``name`` imports, at any depth of its code, resolved to our modules."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if _is_package(name) else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # ``from pkg import name``: the submodule when there is one, else pkg itself.
            targets = [
                f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod for a in node.names
            ]
        else:
            continue
        for target in targets:
            # Importing a.b.c runs a/__init__ and a/b/__init__ first; a module's own packages
            # are already initialised when it runs, so they are no edge.
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if prefix in MODULES and prefix != name and not name.startswith(prefix + "."):
                    yield prefix


GRAPH = {name: sorted(set(_imports(name, path))) for name, path in MODULES.items()}


def _cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_scan_sees_the_code() -> None:
    """Guards the guard: the scan finds the modules and their edges."""
    assert len(MODULES) > 80
    assert "silentwatch.monitor.detection.registry" in GRAPH["silentwatch.monitor.detection.suite"]
    assert _cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    assert _cycles(GRAPH) == []


def _external_imports(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            yield node.module


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("silentwatch.monitor", ("torch", "transformers", "silentwatch.offline", "peft", "ray")),
        (
            "silentwatch.monitor.bundle",
            (
                "silentwatch.monitor.training",
                "silentwatch.monitor.serving",
                "silentwatch.monitor.detection.engine",
                "silentwatch.monitor.detection.suite",
                "silentwatch.monitor.state",
            ),
        ),
        ("silentwatch.monitor.detection.detectors", ("silentwatch.monitor.serving",)),
        ("silentwatch.offline.attacks", ("silentwatch.offline.audit",)),
    ],
)
def test_boundaries(package: str, forbidden: tuple[str, ...]) -> None:
    bad = [
        f"{name} imports {mod}"
        for name, path in MODULES.items()
        if name == package or name.startswith(package + ".")
        for mod in _external_imports(path)
        if any(mod == f or mod.startswith(f + ".") for f in forbidden)
    ]
    assert bad == []


def test_every_package_is_in_pyproject() -> None:
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    packages = {name for name in MODULES if _is_package(name)} | {"silentwatch.v1"}
    assert packages - listed == set(), "add these to [tool.setuptools] packages"
