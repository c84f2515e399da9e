"""Dependencies point one way: CLI (radlint/) -> flows (flows/) -> tasks (tasks/) -> model registry
(models/registry.yaml and the ONNX files, read as package data); training (models/*.py) and
evaluation (tasks/evaluation.py) sit beside and import tasks only.

Every module's imports, function-local ones included, are read with ``ast`` (nothing is imported),
so a back-edge fails here whichever file it is written in.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# repository folder -> the import name the distribution installs it under (pyproject.toml package-dir)
PACKAGES = {"radlint": "radlint", "flows": "radlint.flows", "tasks": "radlint.tasks", "models": "radlint.models",
            "sql": "radlint.sql"}
DEV = ("tests", "bench")  # not installed; may import anything of radlint

# (importer, imported) edges known to point the wrong way, each waiting for an edit in a file that
# someone else is changing now. An entry that no longer exists fails test_pending_edges_still_exist,
# so this list can only shrink.
PENDING = {
    # the training scripts still take the metrics through the CLI module's re-exports
    ("radlint.models.train", "radlint.evaluate"),
    ("radlint.models.export", "radlint.evaluate"),
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT)
    base = PACKAGES.get(rel.parts[0], rel.parts[0])
    parts = [base, *rel.parts[1:-1]]
    if rel.stem != "__init__":
        parts.append(rel.stem)
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    out = {}
    for folder in (*PACKAGES, *DEV):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "data" in path.relative_to(ROOT).parts:
                continue
            out[_module_name(path)] = path
    return out


SOURCES = _sources()
MODULES = set(SOURCES)


def _imports(name: str, path: Path) -> list[tuple[str, int]]:
    """(module imported, line) for every import statement in the file, resolved to module names."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = name.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                # `from radlint import demo` imports the module radlint.demo, not just the package
                sub = f"{base}.{alias.name}"
                out.append((sub if sub in MODULES else base, node.lineno))
    return out


def _layer(module: str) -> str:
    if module.startswith("radlint.tasks"):
        return "tasks"
    if module.startswith("radlint.flows"):
        return "flows"
    if module.startswith("radlint.models"):
        return "training"
    if module.startswith("radlint.sql"):
        return "data"
    if module.startswith("radlint"):
        return "cli"
    return "dev"


# what each layer may import of radlint (its own layer included)
ALLOWED = {
    "data": set(),
    "tasks": {"tasks"},
    "flows": {"flows", "tasks"},
    "training": {"training", "tasks"},
    "cli": {"cli", "flows", "tasks"},
    "dev": {"cli", "flows", "tasks", "training", "data"},
}


def _edges() -> list[tuple[str, str, int]]:
    edges = []
    for name, path in SOURCES.items():
        for target, line in _imports(name, path):
            edges.append((name, target, line))
    return edges


EDGES = _edges()


def test_the_walk_sees_the_tree():
    # a guard for the test itself: a wrong root or mapping would make every check below pass vacuously
    assert {"radlint.cli", "radlint.flows.audit_lake", "radlint.tasks.shard", "radlint.models.train"} <= MODULES
    assert ("radlint.flows.audit_lake", "radlint.tasks.shard") in {(a, b) for a, b, _ in EDGES}


def test_no_back_edges():
    bad = []
    for src, target, line in EDGES:
        if not target.startswith("radlint") or (src, target) in PENDING:
            continue
        if _layer(target) not in ALLOWED[_layer(src)]:
            bad.append(f"{SOURCES[src].relative_to(ROOT)}:{line}: {_layer(src)} module {src} imports "
                       f"{_layer(target)} module {target}")
    assert not bad, "imports against CLI -> flows -> tasks (training beside, on tasks only):\n" + "\n".join(bad)


def test_pending_edges_still_exist():
    present = {(a, b) for a, b, _ in EDGES}
    gone = sorted(PENDING - present)
    assert not gone, f"these back-edges are fixed: remove them from PENDING: {gone}"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    seen: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        seen[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if seen.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in seen:
                visit(nxt)
        stack.pop()
        seen[node] = 2

    for node in sorted(graph):
        if node not in seen:
            visit(node)
    return cycles


def test_no_import_cycles_between_radlint_modules():
    graph: dict[str, set[str]] = {m: set() for m in MODULES if m.startswith("radlint")}
    for src, target, _ in EDGES:
        if src in graph and target in graph and src != target and (src, target) not in PENDING:
            graph[src].add(target)
    cycles = _cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("generic", ["tasks", "flows", "models", "sql"])
def test_nothing_imports_the_folders_as_top_level_names(generic):
    # installed, these folders exist only as radlint.<name>; a bare `import tasks` works in a checkout only
    bad = [f"{SOURCES[src].relative_to(ROOT)}:{line}: {target}" for src, target, line in EDGES
           if target == generic or target.startswith(generic + ".")]
    assert not bad, "\n".join(bad)


def _is_sys_path(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "path"
            and isinstance(node.value, ast.Name) and node.value.id == "sys")


def _sys_path_edits(path: Path) -> list[int]:
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        edit = False
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            # sys.path.insert/append/extend/..., site.addsitedir(...)
            edit = _is_sys_path(node.func.value) or node.func.attr == "addsitedir"
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            edit = any(_is_sys_path(t) or (isinstance(t, ast.Subscript) and _is_sys_path(t.value)) for t in targets)
        if edit:
            lines.append(node.lineno)
    return lines


def test_no_sys_path_edits():
    bad = [f"{path.relative_to(ROOT)}:{line}" for path in SOURCES.values() for line in _sys_path_edits(path)]
    assert not bad, "sys.path edited (run scripts with python -m instead): " + ", ".join(bad)


def test_the_checks_catch_what_they_claim(tmp_path):
    # each rule above, fed code that breaks it, so a check that silently matches nothing fails here
    bad = tmp_path / "bad.py"
    bad.write_text("import sys\nimport tasks.shard\nfrom ..flows import audit_lake\n"
                   "def f():\n    sys.path[:0] = ['.']\n    sys.path.insert(0, '.')\n")
    assert _sys_path_edits(bad) == [5, 6]
    assert [t for t, _ in _imports("radlint.tasks.bad", bad)] == ["sys", "tasks.shard", "radlint.flows.audit_lake"]
    assert _layer("radlint.flows.audit_lake") not in ALLOWED[_layer("radlint.tasks.bad")]
    assert _layer("radlint.cli") not in ALLOWED[_layer("radlint.flows.audit_lake")]
    assert _layer("radlint.evaluate") not in ALLOWED[_layer("radlint.models.train")]
    assert _cycles({"radlint.cli": {"radlint.demo"}, "radlint.demo": {"radlint.cli"}}) == [
        ["radlint.cli", "radlint.demo", "radlint.cli"]]
