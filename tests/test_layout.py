"""The package's shape, read from its imports (ast, every import, lazy ones inside functions included): the import
directions that must never exist, no import circle, and the libraries each layer may not import. The README's
"Layout" says why; a change that needs a new direction changes ALLOWED here, in review."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "stn_ablation"

# layer -> the layers it may import. A root module (stn_ablation/*.py) is the root layer, except cli.py (the top:
# it may import anything, nothing imports it), variants.py (the old module path of pickled models) and the package's
# __init__.py, the face (`import stn_ablation`: the registry's public functions, loaded when first used).
ALLOWED = {
    "face": {"root", "models"},
    "root": {"root"},
    "models": {"root", "models"},
    "data": {"root", "data"},
    "training": {"root", "data", "training"},  # handed its model: it imports no registry
    "tracking": {"root", "models", "data", "training", "tracking"},
    "reporting": {"root", "reporting"},  # reads runs and the catalog, handed a tracker or a runs file
    "study": {"root", "models", "data", "training", "tracking", "reporting", "study"},
    "bench": {"root", "models", "data", "training", "bench"},
    "alias": {"models"},
    "cli": {"root", "models", "data", "training", "tracking", "reporting", "study", "bench", "cli"},
}
# layer -> third-party packages it must not import
BANNED = {
    "face": {"mlflow", "optuna"},
    "root": {"mlflow", "optuna"},
    "models": {"mlflow", "optuna"},
    "data": {"mlflow", "optuna"},
    "training": {"mlflow", "optuna"},
    "reporting": {"torch", "torchvision", "optuna"},
    "bench": {"mlflow", "optuna"},
}
TORCH_FREE = {"stn_ablation.catalog", "stn_ablation.config", "stn_ablation.errors", "stn_ablation.faults",
              "stn_ablation.locks", "stn_ablation.paths"}
MLFLOW_ONLY_IN = {"stn_ablation.tracking.tracker"}


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name, for its __init__.py)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """What module `name` imports: its package's modules (resolved to the module, `from a import b` to a.b where
    b is a module) and the top-level names of everything else."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            subs = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known]
            found.update(subs or [base])
    return {n if n.split(".")[0] == "stn_ablation" else n.split(".")[0] for n in found}


def layer(name: str) -> str:
    parts = name.split(".")
    if len(parts) == 1:
        return "face"
    if len(parts) == 2 and parts[1] in ("cli", "variants"):
        return {"cli": "cli", "variants": "alias"}[parts[1]]
    return "root" if len(parts) <= 2 and not (PACKAGE / parts[-1]).is_dir() else parts[1]


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def forbidden(edges: dict[str, set[str]]) -> list[str]:
    """Every import that breaks ALLOWED, BANNED, TORCH_FREE or MLFLOW_ONLY_IN, as 'a -> b (why)'."""
    wrong = []
    for a, targets in edges.items():
        for b in sorted(targets):
            if b.startswith("stn_ablation"):
                if b in edges and layer(b) not in ALLOWED[layer(a)]:
                    wrong.append(f"{a} -> {b} ({layer(a)} may not import {layer(b)})")
            elif b in BANNED.get(layer(a), ()):
                wrong.append(f"{a} -> {b} ({layer(a)} may not import {b})")
            elif b in ("torch", "torchvision") and a in TORCH_FREE:
                wrong.append(f"{a} -> {b} ({a} is torch-free)")
            elif b == "mlflow" and a not in MLFLOW_ONLY_IN:
                wrong.append(f"{a} -> mlflow (only {', '.join(MLFLOW_ONLY_IN)} imports it)")
    return wrong


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The package's import circles (strongly connected components of more than one module, or a self-import)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in edges:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges[v]:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_layers_form_no_circle_themselves():
    order: list[str] = []
    pending = dict(ALLOWED)
    while pending:
        ready = [a for a, allowed in pending.items() if allowed - {a} <= set(order)]
        assert ready, f"ALLOWED has a circle among {sorted(pending)}"
        order += sorted(ready)
        for a in ready:
            del pending[a]


def test_no_import_runs_a_forbidden_way():
    assert forbidden(graph()) == []


def test_no_import_circle():
    assert circles(graph()) == []


def test_every_module_has_a_layer():
    assert {layer(name) for name in graph()} <= set(ALLOWED)


@pytest.mark.parametrize("a, b", [
    ("stn_ablation.training.train", "stn_ablation.models.registry"),  # the trainer is handed its model
    ("stn_ablation.reporting.report", "stn_ablation.data.distorted"),  # the report reads runs and the catalog
    ("stn_ablation.reporting.stats", "torch"),
    ("stn_ablation.catalog", "torch"),
    ("stn_ablation.models.blocks", "stn_ablation.data.datasets"),
    ("stn_ablation.config", "stn_ablation.models.registry"),  # a root module imports no package
    ("stn_ablation", "stn_ablation.data.datasets"),  # the face exposes the registry only
    ("stn_ablation.plugins", "stn_ablation.models.registry"),  # the loader imports modules by name, not models
    ("stn_ablation.tracking.run", "mlflow"),
    ("stn_ablation.reporting.tables", "stn_ablation.study.worker"),
])
def test_the_rules_catch_a_forbidden_import(a, b):
    edges = graph()
    edges[a] = edges[a] | {b}
    assert [w for w in forbidden(edges) if w.startswith(f"{a} -> {b} ")]


def test_the_rules_catch_a_circle():
    edges = graph()
    edges["stn_ablation.models.registry"] = edges["stn_ablation.models.registry"] | {"stn_ablation.models.loc3"}
    assert ["stn_ablation.models.loc3", "stn_ablation.models.registry"] in circles(edges)
