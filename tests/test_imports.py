"""The package's imports run one way: no cycle, lazy imports inside functions included, and no
stage imports a later one (foundation <- decoding <- classifying <- runs <- planning / query /
curate / audit <- pipeline <- bench / cli). Read from the source (ast), nothing imported."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO

PACKAGE = "r2p1d_batch"
# Layer of each top-level name under r2p1d_batch; a module may import its own layer or lower ones.
LAYERS = {
    "": 0, "config": 0, "errors": 0, "schema": 0, "storage": 0, "synth": 0, "testing": 0,
    "decoding": 1,
    "classifying": 2,
    "runs": 3,
    "planning": 4, "query": 4, "curate": 4, "audit": 4,
    "pipeline": 5, "quantizing": 5,
    "bench": 6, "cli": 6, "__main__": 6,
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in (REPO / PACKAGE).rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports, anywhere in its body (lazy imports included)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name.startswith(PACKAGE)}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if not target.startswith(PACKAGE):
                    continue
                subs = {f"{target}.{a.name}" for a in node.names} & modules.keys()
                edges |= subs or {target}
                if len(subs) < len(node.names):
                    edges.add(target)
        graph[name] = {e for e in edges if e in modules and e != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _layer(module: str) -> int:
    top = module[len(PACKAGE) + 1:].split(".")[0] if module != PACKAGE else ""
    return LAYERS[top]


def test_the_graph_sees_lazy_and_relative_imports():
    graph = import_graph()
    # pipeline imports the stages at the top; the CLI imports pipeline lazily, inside run()
    assert f"{PACKAGE}.decoding.stage" in graph[f"{PACKAGE}.pipeline"]
    assert f"{PACKAGE}.pipeline" in graph[f"{PACKAGE}.cli.label"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert _cycles(import_graph()) == []


def test_imports_run_from_later_stages_to_earlier_ones():
    graph = import_graph()
    assert set(LAYERS) >= {m[len(PACKAGE) + 1:].split(".")[0] for m in graph if m != PACKAGE}, "a new top-level name"
    upward = sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps if _layer(d) > _layer(m))
    assert upward == []


def test_at_most_a_dozen_modules_at_the_package_root():
    root = [p.name for p in (REPO / PACKAGE).glob("*.py")]
    assert len(root) <= 12, root


def test_the_driver_and_a_classifier_actor_import_no_torch():
    """What the driver imports (pipeline, the CLI's label command) and what a classifier actor
    imports before its model loads: no torch, no torchvision (~6 s and ~0.5 GiB a process)."""
    code = ("import json, sys; import r2p1d_batch.pipeline, r2p1d_batch.cli.label, r2p1d_batch.classifying.stage, "
            "r2p1d_batch.classifying.classifier, r2p1d_batch.runs.writer; "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision'))))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == []
