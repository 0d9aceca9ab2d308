"""Recipes: TOML files of configuration values, one per situation, read by ``--recipe``.

The recipes ship inside the package (``edgepanc/recipes/train/*.toml``,
``edgepanc/recipes/quant/*.toml``) so that ``--recipe cpu-bf16`` works after ``pip install``; the
repository's top-level ``train/`` and ``quant/`` folders hold the same files for people browsing
the repository (a test keeps them identical). A recipe's keys are the field names of the stage's
configuration dataclass (:class:`~edgepanc.training.config.TrainConfig`,
:class:`~edgepanc.quantization.config.QuantizeConfig`); a run's own ``config.json`` is read the
same way, so a finished run is itself a recipe.

This package needs the standard library alone (``tomli`` on Python 3.10), so the CLI can read a
recipe before it imports a stage.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from edgepanc.errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 only
    import tomli as tomllib

RECIPE_ROOT = Path(__file__).resolve().parent
STAGES: tuple[str, ...] = ("train", "quant")


def recipe_names(stage: str) -> list[str]:
    """The recipes shipped for ``stage`` ("train" or "quant"), by name.

    Example: ``recipe_names("quant")`` -> ``["demo", "int8", "prune-int8"]``.
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    return sorted(p.stem for p in (RECIPE_ROOT / stage).glob("*.toml"))


def recipe_path(stage: str, name_or_file: str | Path) -> Path:
    """A shipped recipe's file by name (``cpu-bf16``), or a file given by its path.

    A path is anything with a folder part or a ``.toml``/``.json`` ending; an unknown name is an
    InputError listing the recipes there are.

    Example: ``recipe_path("train", "gpu").name`` -> ``"gpu.toml"``.
    """
    text = str(name_or_file)
    looks_like_file = "/" in text or "\\" in text or text.endswith((".toml", ".json"))
    if looks_like_file:
        path = Path(text)
        if not path.is_file():
            raise InputError(path, "recipe file does not exist")
        return path
    path = RECIPE_ROOT / stage / f"{text}.toml"
    if not path.is_file():
        known = ", ".join(recipe_names(stage))
        raise InputError(text, f"no such {stage} recipe (recipes: {known}; or give a file)")
    return path


def read_recipe(path: Path) -> dict[str, Any]:
    """The values of a recipe file: TOML, or JSON (a run's ``config.json``); null values dropped.

    Example: ``read_recipe(recipe_path("train", "cpu-fp32"))["epochs"]`` -> ``88``.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read the recipe ({exc})") from None
    try:
        values = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise InputError(path, f"not a valid recipe ({exc})") from None
    if not isinstance(values, dict):
        raise InputError(path, "a recipe holds key = value lines (a table)")
    return {key: value for key, value in values.items() if value is not None}


def recipe_values(
    cls: type,
    stage: str,
    name: str | Path | None,
    assignments: Iterable[str] = (),
    skip: Iterable[str] = (),
) -> dict[str, Any]:
    """The values of recipe ``name`` (none without one) with ``--set`` ``assignments`` over them,
    typed for the configuration dataclass ``cls``; keys in ``skip`` (per-run values such as
    paths) are left out of the recipe.

    Example: ``recipe_values(QuantizeConfig, "quant", "int8", ["seed=3"])`` ->
    ``{"int8": "ptq", "calibration_method": "minmax", "seed": 3}``.
    """
    from edgepanc.recipes.settings import parse_set, typed_values

    values: dict[str, Any] = {}
    if name is not None:
        path = recipe_path(stage, name)
        values = typed_values(cls, read_recipe(path), path, skip=skip)
    values.update(parse_set(cls, assignments))
    return values


def to_toml(values: Mapping[str, Any], comment: str = "") -> str:
    """``values`` as recipe lines (``key = value``), which :func:`read_recipe` reads back;
    a None value, which TOML cannot write, becomes a comment saying it is unset.

    Example: ``to_toml({"epochs": 2, "target_spacing": None})`` ->
    ``"epochs = 2\\n# target_spacing: not set (the default)\\n"``.
    """
    lines = [f"# {line}" for line in comment.splitlines()]
    for key, value in values.items():
        if value is None or value == {}:
            lines.append(f"# {key}: not set (the default)")
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, str | Path):
        return json.dumps(str(value))  # a JSON string is a TOML basic string
    raise TypeError(f"no TOML form for {type(value).__name__}")


__all__ = [
    "RECIPE_ROOT",
    "STAGES",
    "read_recipe",
    "recipe_names",
    "recipe_path",
    "recipe_values",
    "to_toml",
]
