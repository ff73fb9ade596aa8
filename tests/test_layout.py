"""The package layout holds: layers import downwards only, nothing outside `cd_dspy/cli/` imports the CLI,
`cd_dspy/testing/` is imported only by tests and examples, and no two modules import each other in a circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cd_dspy"
# Layers from the top; a module may import its own layer or any layer below it, never one above.
LAYERS = [{"cli"}, {"__init__"}, {"migration", "distill"}, {"optimizer", "estimate"}, {"scale"}, {"phases"},
          {"core", "lms", "sandbox", "programs", "config"}]
AREAS = set().union(*LAYERS, {"testing"})


def module_name(path: Path) -> str:
    if path.is_relative_to(ROOT / "programs"):
        return "cd_dspy.programs." + ".".join(path.relative_to(ROOT / "programs").with_suffix("").parts)
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def runtime_files() -> list[Path]:
    files = [p for p in PACKAGE.rglob("*.py") if "testing" not in p.relative_to(PACKAGE).parts]
    return files + sorted((ROOT / "programs").rglob("*.py"))


def imported(path: Path) -> set[str]:
    """The cd_dspy modules `path` imports, at any depth of its code (lazy imports count)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cd_dspy"):
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names if alias.name.startswith("cd_dspy")}
    return names


def area(module: str) -> str:
    """The top-level package or module of cd_dspy that `module` is in ("__init__" for names cd_dspy exports)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in AREAS else "__init__"


def layer(module: str) -> int | None:
    return next((i for i, names in enumerate(LAYERS) if area(module) in names), None)


@pytest.mark.parametrize("path", runtime_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_runtime_modules_import_downwards_and_never_the_cli_or_the_harnesses(path):
    own = module_name(path)
    for name in imported(path):
        if area(own) != "cli":
            assert area(name) != "cli", f"{own} imports the CLI ({name}): move what it needs below cd_dspy/cli/"
        assert area(name) != "testing", f"{own} imports the test harness ({name})"
        if area(name) == "__init__" or name == "cd_dspy":
            continue
        mine, theirs = layer(own), layer(name)
        assert mine is not None and theirs is not None, f"{own} or {name} is in no layer: add it to LAYERS"
        assert theirs >= mine, f"{own} (layer {mine}) imports {name} (layer {theirs}), a layer above it"


def test_no_import_circles():
    modules = {module_name(p): p for p in runtime_files()}
    graph = {m: {n for n in imported(p) if n in modules and n != m} for m, p in modules.items()}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            assert state.get(nxt) != 1, "import circle: " + " -> ".join(stack[stack.index(nxt):] + [nxt])
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])
