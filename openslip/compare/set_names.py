"""Distinct names for the evaluation sets of one experiment: they title the table's columns and name its files.

A set is named by its test side (a file set by its file or folder name, a catalog set by the catalog's name), so
two sets can share a name: ``/data/a/test.csv`` and ``/data/b/test.csv``. Those take as much of their path as
separates them (``a/test.csv``, ``b/test.csv``); sets whose test side is one path (``test@train`` and ``test``)
are told apart by their whole spec, each path shortened to its last part, and numbered if even that is equal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from openslip.eval.catalog import split_catalog_spec
from openslip.eval.suite import RETRIEVAL_PREFIX, split_prompts_spec


def distinct_names(sets: list[Any]) -> list[str]:
    """The names of `sets` (``EvalSet``s), each unique, in order; unchanged where a name is unique already."""
    names = [s.name for s in sets]
    for name in dict.fromkeys(n for n in names if names.count(n) > 1):
        group = [i for i, n in enumerate(names) if n == name]
        parts = {i: _test_path_parts(sets[i].spec) for i in group}
        chosen = None
        for depth in range(2, max(len(p) for p in parts.values()) + 1):
            tails = {i: "/".join(parts[i][-depth:]) for i in group}
            if len(set(tails.values())) == len(group):
                chosen = {i: t if parts[i][-1:] == [name] else f"{name} ({t})" for i, t in tails.items()}
                break
        if chosen is None:
            short = {i: _short_spec(sets[i].spec) for i in group}
            if len(set(short.values())) == len(group):
                chosen = short
            else:
                chosen = {i: name if k == 0 else f"{name} ({k + 1})" for k, i in enumerate(group)}
        for i in group:
            names[i] = chosen[i]
    return names


def _test_path_parts(spec: str) -> list[str]:
    """The parts of the absolute path of a set's test side (retrieval or classification)."""
    body, _ = split_prompts_spec(spec.removeprefix(RETRIEVAL_PREFIX))
    _, test = split_catalog_spec(body.partition("@")[0])
    return list(Path(test).expanduser().absolute().parts)


def _short_spec(spec: str) -> str:
    """``/x/pets/test@/x/pets/train#/x/p.json`` -> ``test@train#p.json``."""
    out = []
    for piece in _split_keep(spec, "@#"):
        out.append(piece if piece in "@#" else Path(piece).name or piece)
    return "".join(out)


def _split_keep(text: str, separators: str) -> list[str]:
    pieces, current = [], ""
    for ch in text:
        if ch in separators:
            pieces += [current, ch]
            current = ""
        else:
            current += ch
    return [*pieces, current]
