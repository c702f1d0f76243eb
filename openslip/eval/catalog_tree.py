"""The catalog sets found under one folder, for `openslip eval suite ROOT` (zero-shot on all of them at once).

How a folder maps to a catalog entry: each direct subfolder ``ROOT/NAME/`` whose name is a catalog entry's name,
title or alias (as `--catalog` reads them: case, '-' and '_' ignored, so ``Food-101/`` is food101) holds that
entry's set, in the entry's layout (`openslip eval zeroshot --list --catalog NAME`). Within it, the split the paper
reports (the entry's ``split``: ``test``, or ``val`` where the reference scored its val folder) is taken from

1. ``ROOT/NAME/SPLIT/``: a class-folder tree or labelled shards, as a release is often unpacked;
2. ``ROOT/NAME/SPLIT.csv``: a CSV of image,label;
3. else ``ROOT/NAME/`` itself, when it holds no folder named after another split (``train/`` alone would be read
   as a class named "train": that is reported instead).

Hidden entries (``.cache``) are passed over; anything else that names no catalog entry is listed as ignored, and a
second folder naming an entry already found is skipped, each with its reason. Opening and scoring a found set is
`openslip.eval.sets`'s work, as for `openslip eval zeroshot --dataset PATH --catalog NAME`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from openslip.errors import ConfigError
from openslip.eval.catalog import catalog_names, get_entry

SPLIT_NAMES = ("train", "val", "valid", "validation", "dev", "test")  # a folder of splits, not classes


@dataclass(frozen=True)
class CatalogSet:
    name: str  # the catalog entry
    folder: Path  # ROOT/NAME as found
    path: Path | None  # what is opened; None when the folder holds no usable split (see ``problem``)
    split: str  # the entry's split
    problem: str | None = None  # why the folder cannot be read, found before anything is opened


@dataclass
class CatalogTree:
    root: Path
    sets: list[CatalogSet]  # in catalog-name order
    ignored: list[str]  # "NAME (why)" of entries that name no catalog set
    skipped: dict[str, str]  # folder name -> why (a second folder for one entry)


def find_catalog_sets(root: str | Path) -> CatalogTree:
    """The catalog sets under ``root`` (module docstring); ROOT not being a directory is a one-line ConfigError."""
    base = Path(root).expanduser()
    if not base.is_dir():
        raise ConfigError(f"{root}: not a directory (give the folder that holds one folder per catalog set)")
    found: dict[str, CatalogSet] = {}
    ignored: list[str] = []
    skipped: dict[str, str] = {}
    named = []
    for child in sorted(base.iterdir(), key=lambda p: p.name):
        if child.name.startswith("."):
            continue
        try:
            named.append((get_entry(child.name).name, child))
        except ConfigError:
            close = difflib.get_close_matches(child.name.lower(), catalog_names(), n=1, cutoff=0.6)
            ignored.append(f"{child.name}" + (f" (did you mean {close[0]}?)" if close else ""))
    # the folder spelt as the entry's name first: it is the one read when two name one entry (food101/, Food-101/)
    for name, child in sorted(named, key=lambda item: (item[0], item[1].name != item[0], item[1].name)):
        if not child.is_dir():
            skipped[child.name] = f"names catalog entry {name} but is not a folder (give ROOT/{name}/)"
        elif name in found:
            skipped[child.name] = f"a second folder for {name} (already read from {found[name].folder.name})"
        else:
            found[name] = _locate(name, child, get_entry(name).split)
    return CatalogTree(base, [found[n] for n in sorted(found)], ignored, skipped)


def _locate(name: str, folder: Path, split: str) -> CatalogSet:
    if (folder / split).is_dir():
        return CatalogSet(name, folder, folder / split, split)
    if (folder / f"{split}.csv").is_file():
        return CatalogSet(name, folder, folder / f"{split}.csv", split)
    others = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name.lower() in SPLIT_NAMES)
    if others:
        return CatalogSet(
            name,
            folder,
            None,
            split,
            f"no {split}/ folder or {split}.csv (the split the paper reports) beside {', '.join(others)}",
        )
    return CatalogSet(name, folder, folder, split)
