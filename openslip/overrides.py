"""`key.path=value` overrides for any typed dataclass: parsing, type checking and applying them.

`openslip train` builds its `Config` from them (`openslip.train.config`); `openslip finetune` and
`openslip bench train` take them the same way. Values are YAML scalars or lists (`1e-3`, `true`, `null`,
`[a, b]`), checked against the field's annotation; a mistake is one `ConfigError` line naming the key and,
for an unknown key, the valid ones. `setting_changes` walks two settings trees to the values that differ (a
resumed run's, a finetuning state's and a compare experiment's identity checks).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterator
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from openslip.errors import ConfigError

T = TypeVar("T")


def check_choice(key: str, value: object, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not valid; choose one of: {', '.join(map(str, choices))}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(key: str, value: Any, tp: Any) -> Any:
    """Check `value` against the annotation `tp`, converting where it is lossless (int -> float, list -> tuple)."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(key, value, arg)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{key}: cannot be None")
    if origin is Literal:
        check_choice(key, value, get_args(tp))
        return value
    if origin in (tuple, list):
        if isinstance(value, str) and "," in value:  # `eval.sets=a,b`: YAML reads it as one string
            raise ConfigError(f"{key}={value!r} should be a list: write {key}=[{value}]")
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}={value!r} should be a list")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}={value!r} should have {len(args)} items")
            return tuple(coerce(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args, strict=True)))
        item = args[0] if args else Any
        return origin(coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value))
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is float:
        number = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):  # no setting means anything with nan or inf (torch would raise later)
                raise ConfigError(f"{key}={value!r} should be a finite number")
            return number
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return build(tp, value, prefix=f"{key}.")
    raise ConfigError(f"{key}={value!r} should be of type {_type_name(tp)}")


def _fields(cls: type) -> tuple[dict[str, Any], list[str]]:
    """(annotation by name, names) of the fields a constructor takes."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    return {n: hints[n] for n in names}, names


def _unknown(prefix: str, key: str, names: list[str]) -> ConfigError:
    return ConfigError(f"unknown key '{prefix}{key}'; valid keys: {', '.join(prefix + n for n in names)}")


def _construct(make: Any, prefix: str) -> Any:
    try:
        return make()
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {err}") from None


def build(cls: type[T], values: dict[str, Any], prefix: str = "") -> T:
    """`cls(**values)` with every key known and every value checked against its annotation (nested dicts build
    nested dataclasses); the fields not given keep their defaults."""
    hints, names = _fields(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in hints:
            raise _unknown(prefix, key, names)
        kwargs[key] = coerce(prefix + key, value, hints[key])
    return _construct(lambda: cls(**kwargs), prefix)


def replace_values(obj: T, values: dict[str, Any], prefix: str = "") -> T:
    """A copy of the dataclass `obj` with `values` (a tree as `parse_overrides` gives) replacing its fields; a
    nested dataclass field keeps the values not given. `__post_init__` checks the result."""
    hints, names = _fields(type(obj))
    changes = {}
    for key, value in values.items():
        if key not in hints:
            raise _unknown(prefix, key, names)
        current = getattr(obj, key)
        if isinstance(value, dict) and dataclasses.is_dataclass(current):
            changes[key] = replace_values(current, value, prefix=f"{prefix}{key}.")
        else:
            changes[key] = coerce(prefix + key, value, hints[key])
    return _construct(lambda: dataclasses.replace(obj, **changes), prefix)


def apply_overrides(obj: T, overrides: list[str]) -> T:
    """`obj` (a dataclass instance) with `["epochs=2", "optim.lr=1e-3"]` applied: same type, checked."""
    return replace_values(obj, parse_overrides(overrides))


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """["train.steps=10", "optim.lr=1e-3"] -> {"train": {"steps": 10}, "optim": {"lr": 0.001}} (YAML scalars)."""
    tree: dict[str, Any] = {}
    seen: dict[str, str] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} should look like key.path=value")
        if key.strip() in seen:  # the later value would silently win: most often a pattern the shell expanded
            raise ConfigError(_repeated_key(key.strip(), seen[key.strip()], item))
        seen[key.strip()] = item
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            if raw.lstrip().startswith("["):  # meant as a list: as a plain string it would be a baffling path
                raise ConfigError(
                    f"override {item!r} is not a valid YAML list: quote the items that hold {{ }} , ? or :, "
                    f"e.g. {key.strip()}=['/data/shard-{{000..009}}.tar',/data/photos]"
                ) from None
            value = raw
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier value for {part!r}")
        node[parts[-1]] = value
    return tree


def _repeated_key(key: str, first: str, second: str) -> str:
    line = f"{key} is given twice ({first!r}, {second!r}): give each key once"
    # paths (training's data.* keys hold them): most often a brace pattern the shell expanded
    if "/" in first + second or key.startswith("data."):
        line += (
            f"; quote a brace pattern, or the shell expands it into one override per file: "
            f"'{key}=/data/shard-{{000000..000099}}.tar'"
        )
    return line


def field_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of a dataclass (`train.steps`, `model`, ...), nested dataclasses expanded."""
    out = []
    hints, names = _fields(cls)
    for name in names:
        if dataclasses.is_dataclass(hints[name]):
            out += field_keys(hints[name], f"{prefix}{name}.")
        else:
            out.append(prefix + name)
    return out


def key_type(cls: type, key: str) -> Any:
    """The annotation of the dotted `key` of `cls`, or None when there is no such key."""
    for part in key.split("."):
        hints, _ = _fields(cls) if dataclasses.is_dataclass(cls) else ({}, [])
        if part not in hints:
            return None
        cls = hints[part]
    return cls


def option_key(option: str, cls: type, renamed: dict[str, str] | None = None) -> str | None:
    """The dotted key of `cls` an option such as `--steps` or `--train.batch-size` means, when exactly one matches;
    `renamed` maps the options a command used to have (`--lr`) to the keys that replaced them (`base_lr`)."""
    name = option.lstrip("-").partition("=")[0].replace("-", "_")
    if renamed and name in renamed:
        return renamed[name]
    keys = field_keys(cls)
    if name in keys:
        return name
    matches = [k for k in keys if k.rpartition(".")[2] == name]
    return matches[0] if len(matches) == 1 else None


MISSING: Any = object()  # `setting_changes`: the side that lacks a key


def setting_changes(
    saved: Any, current: Any, missing: Any = MISSING, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], Any, Any]]:
    """(key path, saved value, current value) for each setting that differs between two JSON-like trees, in the
    current tree's key order, then the keys only the saved one has. Sections that are dicts on both sides are walked;
    a key one side lacks has the value `missing` there; tuples compare as the lists JSON reads back."""
    if isinstance(saved, dict) and isinstance(current, dict):
        for key in [*current, *(k for k in saved if k not in current)]:
            yield from setting_changes(saved.get(key, missing), current.get(key, missing), missing, (*path, key))
        return
    saved, current = (list(v) if isinstance(v, tuple) else v for v in (saved, current))
    if saved != current:
        yield path, saved, current
