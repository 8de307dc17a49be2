"""The architecture rules the code base keeps: an acyclic package graph, small files, and backbone
internals touched only inside ``backbones/``. Checked on the source text, so a violation fails CI."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "absclip"
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    """Dotted module name (``absclip.views.extract``) -> file."""
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = ("absclip", *path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(module: str, path: Path) -> set[str]:
    """Every absclip module ``module`` imports, at module level or inside functions."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("absclip"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("absclip"):
                found.add(target)
                found.update(f"{target}.{a.name}" for a in node.names)
    return found


def _unit(module: str) -> str:
    """The package-level unit a module belongs to: ``absclip.views.extract`` -> ``views``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "absclip"


def package_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        unit = _unit(name)
        if unit == "absclip":  # the top-level __init__ re-exports the public API
            continue
        deps = {_unit(t) for t in _imports(name, path) if t in modules}
        graph.setdefault(unit, set()).update(d for d in deps if d not in (unit, "absclip"))
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if state.get(nxt) is None:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_package_import_graph_is_acyclic() -> None:
    graph = package_graph()
    assert "views" in graph and "attention" in graph["views"]  # the walk sees real edges
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph) or [])}"


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_source_files_stay_small(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(SRC)} has {lines} lines; split it by job"


def _backbone_private_members() -> set[str]:
    names = set()
    for path in (SRC / "backbones").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name.startswith("_") \
                            and not item.name.startswith("__"):
                        names.add(item.name)
    return names


def test_backbone_internals_stay_in_backbones() -> None:
    private = _backbone_private_members()
    assert {"_blocks", "_embed"} <= private
    offences = []
    for path in SRC.rglob("*.py"):
        if path.parent.name == "backbones":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in private:
                owner = node.value
                if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                    continue  # a class's own helper of the same name
                offences.append(f"{path.relative_to(SRC)}:{node.lineno} .{node.attr}")
    assert not offences, "private backbone members used outside backbones/: " + ", ".join(offences)
