"""The picture of docs/ARCHITECTURE.md, enforced: every import between openslip's parts points down the layers,
the arrows the picture forbids do not exist, and no module imports itself back through others. Read from every
import in the package, imports inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "openslip"

# part -> layer, low to high (docs/ARCHITECTURE.md draws the same order); a top-level module not named here is core.
LAYERS = {
    "core": 0,
    "models": 1,
    "weights": 2,
    "data": 3,
    "eval": 4,
    "interop": 5,
    "train": 6,
    "compare": 7,
    "bench": 7,
    "plot": 7,
    "commands": 8,
    "cli": 8,
}
# The arrows the picture forbids even where the layers would allow them: (from part, to module prefix) -> reason.
NEVER = {
    ("models", "openslip.distributed"): "a model knows no distributed run",
    ("models", "openslip.files"): "a model knows no files",
    ("models", "openslip.outputs"): "a model knows no files",
    ("models", "openslip.step"): "a model knows no training loop",
    ("models", "openslip.optim"): "a model knows no training loop",
    ("data", "openslip.models"): "data knows no model",
    ("data", "openslip.weights.checkpoint"): "data knows no model",
    ("data", "openslip.weights.clip_layout"): "data knows no model",
    ("data", "openslip.weights.safe_load"): "data knows no model",
    ("core", "openslip.models"): "the core (losses included) works on dicts of tensors, not on a model",
    ("compare", "openslip.bench"): "the two features stand side by side",
    ("bench", "openslip.compare"): "the two features stand side by side",
}
# Only these may import openslip.train: the parts above it, which hand it overrides and recipes.
READS_CONFIG = {"train", "compare", "bench", "commands", "cli"}


def _part(module: str) -> str:
    name = module.split(".")[1] if module.count(".") else ""
    return name if name in LAYERS else "core"


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules `path` imports (a name imported from a package counts as its submodule if it is one)."""
    out = set()
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
            out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        own = {t for t in _imports(path, modules) if t != module and not module.startswith(t + ".")}
        graph[module] = own
    return graph


def _arrows() -> list[tuple[str, str]]:
    """(module, imported module) for every import between two parts; the package's public API (openslip/__init__)
    sits above everything and is left out."""
    return [
        (module, target)
        for module, targets in _graph().items()
        for target in sorted(targets)
        if module != "openslip" and target != "openslip" and _part(module) != _part(target)
    ]


def test_every_arrow_points_down() -> None:
    up = [f"{m} -> {t}" for m, t in _arrows() if LAYERS[_part(t)] >= LAYERS[_part(m)]]
    assert not up, f"imports that point up or sideways (docs/ARCHITECTURE.md, 'The parts'): {up}"


@pytest.mark.parametrize(("source", "prefix"), sorted(NEVER))
def test_no_forbidden_arrow(source: str, prefix: str) -> None:
    bad = [f"{m} -> {t}" for m, t in _arrows() if _part(m) == source and (t + ".").startswith(prefix + ".")]
    assert not bad, f"{NEVER[source, prefix]}: {bad}"


def test_only_the_parts_above_train_read_the_config() -> None:
    readers = [f"{m} -> {t}" for m, t in _arrows() if _part(t) == "train" and _part(m) not in READS_CONFIG]
    assert not readers, f"only train/ reads Config; the library below it takes plain values: {readers}"


def test_only_the_cli_imports_commands() -> None:
    users = {m for m, t in _arrows() if _part(t) == "commands"}
    assert users <= {"openslip.cli"}, users


def test_losses_take_dicts() -> None:
    """SLIP §3: a loss reads the model's outputs by name, so any model whose dict carries the names trains."""
    import inspect

    from openslip.losses import SLIPLoss

    params = list(inspect.signature(SLIPLoss.forward).parameters)
    assert params[:2] == ["self", "outputs"], params


def test_no_import_cycles() -> None:
    """No module imports, directly or through others, a module that imports it back (a package's own __init__
    aside)."""
    graph = _graph()
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


def test_imports_inside_functions_only_where_they_keep_a_start_light() -> None:
    """`openslip --help` loads no library code (commands/ and cli.py import it when they run); everywhere else an
    import stands at the top of its module, so the arrows above are the ones a reader sees first."""
    inside = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("commands/") or rel == "cli.py":
            continue
        for func in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                for node in ast.walk(func):
                    names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                    names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
                    inside += [f"{rel}:{node.lineno} {n}" for n in names if n.startswith("openslip")]
    assert not inside, inside
