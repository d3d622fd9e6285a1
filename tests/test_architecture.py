"""The layers point one way: plop_core imports no orchestrator (Prefect, Ray, flows, tasks), not even
lazily, and its modules form no import cycle (function-level imports included)."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("prefect", "prefect_ray", "ray", "flows", "tasks")


def _modules() -> dict[str, Path]:
    mods = {}
    for f in (ROOT / "plop_core").rglob("*.py"):
        name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = f
    return mods


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> every module named by any import statement in it (top level or inside functions)."""
    out = {}
    for name, f in mods.items():
        found = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    pkg = name.split(".") if f.name == "__init__.py" else name.split(".")[:-1]
                    base = ".".join(pkg[:len(pkg) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    base = node.module
                found |= {base} | {f"{base}.{a.name}" for a in node.names}
        out[name] = found
    return out


def test_every_plop_core_module_imports_without_an_orchestrator():
    code = ("import importlib, pkgutil, sys, plop_core\n"
            "names = [m.name for m in pkgutil.walk_packages(plop_core.__path__, 'plop_core.')]\n"
            "for name in names:\n"
            "    importlib.import_module(name)\n"
            f"bad = sorted(k for k in sys.modules if k.split('.')[0] in {FORBIDDEN!r})\n"
            "print(len(names), ','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    n, bad = out.stdout.split(" ", 1)
    assert int(n) >= len(_modules()) - 1 and bad.strip() == "", f"plop_core imported {bad.strip()}"


def test_no_import_statement_in_plop_core_names_an_orchestrator():
    mods = _modules()
    hits = {m: sorted(i for i in imps if i.split(".")[0] in FORBIDDEN) for m, imps in _imports(mods).items()}
    assert {m: h for m, h in hits.items() if h} == {}


def test_plop_core_has_no_import_cycles():
    mods = _modules()
    graph = {}
    for m, names in _imports(mods).items():
        deps = set()
        for n in names:
            while n and n not in mods:
                n = n.rpartition(".")[0]
            # a submodule importing its own package (to reach a sibling) is how packages work, not a cycle
            if n and n != m and not m.startswith(n + "."):
                deps.add(n)
        graph[m] = deps
    order, state = [], {}

    def visit(m, path):
        if state.get(m) == "done":
            return
        assert state.get(m) != "open", "import cycle: " + " -> ".join(path[path.index(m):] + [m])
        state[m] = "open"
        for d in sorted(graph[m]):
            visit(d, path + [m])
        state[m] = "done"
        order.append(m)

    for m in sorted(graph):
        visit(m, [])
    assert len(order) == len(graph)
