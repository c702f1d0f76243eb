"""Class-name and prompt files as users and dataset releases write them: one name per line (release lists such as
UCF101's classInd.txt, CUB's classes.txt, SUN397's ClassName.txt read as shipped), JSON lists, and the
``{"classnames": [...], "templates": [...]}`` object; folder names read as class names. Data formats, so they
live in ``data/``: the evaluation catalog (``openslip.eval.catalog``) and the labelled-shard reader both use them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from openslip import files
from openslip.errors import ConfigError, DataError


def clean_folder_name(name: str) -> str:
    """A class folder name as prose: 'apple_pie' -> 'apple pie', 'ApplyEyeMakeup' -> 'apply eye makeup',
    '001.Black_footed_Albatross' -> 'black footed albatross'."""
    name = re.sub(r"^\d+[._-]", "", name)  # CUB-style numeric prefixes
    name = name.replace("_", " ").replace("-", " ") if not re.fullmatch(r"[\d\- ]+", name) else name
    if " " not in name and re.search(r"[a-z][A-Z]", name):  # CamelCase (UCF101)
        name = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name).lower()
    return re.sub(r"\s+", " ", name).strip()


PROMPT_KEYS = ("classnames", "templates")


def _read_json(p: Path) -> object:
    return files.read_json(p, limit=files.DOCUMENT_BYTES, error=DataError)


def is_prompt_json(path: str | os.PathLike) -> bool:
    """True for a JSON file holding an object: the ``{"classnames": [...], "templates": [...]}`` form."""
    p = Path(path).expanduser()
    return p.suffix.lower() == ".json" and p.exists() and isinstance(_read_json(p), dict)


def read_prompt_json(path: str | os.PathLike) -> dict[str, list[str]]:
    """Both lists of a ``{"classnames": [...], "templates": [...]}`` file (other keys are ignored); each must be
    a non-empty list of strings."""
    p = Path(path).expanduser()
    doc = _read_json(p)
    if not isinstance(doc, dict):
        raise DataError(f'{p}: expected a JSON object {{"classnames": [...], "templates": [...]}}')
    missing = [k for k in PROMPT_KEYS if k not in doc]
    if missing:
        raise DataError(
            f'{p}: the JSON object has no "{missing[0]}" list; it must give both "classnames" and "templates"'
        )
    for key in PROMPT_KEYS:
        items = doc[key]
        if not isinstance(items, list) or not items or not all(isinstance(x, str) and x.strip() for x in items):
            raise DataError(f'{p}: "{key}" must be a non-empty list of non-empty strings')
    return {key: [x.strip() for x in doc[key]] for key in PROMPT_KEYS}


def read_lines_file(path: str | os.PathLike, what: str) -> list[str]:
    """Non-empty stripped lines of a text file (one class name or template per line), or a JSON list."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"no such {what} file: {p}")
    if p.suffix.lower() == ".json":
        items = _read_json(p)
        if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
            raise DataError(
                f'{p}: a {what} JSON file must hold a list of strings or {{"classnames": [...], "templates": [...]}}'
            )
        if not items:
            raise DataError(f"{p}: no {what} in the file")
        return items
    text = files.read_text(p, limit=files.DOCUMENT_BYTES, error=DataError)
    lines = [line.strip() for line in text.splitlines()]
    items = [line for line in lines if line and not line.startswith("#")]
    if not items:
        raise DataError(f"{p}: no {what} in the file")
    return items


def clean_class_line(line: str) -> str:
    """One line of a dataset release's class list as a class name, so that ``--classnames`` takes those files
    as shipped: '7 ApplyEyeMakeup' (UCF101 classInd.txt) -> 'apply eye makeup', '1 001.Black_footed_Albatross'
    (CUB classes.txt) -> 'Black footed Albatross', '/b/bakery/shop' (SUN397 ClassName.txt) -> 'bakery shop',
    'apple_pie' (Food-101 classes.txt) -> 'apple pie'. Names such as '737-200' or 'F-16A/B' are kept as they are."""
    name = re.sub(r"^\d+\s+", "", line.strip())  # "N name": index column
    if re.fullmatch(r"/[a-z]/[^ ]+", name):  # SUN397: /<first letter>/<scene>[/<sub-scene>]
        name = " ".join(name.split("/")[2:])
    name = re.sub(r"^\d+\.", "", name).replace("_", " ")  # "NNN." numeric prefix
    if " " not in name and re.search(r"[a-z][A-Z]", name):  # CamelCase
        name = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name).lower()
    return re.sub(r"\s+", " ", name).strip()


def read_classnames(path: str | os.PathLike) -> list[str]:
    """Class names from a file: one per line (release formats cleaned by `clean_class_line`), a JSON list, or
    the ``"classnames"`` of a ``{"classnames": [...], "templates": [...]}`` JSON object."""
    if is_prompt_json(path):
        return read_prompt_json(path)["classnames"]
    names = read_lines_file(path, "class names")
    if Path(path).suffix.lower() == ".json":  # JSON names are taken as written
        return names
    cleaned = [clean_class_line(n) for n in names]
    if len(set(cleaned)) != len(cleaned):
        dup = next(c for c in cleaned if cleaned.count(c) > 1)
        raise DataError(f"{path}: class name {dup!r} appears twice")
    return cleaned


def read_templates(path: str | os.PathLike) -> list[str]:
    """Prompt templates from a file: one per line, a JSON list, or the ``"templates"`` of a
    ``{"classnames": [...], "templates": [...]}`` JSON object; each must hold one ``{}``."""
    if is_prompt_json(path):
        templates = read_prompt_json(path)["templates"]
    else:
        templates = read_lines_file(path, "templates")
    try:
        return check_templates(templates)
    except ConfigError as err:
        raise DataError(f"{Path(path).expanduser()}: {err}") from None


def check_templates(templates: list[str] | tuple[str, ...]) -> list[str]:
    """Templates with one '{}' each ('{c}' is accepted and rewritten)."""
    out = []
    for t in templates:
        t = t.replace("{c}", "{}")
        if t.count("{}") != 1:
            raise ConfigError(f"prompt template {t!r} must contain exactly one '{{}}' for the class name")
        out.append(t)
    if not out:
        raise ConfigError("no prompt templates")
    return out
