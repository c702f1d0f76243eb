"""The arrows between openslip's parts that must never exist (docs/ARCHITECTURE.md), read from every import in
the package, function-level imports included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "openslip"
FOLDERS = ("data", "eval", "models", "compare", "commands", "interop")
NOT_CORE = ("train", "bench", "run_log", "plot", "cli", "perf", "flops", "paper")
# part -> parts it must never import
FORBIDDEN = {
    "models": {"data", "eval", "train", "compare", "commands", "interop"},
    "data": {"eval", "train", "compare", "commands"},
    "eval": {"train", "compare", "commands"},
    "core": {"train", "compare", "commands"},
}
# the reach-ups docs/ARCHITECTURE.md names: (file, part)
KNOWN = {("config.py", "data"), ("config.py", "eval"), ("checkpoint.py", "interop")}


def _part(module: str) -> str:
    parts = module.split(".")
    if len(parts) < 2:
        return "openslip"
    if parts[1] in FOLDERS or parts[1] in NOT_CORE:
        return parts[1]
    return "core"


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("openslip"):
            names += [node.module] if node.module != "openslip" else [f"openslip.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names if a.name.startswith("openslip")]
    return names


def _arrows() -> list[tuple[str, str, str]]:
    out = []
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        source = _part(module)
        for name in _imports(path):
            target = _part(name)
            if target != source:
                out.append((source, target, path.name))
    return out


@pytest.mark.parametrize("source", sorted(FORBIDDEN))
def test_no_forbidden_arrow(source: str) -> None:
    bad = [
        f"{file} ({src} -> {dst})"
        for src, dst, file in _arrows()
        if src == source and dst in FORBIDDEN[source] and (file, dst) not in KNOWN
    ]
    assert not bad, f"imports docs/ARCHITECTURE.md forbids: {bad}"


def test_only_the_cli_imports_commands() -> None:
    users = {file for src, dst, file in _arrows() if dst == "commands"}
    assert users <= {"cli.py"}, users


def _module_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports (function-level imports included; a name imported from a
    package counts as its submodule when there is one)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("openslip"):
                targets = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules]
                targets = targets or [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("openslip")]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != module and not module.startswith(target + "."):
                    graph[module].add(target)
    return graph


def test_no_import_cycles() -> None:
    """No cycle between modules, hidden by imports inside functions or not (a package's own __init__ aside)."""
    graph = _module_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, f"import cycles: {[' -> '.join(c) for c in cycles]}"
