"""The shape of the source tree stays as docs/architecture.md draws it: no import cycle between
files, no private name imported from another file, and each layer imports only the layers below
it. Every import counts, lazy ones and ``TYPE_CHECKING`` ones included; a package ``__init__``
that re-exports its own modules is not a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "lookalike"


def _modules() -> dict[str, Path]:
    out = {}
    for file in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(file.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = file
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph() -> tuple[dict[str, set[str]], list[str]]:
    """Module -> the modules it imports, and every private name imported across files."""
    modules = _modules()
    edges: dict[str, set[str]] = {m: set() for m in modules}
    private: list[str] = []
    for module, file in modules.items():
        is_package = file.name == "__init__.py"
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, ast.Import):
                targets = [(_resolve(a.name, modules), None) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = module.split(".") if is_package else module.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                if not base.startswith(PACKAGE):
                    continue
                targets = []
                for alias in node.names:
                    sub = _resolve(f"{base}.{alias.name}", modules)
                    targets.append((sub or _resolve(base, modules), alias.name))
                    if (
                        alias.name.startswith("_")
                        and not alias.name.startswith("__")
                        and sub != f"{base}.{alias.name}"
                    ):
                        private.append(f"{file.relative_to(SRC)}:{node.lineno} {alias.name}")
            else:
                continue
            edges[module] |= {t for t, _ in targets if t and t != module}
    return edges, private


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one file (Tarjan), minus a package's
    ``__init__`` re-exporting its own modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            found.append(sorted(group))

    for v in edges:
        if v not in index:
            visit(v)
    modules = _modules()

    def real(group: list[str]) -> list[str]:
        return [
            m
            for m in group
            if not (
                modules[m].name == "__init__.py"
                and all(o == m or o.startswith(m + ".") for o in group)
            )
        ]

    return [g for g in found if len(real(g)) > 1]


def test_no_import_cycles() -> None:
    edges, _ = import_graph()
    assert cycles(edges) == []


def test_no_private_names_imported_across_files() -> None:
    _, private = import_graph()
    assert private == []


#: What each layer may import (docs/architecture.md, "Layers"). A module's layer is its first
#: package below ``lookalike``; the leaves (errors, fileio, images...) are layer "leaf".
LEAVES = {"errors", "fileio", "images", "descriptors", "grid", "videos"}
ALLOWED = {
    "leaf": {"leaf"},
    "models": {"leaf", "models"},
    "index": {"leaf", "index"},
    "store": {"leaf", "store"},
    "keypoints": {"leaf", "keypoints", "collection"},  # collection.results only, for the type
    "ingest": {"leaf", "ingest", "store", "models", "collection"},  # ingest.bulk drives one
    "collection": {"leaf", "models", "index", "store", "ingest", "collection"},
}
CAPABILITIES = {"copies", "detect", "geo", "train", "evaluate", "words"}
#: What a capability's ``cli.py`` may use of the CLI: its shared options and error handling
#: (``common``) and its one validation layer (``validate``, docs/cli.md).
CLI_SHARED = {"lookalike.cli.common", "lookalike.cli.validate"}


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "leaf"  # lookalike/__init__.py: the public API
    if parts[1] == "__main__":
        return "cli"
    return "leaf" if parts[1] in LEAVES else parts[1]


def test_layers_import_only_what_is_below() -> None:
    edges, _ = import_graph()
    wrong = []
    for module, targets in edges.items():
        layer = _layer(module)
        if module == PACKAGE:  # the public API re-exports the core
            continue
        allowed = ALLOWED.get(layer)
        if allowed is None:  # capabilities, cli, server: the core and the capabilities
            allowed = set(ALLOWED) | CAPABILITIES
            if layer in ("cli", "server"):
                allowed |= {"cli", "server"}
        for target in targets:
            if target in CLI_SHARED and layer in CAPABILITIES:
                continue  # a capability's commands share the CLI's options, checks and errors
            if _layer(target) not in allowed:
                wrong.append(f"{module} -> {target}")
    # The ingest -> collection and keypoints -> collection edges stay narrow.
    for module, targets in edges.items():
        for target in targets:
            pair = (_layer(module), _layer(target))
            if pair == ("keypoints", "collection") and target != "lookalike.collection.results":
                wrong.append(f"{module} -> {target} (keypoints may use results only)")
            if pair == ("ingest", "collection") and module != "lookalike.ingest.bulk":
                wrong.append(f"{module} -> {target} (only ingest.bulk drives a collection)")
    assert wrong == []


@pytest.mark.parametrize("module", sorted(_modules()))
def test_modules_say_what_they_are_for(module: str) -> None:
    file = _modules()[module]
    if file.name == "__init__.py" and not file.read_text().strip():
        return
    assert ast.get_docstring(ast.parse(file.read_text())), f"{file} has no module docstring"
