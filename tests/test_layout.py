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


WEIGHT_VIEWS = {"state_dict", "parameters", "named_parameters", "buffers", "named_buffers"}
"""Generic nn.Module views of the weights (a cache key's fingerprint), not the model's internals."""


def _reaches_into_backbone_model(node: ast.AST) -> bool:
    """``bb.model.X`` / ``self.backbone.model.X``: an attribute of the library model behind a backbone."""
    if not isinstance(node, ast.Attribute) or not isinstance(node.value, ast.Attribute) or node.value.attr != "model":
        return False
    if node.attr in WEIGHT_VIEWS:
        return False
    owner = ast.unparse(node.value.value)
    return owner.split(".")[-1] in ("bb", "backbone", "vlm")


def _is_token_count_root(node: ast.AST) -> bool:
    """``x ** 0.5``, ``sqrt(x)`` or ``isqrt(x)`` where ``x`` is ``something - constant`` (a token count less
    its prefix, ``(T - 1) ** 0.5``) or mentions a tensor's ``shape``: a grid side computed from a token count."""
    operand = None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow) and isinstance(node.right, ast.Constant) \
            and node.right.value == 0.5:
        operand = node.left
    elif isinstance(node, ast.Call) and node.args:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if name in ("sqrt", "isqrt"):
            operand = node.args[0]
    if operand is None:
        return False
    less_prefix = isinstance(operand, ast.BinOp) and isinstance(operand.op, ast.Sub) \
        and isinstance(operand.right, ast.Constant)
    return less_prefix or "shape" in ast.unparse(operand) or "token" in ast.unparse(operand).lower()


def test_layout_checks_find_their_patterns() -> None:
    tree = ast.parse("g = round((t - 1) ** 0.5)\nh = math.isqrt(tokens.shape[1])\nr = math.sqrt(max_pixels / area)\n"
                     "b = self.backbone.model.visual.trunk\nd = self.model.encoder")
    assert sum(_is_token_count_root(n) for n in ast.walk(tree)) == 2
    assert [ast.unparse(n) for n in ast.walk(tree) if _reaches_into_backbone_model(n)] == ["self.backbone.model.visual"]


def test_grid_sides_and_model_internals_stay_in_backbones() -> None:
    """Outside ``backbones/`` the token grid comes from ``TokenMap`` / ``Backbone.grid_size`` and the model
    is used through the tower contract: no grid side from a token count, no ``model.visual.trunk.blocks``."""
    offences = []
    for path in SRC.rglob("*.py"):
        if path.parent.name == "backbones":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if _is_token_count_root(node):
                offences.append(f"{path.relative_to(SRC)}:{node.lineno} grid side from a token count")
            if _reaches_into_backbone_model(node):
                offences.append(f"{path.relative_to(SRC)}:{node.lineno} {ast.unparse(node)}")
    assert not offences, "outside backbones/: " + ", ".join(offences)
