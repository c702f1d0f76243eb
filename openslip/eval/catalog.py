"""The catalog of zero-shot datasets: class names, prompt templates, metric and folder layout of each.

The default prompts are the 2021 reference's own (facebookresearch/SLIP ``templates.json`` and ``labels.json``,
shipped unchanged in ``openslip/assets/reference/`` with its MIT licence), so ``openslip eval zeroshot --catalog
NAME`` scores a model the way the paper did. Each dataset's metadata (metric, split, layout, aliases) is one JSON
file in ``openslip/assets/catalog/``; it also carries named alternatives: ``--prompts clip_benchmark`` gives the
clip-benchmark package's prompts (MIT; ``LICENSE-clip_benchmark.txt`` there), with class names from the folders
where that package has none. A class of the reference may have several names (FER-2013: "happy", "smiling");
its classifier averages the prompts of all of them (``zero_shot_classifier``).

Class indices (``ROOT/<index>/`` folders, integer CSV labels) are the dataset's own where its entry states them
(``index_order``: CLEVR-Counts, FER-2013 and Pets, whose native order is not the reference's), else the
reference's class order; they name the same class whichever prompt set is chosen.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path

from openslip import files
from openslip.errors import ConfigError
from openslip.eval.metrics import CLASSIFICATION_METRICS

CATALOG_DIR = Path(__file__).resolve().parent.parent / "assets" / "catalog"
REFERENCE_DIR = Path(__file__).resolve().parent.parent / "assets" / "reference"
# Prompt sets a user can choose (`--prompts`, `eval.prompts` in training): the reference's files, or clip-benchmark's.
PROMPT_SETS = ("reference", "clip_benchmark")
DEFAULT_PROMPTS = "reference"


@dataclass(frozen=True)
class CatalogEntry:
    """One downstream dataset, with the class names and templates of one prompt set."""

    name: str
    title: str
    metric: str  # one of metrics.CLASSIFICATION_METRICS
    num_classes: int
    classnames: tuple[str, ...] | None  # None: take them from the folders or --classnames FILE
    templates: tuple[str, ...]  # format strings with one "{}"
    split: str = "test"  # the split the paper reports: the one the reference scored (its dataset_catalog.json)
    split_source: str = ""  # where `split` comes from, where it is not the release's test split
    layout: str = ""  # the image folder / CSV layout expected
    notes: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)
    # every name of each class, the first being `classnames[i]`; the prompts of all of them are averaged
    synonyms: tuple[tuple[str, ...], ...] | None = None
    class_ids: tuple[str, ...] | None = None  # folder ids in class order (ImageNet's WordNet ids)
    prompts: str = DEFAULT_PROMPTS  # the prompt set of `classnames` and `templates`
    # the class (an index into `classnames`) of each class index of the data (ROOT/<index>/ folders, integer CSV
    # labels), where that order is not `classnames`' (the dataset's own order, or the reference's); None: the same
    index_classes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.metric not in CLASSIFICATION_METRICS:
            raise ConfigError(f"catalog entry {self.name}: unknown metric {self.metric!r}")
        for what, items in (("class names", self.classnames), ("synonym lists", self.synonyms)):
            if items is not None and len(items) != self.num_classes:
                raise ConfigError(f"catalog entry {self.name}: {len(items)} {what}, not {self.num_classes}")
        if self.class_ids is not None and len(self.class_ids) != self.num_classes:
            raise ConfigError(f"catalog entry {self.name}: {len(self.class_ids)} class ids, not {self.num_classes}")
        if self.index_classes is not None and sorted(self.index_classes) != list(range(self.num_classes)):
            raise ConfigError(
                f"catalog entry {self.name}: index_order is not an order of its {self.num_classes} classes"
            )

    def prompt_names(self) -> list[list[str]] | None:
        """The names to prompt with, per class (several for a class with synonyms)."""
        if self.synonyms is not None:
            return [list(names) for names in self.synonyms]
        return [[name] for name in self.classnames] if self.classnames is not None else None


@lru_cache(maxsize=1)
def reference_prompts() -> tuple[dict[str, list], dict[str, list]]:
    """(labels, templates) of the 2021 reference, keyed by its dataset names, exactly as it ships them."""
    labels = files.read_json(REFERENCE_DIR / "labels.json")
    templates = files.read_json(REFERENCE_DIR / "templates.json")
    return labels, templates


def _entry_from_json(path: Path, prompts: str) -> CatalogEntry:
    doc = files.read_json(path)
    synonyms = None
    if prompts == "reference":
        labels, templates = reference_prompts()
        key = doc["reference_key"]
        lists = [tuple(x) if isinstance(x, list) else (x,) for x in labels[key]]
        names, temps = [x[0] for x in lists], templates[key]
        synonyms = tuple(lists) if any(len(x) > 1 for x in lists) else None
        order = doc.get("index_order")
    else:
        alt = doc.get("alternatives", {}).get(prompts)
        if alt is None:  # e.g. Birdsnap, VOC2007: only the reference has prompts for them
            raise ConfigError(f"catalog entry {doc['name']} has no {prompts!r} prompts; use --prompts reference")
        names, temps, order = alt["classnames"], alt["templates"], alt.get("index_order")
        if names is not None and order is None and "index_order" in doc:  # indices would change with the prompts
            raise ConfigError(f"catalog entry {doc['name']}: its {prompts!r} prompts state no index_order")
    ids_file = CATALOG_DIR / f"{doc['name']}_ids.txt"
    return CatalogEntry(
        name=doc["name"],
        title=doc.get("title", doc["name"]),
        metric=doc.get("metric", "top1"),
        num_classes=int(doc["num_classes"]),
        classnames=tuple(names) if names is not None else None,
        templates=tuple(temps),
        split=doc.get("split", "test"),
        split_source=doc.get("split_source", ""),
        layout=doc.get("layout", ""),
        notes=doc.get("notes", ""),
        aliases=tuple(doc.get("aliases", ())),
        synonyms=synonyms,
        class_ids=tuple(files.read_text(ids_file, limit=files.DOCUMENT_BYTES).split()) if ids_file.is_file() else None,
        prompts=prompts,
        index_classes=_index_classes(doc["name"], order, names),
    )


def _index_classes(name: str, order: list[str] | None, names: list[str] | None) -> tuple[int, ...] | None:
    """``index_order`` (the class names of indices 0..N-1) as positions in ``names``."""
    if order is None or names is None:
        return None
    unknown = [n for n in order if n not in names]
    if unknown:
        raise ConfigError(f"catalog entry {name}: index_order names {unknown[0]!r}, which is not a class name")
    return tuple(names.index(n) for n in order)


@lru_cache(maxsize=1)
def _catalog_files() -> dict[str, Path]:
    return {path.stem: path for path in sorted(CATALOG_DIR.glob("*.json"))}


@cache
def _entry(name: str, prompts: str) -> CatalogEntry:
    return _entry_from_json(_catalog_files()[name], prompts)


def catalog_names() -> list[str]:
    """The catalogued dataset names: the 28 of the reference's prompt files (the paper's 26, Birdsnap, VOC2007)."""
    return sorted(_catalog_files())


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def check_prompt_set(prompts: str) -> str:
    if prompts not in PROMPT_SETS:
        raise ConfigError(f"unknown prompt set {prompts!r}; choose one of: {', '.join(PROMPT_SETS)}")
    return prompts


def get_entry(name: str, prompts: str = DEFAULT_PROMPTS) -> CatalogEntry:
    """The entry for a name or alias (case, '-' and '_' ignored: 'Food-101' finds food101), with the class names
    and templates of the prompt set ``prompts`` (``reference``: the 2021 reference's; ``clip_benchmark``)."""
    check_prompt_set(prompts)
    wanted = _key(name)
    for stem in _catalog_files():
        entry = _entry(stem, DEFAULT_PROMPTS)
        if wanted in {_key(entry.name), _key(entry.title), *(_key(a) for a in entry.aliases)}:
            return entry if prompts == DEFAULT_PROMPTS else _entry(stem, prompts)
    close = difflib.get_close_matches(name.lower(), catalog_names(), n=3, cutoff=0.5)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    raise ConfigError(f"no catalog entry {name!r}{hint}; choose one of: {', '.join(catalog_names())}")


def split_catalog_spec(spec: str) -> tuple[str | None, str]:
    """``NAME:PATH`` -> (catalog name, PATH) when NAME is a catalog dataset (``imagenet:/data/imagenet/val``, as
    `eval.sets` and `openslip compare` sets take it); any other spec -> (None, spec)."""
    prefix, sep, rest = spec.partition(":")
    if not sep or not rest or "/" in prefix or "\\" in prefix:
        return None, spec
    try:
        return get_entry(prefix).name, rest
    except ConfigError:
        return None, spec
