"""`openslip` command line: one sub-command per module under ``openslip/commands``.

Each command module defines ``register(subparsers)``, which adds its parser and sets ``func`` to the
function that runs it. User errors (``UserError``) end with a one-line message on stderr and exit 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import typing

from openslip.errors import RunStopped, UserError

# Sub-command modules in help order; imported lazily so `openslip --help` stays fast.
COMMANDS: list[str] = [
    "train",
    # each helper/feature adds its module name here when the command works end to end
    "data",
    "convert",
    "export",
    "plot",
    "eval",
    "embed",
    "finetune",
    "bench",
    "compare",
]


def _version() -> str:
    from openslip.version import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="openslip", description="SLIP / CLIP / SimCLR pre-training and evaluation")
    parser.add_argument("--version", action="version", version=f"openslip {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"openslip.commands.{name}")
        module.register(sub)
    return parser


def _option_hint(args: argparse.Namespace, extra: list[str], argv: list[str]) -> str | None:
    """`openslip train --steps 100`: settings are key=value overrides; name the one the option meant. A command
    whose overrides are not the training config's names their dataclass (`overrides_of`, a function returning it)
    and the options it once had under other names (`option_renames`, e.g. finetune's `--lr` -> `base_lr`), or a
    lookup of its own (`option_key`, option -> key or None: an eval command takes only the keys its task reads);
    `option_bare_values` gives what an option once meant without a value (eval's `--reference-lr-bug`: `=0`)."""
    if not isinstance(getattr(args, "overrides", None), list):
        return None
    from openslip.overrides import key_type, option_key

    lookup = getattr(args, "option_key", None)  # a command's own lookup (`openslip eval knn --knn-k 10`)

    settings = getattr(args, "overrides_of", None)  # a function returning the dataclass (imported when needed)
    if settings is None:
        from openslip.train.config import Config

        cls = Config
    else:
        cls = settings()
    for item in extra:
        if not item.startswith("--"):
            continue
        key = lookup(item) if lookup else option_key(item, cls, getattr(args, "option_renames", None))
        if key is None:
            continue
        option, sep, value = item.partition("=")
        if not sep:  # the value follows in argv (argparse filed it under the overrides)
            at = argv.index(item) + 1 if item in argv else len(argv)
            given = at < len(argv) and not argv[at].startswith("-") and "=" not in argv[at]
            bare = getattr(args, "option_bare_values", {}).get(key, "VALUE")
            tp = key_type(cls, key)
            switch = tp is bool or bool in typing.get_args(tp)  # --compile (train.compile: bool | "auto"): a switch
            value = argv[at] if given else "true" if switch else bare
        return f"unrecognized option {option}: settings are key=value overrides; write `{key}={value}`"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may follow options (`openslip compare a=1 --seeds 0,1 b=2`), which a positional list
    # alone does not accept once an option has interrupted it.
    args, extra = parser.parse_known_args(argv)
    name = getattr(args, "command_name", args.command)  # a sub-command's own (`eval knn`), as argparse names it
    if extra:
        if isinstance(getattr(args, "overrides", None), list) and all("=" in e and e[0] != "-" for e in extra):
            args.overrides += extra
        else:
            hint = _option_hint(args, extra, sys.argv[1:] if argv is None else list(argv))
            if hint:
                print(f"openslip {name}: error: {hint}", file=sys.stderr)
                return 2
            parser.parse_args(argv)  # argparse's own message for what it does not know, and exit 2
    try:
        result = args.func(args)
    except UserError as err:
        print(f"openslip {name}: error: {err}", file=sys.stderr)
        return 2
    except RunStopped as stop:  # a clean stop on SIGTERM / SIGINT, with a checkpoint to resume from
        print(f"openslip {name}: {stop}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt as stop:  # Ctrl-C, or a second SIGTERM / SIGINT during a run (it says which)
        print(f"openslip {name}: {stop or 'interrupted'}", file=sys.stderr)
        return getattr(stop, "exit_code", 130)
    except BrokenPipeError:  # `openslip ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return int(result or 0)


def entry() -> None:
    """The `openslip` command: `main`, then leave with its exit code.

    A process of a multi-process run (torchrun sets WORLD_SIZE) leaves through `os._exit` once its output is
    flushed. Interpreter finalization there can abort in the destructors of the collective library's threads
    (SIGABRT, seen under load both after a finished run and after a peer's death), which turned a finished run or
    the one-line "lost contact" error into a crash. Checkpoints, logs and the run lock are closed by then.

    Once `main` has returned, the outcome and its message are settled: a SIGINT / SIGTERM that arrives while the
    interpreter winds down (a scheduler's repeated signal, a second Ctrl-C) is ignored instead of turning that
    outcome into a KeyboardInterrupt traceback or another exit code."""
    code = main()
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)
    if os.environ.get("WORLD_SIZE", "1").strip() not in ("", "0", "1"):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
