"""How openslip's code is laid out, in figures a refactoring should lower or keep (issue 26).

    python benchmarks/architecture.py [--root CHECKOUT] [--json] [--static]

CHECKOUT (default: this script's) is read with `ast`; the option and walk figures import its openslip in a child
process (--static skips them). Think of a house: a module is a room, a top-level folder or file is a part, and an
import is an arrow from one room to another.

- rooms: the .py files under openslip/; a package's `__init__.py` only if it holds more than a docstring, imports
  and `__all__`. parts: openslip's top-level folders and modules (`models`, `config`; `__init__`: the public API).
- arrows: distinct (module, imported module) pairs, imports inside functions included. `from openslip.x import
  name` points at `openslip.x.name` when that is a module, else at `openslip.x`. Lazy imports count: a string
  that is exactly a module's dotted name (`"openslip.models"`), and `f"openslip.commands.{name}"` (the modules
  under that prefix whose names are strings in the file). Between parts: distinct (part, part) pairs among them.
- arrows back up: arrows from a lower layer to a higher one (LAYERS below): as a house's foundation should not
  hang from its roof, a low layer should not need a high one.
- part cycles: groups of parts that all reach one another along arrows (strongly connected components of more
  than one part): `config <-> data` says each reaches the other. Layer cycles: the same between layers.
- command options: flags (minus -h/--help) and positional arguments of each sub-command of the real `openslip`
  parser (`train`, `eval zeroshot`, `bench train`), and their totals.
- lines of commands/: lines of openslip/commands/*.py, and those neither blank nor a `#` comment.
- train(cfg) walk: one step of the micro model on the built-in demo world, with its final zero-shot evaluation
  and checkpoint, under `sys.setprofile`. Rooms entered: modules whose functions ran. Moves: distinct (caller
  function, callee function) pairs in different modules; module pairs: the distinct (caller, callee) modules of
  those. A call through torch (`module(x)` reaching `forward`) counts from the nearest openslip function; code run
  by an import does not count. Climbs back up: moves to a
  higher layer. Most entered: modules by cross-module calls into them (resuming a generator is a call). Config
  rooms: the modules whose functions were handed the typed config or one of its sections as an argument (where
  the config travels; docs/ARCHITECTURE.md wants it to stay inside train/).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import io
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

# Layers, low to high (a layer's number is its position): name -> the modules and folders in it, dotted, relative to
# openslip (a module's old and new homes both listed). A module takes the layer of its longest listed prefix.
LAYERS = {
    "core": "",  # errors, files, registry, tokenizer, losses, distributed, optim, step, ...: every module not listed
    "models": "models",
    "weights": "weights checkpoint safe_load atomic interop.clip_layout",
    "data": "data",
    "eval": "eval",
    "interop": "interop",
    "train": "train config recipes paper train_state run_log accumulate perf best data.pipeline",
    "compare/bench": "compare bench plot",
    "commands": "commands cli",
    "api": "__init__",  # openslip/__init__.py: the public API, on top
}
LAYER_NAMES = list(LAYERS)
CONFIG_MODULES = ("openslip.config", "openslip.train.config")  # where the typed config is defined, old and new
LAYER_OF = {name: n for n, names in enumerate(LAYERS.values()) for name in names.split()}
# The walk's run: `key=value` settings as `openslip train` takes them (small, so it takes seconds on a CPU).
WALK_SETTINGS = "model=slip_vit_micro train.steps=1 train.batch_size=16 train.log_every=1 train.progress=false".split()
WALK_SETTINGS += "train.threads=1 data.num_workers=0 optim.warmup_steps=0 eval.samples=32".split()


def rel(module: str) -> str:  # `openslip.data.loader` -> `data.loader`; openslip itself -> `__init__`
    return module.partition(".")[2] or "__init__"


def layer(module: str) -> int:
    names = rel(module).split(".")
    return next((LAYER_OF[p] for n in range(len(names), 0, -1) if (p := ".".join(names[:n])) in LAYER_OF), 0)


def part(module: str) -> str:
    return rel(module).split(".")[0]


def module_name(names: tuple[str, ...]) -> str:
    return ".".join(names[:-1] if names[-1] == "__init__" else names)


def has_code(tree: ast.Module) -> bool:
    """More than a docstring, imports and `__all__`."""
    for node in tree.body:
        names = [t.id for t in getattr(node, "targets", [getattr(node, "target", None)]) if isinstance(t, ast.Name)]
        docstring = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        if not (isinstance(node, (ast.Import, ast.ImportFrom)) or docstring or names == ["__all__"]):
            return True
    return False


def imports(tree: ast.Module, module: str, is_pkg: bool, modules: dict[str, Path]) -> set[str]:
    """The openslip modules `module` imports, anywhere in its code (see the docstring's `arrows`)."""
    nodes = list(ast.walk(tree))
    strings = {n.value for n in nodes if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package, up level - 1
                here = module.split(".") if is_pkg else module.split(".")[:-1]
                base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
            subs = {f"{base}.{a.name}" for a in node.names} & modules.keys()
            found |= subs | ({base} if len(subs) < len(node.names) else set())  # names that are not modules
        elif isinstance(node, ast.Constant) and node.value in modules and "." in node.value:  # not "openslip"
            found.add(node.value)
        elif isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
            prefix = str(node.values[0].value)
            if prefix.startswith("openslip.") and prefix.endswith("."):
                found |= {m for m in modules if m.startswith(prefix) and m[len(prefix) :] in strings}
    out = set()
    for target in found:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        out |= {target} if target and target != module else set()
    return out


def cycles(graph: dict[str, set[str]]) -> list[str]:
    """The strongly connected components of more than one node, as `a <-> b <-> c` (small graphs)."""
    reach = {n: set(out) for n, out in graph.items()}
    for _ in graph:  # as many rounds as nodes follow every path
        reach = {n: r.union(*(reach[m] for m in r)) for n, r in reach.items()}
    groups = {tuple(sorted(m for m in graph if m in reach[n] and n in reach[m])) for n in graph}
    return sorted(" <-> ".join(g) for g in groups if len(g) > 1)


def static_figures(root: Path) -> dict:
    paths = {module_name(p.relative_to(root).with_suffix("").parts): p for p in (root / "openslip").rglob("*.py")}
    trees = {m: ast.parse(p.read_text(encoding="utf-8")) for m, p in paths.items()}
    rooms = [m for m, p in paths.items() if p.name != "__init__.py" or has_code(trees[m])]
    arrows = sorted((m, b) for m in paths for b in imports(trees[m], m, paths[m].name == "__init__.py", paths))
    part_graph: dict[str, set[str]] = {part(m): set() for m in paths}
    layer_graph: dict[str, set[str]] = {name: set() for name in LAYER_NAMES}
    for a, b in arrows:
        part_graph[part(a)] |= {part(b)} - {part(a)}
        layer_graph[LAYER_NAMES[layer(a)]] |= {LAYER_NAMES[layer(b)]} - {LAYER_NAMES[layer(a)]}
    up = [f"{rel(a)} -> {rel(b)}" for a, b in arrows if layer(a) < layer(b)]
    lines = [x.strip() for p in (root / "openslip/commands").glob("*.py") for x in p.read_text("utf-8").splitlines()]
    return {
        "rooms": len(rooms),
        "parts": len({part(m) for m in rooms}),
        "part_names": sorted({part(m) for m in rooms}),
        "arrows": len(arrows),
        "part_arrows": sum(len(v) for v in part_graph.values()),
        "arrows_back_up": len(up),
        "arrows_back_up_list": up,
        "part_cycles": cycles(part_graph),
        "layer_cycles": cycles(layer_graph),
        "command_lines": len(lines),
        "command_code_lines": sum(1 for x in lines if x and not x.startswith("#")),
    }


def command_options() -> dict:
    """Option flags and positionals per sub-command of the real parser (in the child, openslip importable)."""
    from openslip.cli import build_parser

    rows: dict[int, tuple[str, int, int]] = {}  # parser id -> (command, flags, positionals)

    def visit(parser: argparse.ArgumentParser, name: str) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        own = [a for a in parser._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]
        if own or not subs:
            flags = sum(bool(a.option_strings) for a in own)
            rows.setdefault(id(parser), (name or "(openslip)", flags, len(own) - flags))  # an alias: once
        for sub_name, sub in [(n, p) for a in subs for n, p in a.choices.items()]:
            visit(sub, f"{name} {sub_name}".strip())

    visit(build_parser(), "")
    totals = [sum(r[1] for r in rows.values()), sum(r[2] for r in rows.values())]
    return {
        "options": {n: [f, p] for n, f, p in rows.values()},
        "options_total": totals[0],
        "positionals_total": totals[1],
    }


def find(name: str, *modules: str):
    """`name` from the first of `modules` that has it (it may live in the old layout or the new)."""
    for module in modules:
        with contextlib.suppress(ImportError):
            if callable(found := getattr(importlib.import_module(module), name, None)):
                return found
    raise SystemExit(f"architecture.py: found no {name} in {', '.join(modules)}")


def walk(root: Path) -> dict:
    """Trace one tiny train(cfg) (in the child, openslip importable); see the docstring's last item."""
    package = (root / "openslip").resolve()
    parse_overrides = find("parse_overrides", "openslip.config", "openslip.overrides")
    make_config = find("make_config", "openslip.recipes", "openslip.train.recipes", "openslip.train.config")
    train = find("train", "openslip.train", "openslip.train.loop")
    idents: dict = {}  # code object -> (module, function), "import" for a module's own code, None outside openslip
    moves = Counter()  # (caller, callee) -> calls
    entered: set[str] = set()
    config_rooms: set[str] = set()  # modules whose functions were given a Config or one of its sections
    importing = 0  # openslip modules being imported (their code is not the walk)

    def ident(code):
        if code not in idents:
            idents[code] = None
            if code.co_filename.startswith(str(package) + os.sep):
                module = module_name(Path(code.co_filename).relative_to(package.parent).with_suffix("").parts)
                function = getattr(code, "co_qualname", code.co_name)
                if code.co_name in ("<listcomp>", "<dictcomp>", "<setcomp>", "<genexpr>"):  # its function's code
                    function = function.rpartition(".<locals>.")[0] or function
                idents[code] = "import" if code.co_name == "<module>" else (module, function)
        return idents[code]

    def profile(frame, event, arg):
        nonlocal importing
        callee = ident(frame.f_code) if event in ("call", "return") else None
        if callee == "import":
            importing += 1 if event == "call" else -1
        if event != "call" or importing or not isinstance(callee, tuple):
            return
        entered.add(callee[0])
        code = frame.f_code
        given = (frame.f_locals.get(name) for name in code.co_varnames[: code.co_argcount + code.co_kwonlyargcount])
        if any(type(value).__module__ in CONFIG_MODULES for value in given):
            config_rooms.add(callee[0])
        caller, up = None, frame.f_back
        while up is not None and (caller := ident(up.f_code)) is None:
            up = up.f_back
        if isinstance(caller, tuple) and caller[0] != callee[0]:
            moves[(caller, callee)] += 1

    with tempfile.TemporaryDirectory() as tmp:
        cfg = make_config(parse_overrides([*WALK_SETTINGS, f"out_dir={tmp}/run"]))
        sys.setprofile(profile)  # the main thread: openslip starts no thread of its own
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                train(cfg)
        finally:
            sys.setprofile(None)
    into = sum((Counter({rel(callee[0]): n}) for (_, callee), n in moves.items()), Counter())
    climbs = sorted(f"{rel(a[0])}.{a[1]} -> {rel(b[0])}.{b[1]}" for a, b in moves if layer(a[0]) < layer(b[0]))
    return {
        "walk_rooms": len(entered),
        "walk_moves": len(moves),
        "walk_module_moves": len({(a[0], b[0]) for a, b in moves}),
        "walk_climbs": len(climbs),
        "walk_climbs_list": climbs,
        "walk_most_entered": dict(into.most_common(10)),
        "config_rooms": sorted(rel(m) for m in config_rooms),
    }


def dynamic_figures(root: Path) -> dict:
    """The parser and the walk import the checkout's openslip: in a fresh process, whatever this one imported."""
    done = subprocess.run([sys.executable, __file__, "--root", str(root), "--child"], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"architecture.py: the child process failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.splitlines()[-1])  # the last line: anything else the run printed comes before


def table(f: dict) -> str:
    rows = [
        ("rooms (modules)", f["rooms"]),
        ("parts (top-level packages and modules)", f["parts"]),
        ("arrows (module imports) / between parts", f"{f['arrows']} / {f['part_arrows']}"),
        ("arrows back up (to a higher layer)", f["arrows_back_up"]),
        ("part cycles", "; ".join([str(len(f["part_cycles"])), *f["part_cycles"]])),
        ("layer cycles", "; ".join([str(len(f["layer_cycles"])), *f["layer_cycles"]])),
        ("lines of commands/ (non-blank, non-comment)", f"{f['command_lines']} ({f['command_code_lines']})"),
    ]
    if "options" in f:  # not with --static
        most = ", ".join(f"{m} {n}" for m, n in f["walk_most_entered"].items())
        rows += [("command options: flags, positionals", f"{f['options_total']}, {f['positionals_total']}")]
        rows += [("train(cfg) walk: rooms entered", f["walk_rooms"]), ("train(cfg) walk: moves", f["walk_moves"])]
        rows += [("train(cfg) walk: module pairs of its moves", f["walk_module_moves"])]
        rows += [("train(cfg) walk: climbs back up", f["walk_climbs"]), ("train(cfg) walk: most entered", most)]
        rooms = f["config_rooms"]
        rows += [("train(cfg) walk: rooms the config is handed to", f"{len(rooms)}: {', '.join(rooms)}")]
    out = ["| figure | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
    if "options" in f:
        out += ["", "| command | flags | positionals |", "|---|---|---|"]
        out += [f"| {name} | {o} | {p} |" for name, (o, p) in f["options"].items()]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1], help="checkout to measure")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of tables")
    parser.add_argument("--static", action="store_true", help="only the figures read from the source (no parser, walk)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    root = args.root.resolve()
    if not (root / "openslip").is_dir():
        parser.error(f"{root} holds no openslip/ folder")
    if args.child:
        sys.path.insert(0, str(root))
        if not importlib.import_module("openslip").__file__.startswith(str(root / "openslip")):
            raise SystemExit(f"architecture.py: imported another openslip than {root}'s")
        print(json.dumps({**command_options(), **walk(root)}))
        return 0
    figures = static_figures(root)
    if not args.static:
        figures |= dynamic_figures(root)
    print(json.dumps(figures, indent=1) if args.json else table(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
