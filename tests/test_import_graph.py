"""The package's import graph: no cycle, and each layer imports only the layers below it.

Read from the source with `ast` (nothing is imported, so it runs in well under a second). Every
`import` counts, the lazy ones inside functions too: a cycle that only works because an import
sits at the bottom of a file or inside a function is still a cycle for the next reader.
The layers are the ones docs/architecture.md describes.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "srl_sdk"

# Lower layers never import higher ones; modules of one layer may import each other (no cycle).
# Each job's `commands.py` belongs to the CLI, not to its job: it sits between cli_common and cli.
LAYERS: dict[str, int] = {
    "errors": 0,
    "core": 1,
    "engines": 2,
    "store": 2,
    "reasoning": 3,
    "training": 4,
    "data": 5,
    "edge": 5,
    "client": 6,
    "serving": 6,
    "cli_common": 7,
    "commands": 8,
    "cli": 9,
}
COMMAND_MODULES = ["srl_sdk.data.commands", "srl_sdk.edge.commands", "srl_sdk.serving.commands",
                   "srl_sdk.training.commands"]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def runtime_nodes(tree: ast.AST):
    """Every node but those under `if TYPE_CHECKING:` (type-checker imports never run)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
            else:
                stack.append(child)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package modules `path` imports (`from srl_sdk.x import y` counts y when y is a module)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            # the deepest package module the name points at
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and target != "srl_sdk":
                found.add(target)
    return found


def package_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imports_of(path, set(files)) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def layer_of(module: str) -> int:
    return LAYERS["commands" if module.endswith(".commands") else module.split(".")[1]]


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(package_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_each_layer_imports_only_layers_below_or_beside():
    graph = package_graph()
    unknown = sorted({name.split(".")[1] for name in graph if "." in name} - set(LAYERS))
    assert not unknown, f"new top-level modules {unknown}: give them a layer in LAYERS and docs/architecture.md"
    upward = [f"{src} -> {dst}" for src, targets in sorted(graph.items()) if "." in src
              for dst in sorted(targets) if layer_of(dst) > layer_of(src)]
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def test_find_cycle_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("module", COMMAND_MODULES)
def test_each_commands_module_imports_alone(module):
    """A fresh interpreter imports the module first, before cli.py: it registers on any Typer app."""
    code = (f"import sys, typer, {module} as m; app = typer.Typer(); m.register(app); "
            "print('srl_sdk.cli' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False", f"{module} imports srl_sdk.cli"


def test_nothing_imports_cli():
    graph = package_graph()
    assert [src for src, targets in graph.items() if "srl_sdk.cli" in targets] == []
    assert importlib.import_module("srl_sdk.cli").app is not None
