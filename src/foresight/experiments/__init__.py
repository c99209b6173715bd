"""One module per paper claim; each registers itself with :func:`foresight.core.registry.experiment`.

:func:`catalogue` lists them without importing anything heavy: it reads each module's ``@experiment(...)``
keywords from the source (they are literals, or module-level string constants), so ``foresight list`` prints
in well under a second. :func:`load` imports one experiment's module (and only its area's stack).
"""

from __future__ import annotations

import ast
import importlib
from dataclasses import dataclass
from pathlib import Path

from foresight.core import registry

_HERE = Path(__file__).parent


@dataclass(frozen=True)
class Entry:
    name: str
    module: str
    system: str
    paper: str
    claim: str


def _literal(node: ast.AST, constants: dict[str, ast.AST]) -> object:
    if isinstance(node, ast.Name) and node.id in constants:
        node = constants[node.id]
    return ast.literal_eval(node)


def _entries(path: Path) -> list[Entry]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    constants = {
        t.id: stmt.value
        for stmt in tree.body
        if isinstance(stmt, ast.Assign)
        for t in stmt.targets
        if isinstance(t, ast.Name)
    }
    found = []
    for stmt in tree.body:
        for dec in getattr(stmt, "decorator_list", []):
            if isinstance(dec, ast.Call) and getattr(dec.func, "id", None) == "experiment":
                kw = {k.arg: k.value for k in dec.keywords}
                values = {key: _literal(kw[key], constants) for key in ("name", "system", "paper", "claim")}
                found.append(Entry(module=f"{__name__}.{path.stem}", **values))
    return found


def catalogue() -> dict[str, Entry]:
    """``{name: Entry}`` of every experiment module here, read from source (nothing imported)."""
    entries: dict[str, Entry] = {}
    for path in sorted(_HERE.glob("[!_]*.py")):
        for e in _entries(path):
            entries[e.name] = e
    return dict(sorted(entries.items()))


def load(name: str) -> registry.Experiment:
    """Import the module of experiment ``name`` and return its registration."""
    entries = catalogue()
    if name not in entries and name not in registry.experiments():
        raise KeyError(f"unknown experiment {name!r}; available: {', '.join(entries)}")
    if name in entries:
        importlib.import_module(entries[name].module)
    return registry.get(name)


def load_all() -> dict[str, registry.Experiment]:
    """Import every experiment module; return the registry."""
    for e in catalogue().values():
        importlib.import_module(e.module)
    return registry.experiments()
