"""The package's layers, read from the source: each imports only the layers below it, only the
LangGraph adapter imports LangGraph, and no module imports itself round a circle."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "watchdog"
BELOW = {
    "_core": set(),
    "_files": {"_core"},
    "_sinks": {"_core"},
    "_pod": {"_core", "_files", "_sinks"},
    "_shared": {"_core"},
    "_adapter": {"_core", "_files", "_sinks", "_pod", "_shared"},
}
# What each layer may import from outside the package, besides the standard library.
THIRD_PARTY = {
    "_core": {"pydantic", "xxhash"},
    "_files": {"yaml"},
    "_sinks": {"prometheus_client", "structlog"},
    "_pod": {"fastapi", "prometheus_client", "pydantic", "redis", "starlette", "uvicorn"},
    "_shared": set(),  # the Redis client is handed in
    "_adapter": {"langchain_core", "langgraph", "prometheus_client", "redis"},
}
LANGGRAPH = {"langgraph", "langchain_core"}
STANDARD_LIBRARY = sys.stdlib_module_names


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str) -> set[str]:
    """Every module ``name`` imports, at its top, in a function or for type checking only."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found.add(base)
            # ``from . import schema`` imports a module; ``from .x import name`` an attribute.
            found.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES)
    return found


def layer(name: str) -> str | None:
    """The layer a module of the package is in; None for the public modules and the command,
    which stand on top of every layer."""
    _, *inside = name.split(".")
    return inside[0] if inside and inside[0] in BELOW else None


def test_every_private_module_is_in_a_layer() -> None:
    private = {name for name in MODULES if name.split(".")[-1].startswith("_")}
    packages = {name for name in MODULES if MODULES[name].name == "__init__.py"}
    assert {n for n in private if layer(n) is None} == {"watchdog.__main__", "watchdog._cli"}
    assert packages == {"watchdog", *(f"watchdog.{p}" for p in [*BELOW, "_cli"])}


@pytest.mark.parametrize("name", [n for n in MODULES if layer(n) is not None])
def test_a_layer_imports_only_the_layers_below_it(name: str) -> None:
    own = layer(name)
    assert own is not None
    ours = {m for m in imports(name) if m.split(".")[0] == "watchdog"}
    reached = {layer(m) or m for m in ours} - {own}
    assert reached <= BELOW[own], f"{name} imports {sorted(reached - BELOW[own])}"


@pytest.mark.parametrize("name", [n for n in MODULES if layer(n) is not None])
def test_a_layer_imports_only_its_own_libraries(name: str) -> None:
    own = layer(name)
    assert own is not None
    others = {
        m.split(".")[0]
        for m in imports(name)
        if m.split(".")[0] != "watchdog" and m.split(".")[0] not in STANDARD_LIBRARY
    }
    assert others <= THIRD_PARTY[own]
    if own != "_adapter":
        assert not others & LANGGRAPH


def test_no_module_imports_itself_round_a_circle() -> None:
    graph = {name: {m for m in imports(name) if m in MODULES and m != name} for name in MODULES}
    circles: list[list[str]] = []
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            circles.append([*path[path.index(name) :], name])
            return
        if name in done:
            return
        for target in sorted(graph[name]):
            visit(target, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
    assert circles == []


def test_the_checks_see_what_they_check() -> None:
    """The import reader resolves relative imports: a check that reads nothing passes nothing."""
    assert "watchdog._core.policies" in imports("watchdog._core.engine")
    assert "watchdog._sinks.schema" in imports("watchdog._adapter.run")
    assert "watchdog._sinks.schema" in imports("watchdog._sinks.metrics")  # from . import schema
    assert "langgraph.runtime" in imports("watchdog._adapter.run")
    assert layer("watchdog._pod.sidecar") == "_pod"
    assert layer("watchdog.testing") is None
