"""The layout shows the architecture: what may import what, and no import circle (module-level imports)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "resnetlab"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, runtime_only: bool) -> set[str]:
    """The resnetlab modules ``path`` imports: at module level only (``runtime_only``), else anywhere."""
    tree = ast.parse(path.read_text())
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    nodes = tree.body if runtime_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n for n in names if n.startswith("resnetlab") and _exists(n)}
    return found


def _exists(name: str) -> bool:
    path = SRC / name.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def test_each_room_imports_only_the_rooms_below_it():
    forbidden = {
        "resnetlab.models": ("resnetlab.data", "resnetlab.config", "resnetlab.engine", "resnetlab.inference", "resnetlab.cli"),
        "resnetlab.data": ("resnetlab.config", "resnetlab.engine", "resnetlab.inference", "resnetlab.cli"),
        "resnetlab.config": ("resnetlab.engine", "resnetlab.inference", "resnetlab.cli"),
        "resnetlab.engine": ("resnetlab.inference", "resnetlab.cli"),
        "resnetlab.inference": ("resnetlab.engine", "resnetlab.cli"),
        "resnetlab.util": ("resnetlab.models", "resnetlab.data", "resnetlab.config", "resnetlab.engine",
                           "resnetlab.inference", "resnetlab.cli"),
    }
    wrong = []
    for name, path in modules().items():
        for room, banned in forbidden.items():
            if name == room or name.startswith(room + "."):
                wrong += [f"{name} imports {target}" for target in imports(path, runtime_only=False)
                          if target.startswith(banned)]
    assert wrong == []


def test_no_import_circle():
    graph = {name: {t for t in imports(path, runtime_only=True) if t in modules() and t != name}
             for name, path in modules().items()}
    # A package's __init__ importing its own modules is how packages work, not a circle through them.
    for name in graph:
        graph[name] = {t for t in graph[name] if not (name in modules() and modules()[name].name == "__init__.py"
                                                     and t.startswith(name + "."))}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target, stack + [target])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []
