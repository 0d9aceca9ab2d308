"""Typed values for a configuration dataclass from a recipe or from ``--set key=value``.

Each value is checked against the type of the dataclass field it names (``int``, ``float``,
``bool``, ``str``, tuples of numbers, any of them or None), so a recipe is refused with one line
naming the key before anything runs.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from edgepanc.errors import InputError

_NONE_WORDS = ("none", "null")
_BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True}
_BOOL_WORDS.update({"false": False, "no": False, "off": False, "0": False})


def field_types(cls: type) -> dict[str, Any]:
    """The dataclass ``cls``'s field names and resolved types.

    Example: ``field_types(TrainConfig)["epochs"]`` -> ``int``.
    """
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def typed_values(
    cls: type, values: Mapping[str, Any], source: str | Path, skip: Iterable[str] = ()
) -> dict[str, Any]:
    """``values`` checked and converted for ``cls``'s fields; ``skip`` names are left out.

    An unknown key, or a value of the wrong type, is an InputError naming ``source`` and the key.

    Example::

        >>> typed_values(TrainConfig, {"patch_size": [32, 64, 64], "amp": True}, "r.toml")
        {'patch_size': (32, 64, 64), 'amp': True}
    """
    types_ = field_types(cls)
    typed = {}
    for key, value in values.items():
        if key in skip:
            continue
        if key not in types_:
            raise InputError(source, f"unknown key {key!r} (not a setting of {cls.__name__})")
        try:
            typed[key] = convert(value, types_[key])
        except (TypeError, ValueError) as exc:
            raise InputError(source, f"{key}: {exc}") from None
    return typed


def parse_set(cls: type, assignments: Iterable[str]) -> dict[str, Any]:
    """``--set key=value`` assignments typed by ``cls``'s fields (the text parsed as the field's
    type: ``2,1.2,1.2`` for a tuple, ``true``/``false``, ``none``).

    Example: ``parse_set(TrainConfig, ["epochs=10", "target_spacing=2,1.2,1.2"])`` ->
    ``{"epochs": 10, "target_spacing": (2.0, 1.2, 1.2)}``.
    """
    types_ = field_types(cls)
    typed = {}
    for text in assignments:
        key, sep, raw = text.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise InputError("--set", f"{text!r} is not key=value")
        if key not in types_:
            raise InputError("--set", f"unknown key {key!r} (not a setting of {cls.__name__})")
        try:
            typed[key] = convert(raw.strip(), types_[key], from_text=True)
        except (TypeError, ValueError) as exc:
            raise InputError("--set", f"{key}: {exc}") from None
    return typed


def convert(value: Any, kind: Any, from_text: bool = False) -> Any:
    """``value`` as ``kind`` (a field type); ValueError/TypeError saying what was expected.

    Example: ``convert("32,64,64", tuple[int, int, int], from_text=True)`` -> ``(32, 64, 64)``.
    """
    options = typing.get_args(kind) if _is_union(kind) else (kind,)
    optional = type(None) in options
    options = tuple(o for o in options if o is not type(None))
    if value is None or (from_text and optional and str(value).lower() in _NONE_WORDS):
        if optional:
            return None
        raise ValueError("may not be none")
    if len(options) != 1:
        raise TypeError(f"no rule for a setting of type {kind}")
    return _convert_one(value, options[0], from_text)


def _is_union(kind: Any) -> bool:
    return typing.get_origin(kind) in (typing.Union, types.UnionType)


def _convert_one(value: Any, kind: Any, from_text: bool) -> Any:
    if typing.get_origin(kind) is tuple:
        args = typing.get_args(kind)
        element = args[0]
        if from_text:
            text = str(value) if element is str else str(value).replace("x", ",")  # 32x64x64
            value = [v.strip() for v in text.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ValueError(f"expected a list of {element.__name__}, got {value!r}")
        if len(args) != 2 or args[1] is not Ellipsis:
            if len(value) == 1 and from_text:
                value = list(value) * len(args)
            if len(value) != len(args):
                raise ValueError(f"expected {len(args)} values, got {len(value)}")
        return tuple(_convert_one(v, element, from_text) for v in value)
    if kind is bool:
        if from_text and str(value).lower() in _BOOL_WORDS:
            return _BOOL_WORDS[str(value).lower()]
        if isinstance(value, bool):
            return value
        raise ValueError(f"expected true or false, got {value!r}")
    if kind is int:
        if from_text:
            return int(str(value).strip())
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"expected a whole number, got {value!r}")
    if kind is float:
        if from_text:
            value = float(str(value).strip())
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {value!r}")
        return float(value)
    if typing.get_origin(kind) is dict or kind is dict:
        if isinstance(value, dict) and not from_text:
            return dict(value)
        raise ValueError(f"expected a table, got {value!r}")
    if kind in (str, Path):
        if isinstance(value, str):
            return kind(value)
        raise ValueError(f"expected text, got {value!r}")
    raise TypeError(f"cannot be set from a recipe (type {getattr(kind, '__name__', kind)})")


__all__ = ["convert", "field_types", "parse_set", "typed_values"]
