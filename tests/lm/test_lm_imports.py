"""Imports inside foresight.lm go one way (cache <- gemma2 <- hf_io <- generate, ...): no cycle, counting
function-level and TYPE_CHECKING imports too, so none is hidden inside a function to dodge one."""

from __future__ import annotations

import ast
from pathlib import Path

import foresight.lm

LM = Path(foresight.lm.__file__).parent


def _lm_import_graph() -> dict[str, set[str]]:
    modules = {f"foresight.lm.{f.stem}": f for f in LM.glob("*.py") if f.stem != "__init__"}
    graph = {m: set() for m in modules}
    for module, file in modules.items():
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            graph[module] |= {n for n in names if n in modules and n != module}
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, nxt])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_lm_modules_import_each_other_without_a_cycle():
    graph = _lm_import_graph()
    assert "foresight.lm.cache" in graph["foresight.lm.gemma2"]  # the graph is really built
    assert _find_cycle(graph) is None, " -> ".join(_find_cycle(graph))


def test_the_cycle_finder_finds_one():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
