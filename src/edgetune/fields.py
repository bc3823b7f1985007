"""Typed settings: a dataclass built from a mapping of user values, each value read as its
field's declared type, unknown keys named.

Values come from three places: YAML files (already typed by YAML, where `1e-4` is a string),
Python (typed), and `section.key=value` arguments on a command line, which arrive as text
(`Raw`) and are read as the field's type, never guessed: `out=2024` is the folder "2024",
`train.lr=1e-4` a float, `train.max_steps=null` None. This is the one reader of settings for
the run config, every method's options and the federated settings.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from edgetune.errors import EdgetuneError

T = TypeVar("T")
_NULL = ("null", "none", "~", "")
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


class Raw(str):
    """The text of a `key=value` argument: read as the type of the field it sets."""


def build(cls: type[T], values: Mapping[str, Any], where: str, label: str | None = None) -> T:
    """`cls(**values)` with every value read as its field's type; an unknown key, a value of
    the wrong type or one the class refuses ends in one EdgetuneError naming `where.key`
    (`label` names the keys in the unknown-key message: `lora option`)."""
    if not isinstance(values, Mapping):
        raise EdgetuneError(f"{where} must be a mapping of settings, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(known))
    if unknown:
        listed, keys = ", ".join(known) if known else "none", ", ".join(map(str, unknown))
        what = f"unknown {label}(s) {keys}" if label else f"unknown key(s) in {where}: {keys}"
        raise EdgetuneError(f"{what}; known: {listed}")
    kwargs = {k: read(v, hints[k], f"{where}.{k}") for k, v in values.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise EdgetuneError(f"bad {where} settings: {e}") from None


def read(value: Any, tp: Any, where: str) -> Any:
    """`value` as type `tp` (int, float, bool, str, Path, a union with None, a list, tuple
    or dict of those, or a class with `from_dict`)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return yaml.safe_load(value) if isinstance(value, Raw) else value
    if origin in (typing.Union, types.UnionType):
        null = value is None or (isinstance(value, Raw) and value.strip().lower() in _NULL)
        if null and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return read(value, option, where)
            except EdgetuneError:
                continue
        raise EdgetuneError(f"{where} must be {_describe(tp)}, got {_shown(value)}")
    if value is None:
        raise EdgetuneError(f"{where} must be {_describe(tp)}, got null")
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower() if isinstance(value, Raw | str) else None
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise EdgetuneError(f"{where} must be true or false, got {_shown(value)}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise EdgetuneError(f"{where} must be a number, got {_shown(value)}")
        try:
            number = float(value) if isinstance(value, str) else value
        except ValueError:
            raise EdgetuneError(f"{where} must be a number, got {_shown(value)}") from None
        if not isinstance(number, int | float):
            raise EdgetuneError(f"{where} must be a number, got {_shown(value)}")
        if tp is int:
            if float(number) != int(number):
                raise EdgetuneError(f"{where} must be a whole number, got {_shown(value)}")
            return int(number)
        return float(number)
    if tp in (str, Path):
        if isinstance(value, Raw):
            text = str(value)
            if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
                text = str(yaml.safe_load(text))
            return tp(text)
        if isinstance(value, str | int | float | Path) and not isinstance(value, bool):
            return tp(str(value))
        raise EdgetuneError(f"{where} must be text, got {_shown(value)}")
    if origin is dict:
        items = yaml.safe_load(value) if isinstance(value, Raw) else value
        if not isinstance(items, Mapping):
            raise EdgetuneError(f"{where} must be a mapping, got {_shown(value)}")
        key_tp, value_tp = args or (Any, Any)
        return {read(k, key_tp, f"{where} key"): read(v, value_tp, f"{where}.{k}")
                for k, v in items.items()}  # fmt: skip
    if origin in (list, tuple):
        items = yaml.safe_load(value) if isinstance(value, Raw) else value
        if isinstance(items, str) or not isinstance(items, list | tuple):
            items = [items]
        elem = args[0] if args else Any
        out = [read(v, elem, f"{where}[{i}]") for i, v in enumerate(items)]
        return tuple(out) if origin is tuple else out
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping) and hasattr(tp, "from_dict"):
            return tp.from_dict(dict(value))
        raise EdgetuneError(f"{where} must be {_describe(tp)}, got {_shown(value)}")
    raise EdgetuneError(f"{where}: cannot read a setting of type {tp}")


def plain(value: Any) -> Any:
    """A settings value as YAML writes it: dataclasses (or objects with `to_dict`) as mappings,
    tuples as lists, paths as text."""
    if hasattr(value, "to_dict"):
        return plain(value.to_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) is dict:
        return "a mapping"
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if args:
        words = " or ".join(_describe(a) for a in args)
        return words + (" or null" if type(None) in typing.get_args(tp) else "")
    names = {int: "a whole number", float: "a number", bool: "true or false", str: "text",
             Path: "a path"}  # fmt: skip
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _shown(value: Any) -> str:
    return repr(str(value)) if isinstance(value, Raw) else repr(value)
