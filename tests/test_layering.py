"""The import graph of src/foresight: no cycles, and no module imports from a layer above its own.

Layers, bottom up: core -> nn -> the areas (lm, graph, rl, behavior; they do not import each other) ->
experiments -> cli. Function-level imports count too: a lazy import that dodges a cycle is still a cycle.
"""

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
LAYER = {"core": 0, "nn": 1, "lm": 2, "graph": 2, "rl": 2, "behavior": 2, "experiments": 3, "cli": 4}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(
                        package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                    )
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            for name in names:
                if name in modules and name != mod:
                    graph[mod].add(name)
    return graph


def _area(mod: str) -> str | None:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "foresight" else None


def test_no_module_imports_from_a_layer_above_or_a_sibling_area():
    bad = []
    for mod, deps in _graph().items():
        a = _area(mod)
        for dep in deps:
            b = _area(dep)
            if a is None or b is None or a == b:
                continue
            if LAYER[b] > LAYER[a] or (LAYER[a] == LAYER[b] == 2):
                bad.append(f"{mod} -> {dep}")
    assert not bad, "imports against the layering:\n" + "\n".join(sorted(bad))


def test_no_import_cycles():
    graph = _graph()
    cycles, state = [], {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1 and not d.startswith(m + ".") and not m.startswith(d + "."):
                # a package importing its own submodule (foresight.lm -> foresight.lm.gemma2) is not a cycle
                cycles.append(" -> ".join(stack[stack.index(d) :] + [d]))
            elif d not in state:
                visit(d, [*stack, d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    real = [c for c in cycles if not all(x == "foresight" or x.count(".") <= 1 for x in c.split(" -> "))]
    assert not real, "import cycles:\n" + "\n".join(real)


def test_list_and_data_do_not_import_torch():
    for command in ("list", "data"):
        code = f"import sys; from foresight import cli; cli.main([{command!r}]); assert 'torch' not in sys.modules"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert out.returncode == 0, (command, out.stderr)
