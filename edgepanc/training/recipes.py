"""Which training recipe, and the configuration it resolves to.

``edgepanc train`` without ``--recipe`` picks the recipe for this machine
(:func:`~edgepanc.recipes.machine.choose_recipe`: a CUDA GPU -> ``gpu``; native bf16 ->
``cpu-bf16``; any other CPU -> ``cpu-fp32``). The configuration is then, from weakest to
strongest: the :class:`TrainConfig` defaults, the recipe, ``--set key=value``, the command
line's own flags, and the plan (:mod:`edgepanc.training.planning`) for what none of them set.

Light to import (the machine probe imports what it asks lazily), like ``config.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from edgepanc.errors import InputError
from edgepanc.recipes import recipe_values
from edgepanc.recipes.machine import Machine, choose_recipe
from edgepanc.recipes.settings import parse_set
from edgepanc.training.config import PLANNABLE, TrainConfig

# Set by each invocation, never by a recipe: a recipe describes an experiment, not a run folder.
PER_RUN_KEYS = frozenset({"data", "out", "resume", "recipe", "recipe_reason", "planned"})
# With --init-from these come from the bundle, not from the recipe (unless given explicitly).
INIT_FROM_KEYS = ("target_spacing", "features")


def resolve_train_config(
    data: str,
    out: str,
    flags: Mapping[str, Any],
    recipe: str | None = None,
    assignments: Iterable[str] = (),
    machine: Machine | None = None,
) -> TrainConfig:
    """The run's configuration: defaults < recipe < ``--set`` < ``flags`` (the command line's
    explicitly given options, as TrainConfig fields).

    Without ``recipe``: a resumed run reads its own ``config.json``; a new one takes
    :func:`choose_recipe` for ``machine`` (probed when None). The recipe's name and the reason
    are recorded in the configuration (``recipe``, ``recipe_reason``).

    Example::

        >>> resolve_train_config("data", "run", {"epochs": 2}, recipe="demo").epochs
        2
    """
    resume = bool(flags.get("resume", False))
    own = Path(out) / "config.json"
    if recipe is not None:
        name, reason = recipe, "--recipe"
    elif resume and own.is_file():
        name, reason = str(own), "--resume: the run's own configuration"
    else:
        machine = Machine.probe() if machine is None else machine
        name, reason = choose_recipe(machine, str(flags.get("device", "auto")))
    values = recipe_values(TrainConfig, "train", name, skip=PER_RUN_KEYS)
    given = {**parse_set(TrainConfig, assignments), **flags}
    if given.get("init_from") or values.get("init_from"):
        # The bundle's network and grid are what its weights were learned with.
        for key in INIT_FROM_KEYS:
            values.pop(key, None)
    if "epochs" in given and "time_budget" not in given:
        values.pop("time_budget", None)  # an epoch count asked for is trained exactly
    values.update(given)
    # What nothing pinned is planned from the data and the device; a run's own config.json
    # pins everything it holds, and an --init-from bundle brings its grid and network.
    from_run = str(name).endswith(".json")
    fixed = from_run or values.get("init_from")
    planned = () if fixed else tuple(k for k in PLANNABLE if k not in values)
    if "patch_size" not in planned:  # a pinned patch keeps the preset's network it was tuned with
        planned = tuple(k for k in planned if k != "features")
    try:
        return TrainConfig(
            data=data, out=out, recipe=name, recipe_reason=reason, planned=planned, **values
        )
    except ValueError as exc:  # a value out of range, from the recipe, --set or a flag
        raise InputError("configuration", f"{exc} (recipe {name} with --set and flags)") from None


__all__ = ["Machine", "choose_recipe", "resolve_train_config"]
