"""Which training recipe, and the configuration it resolves to.

``edgepanc train`` without ``--recipe`` picks the recipe for this machine (:func:`choose_recipe`):
a CUDA GPU -> ``gpu``; a CPU that computes bf16 natively (AVX512-BF16 or AMX) -> ``cpu-bf16``;
any other CPU -> ``cpu-fp32``, where bf16 is emulated and about ten times slower
(docs/measurements/cpu_recipe.md). The configuration is then, from weakest to strongest: the
:class:`TrainConfig` defaults, the recipe, ``--set key=value``, the command line's own flags.

Light to import (the machine probe imports what it asks lazily), like ``config.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepanc.errors import InputError
from edgepanc.recipes import recipe_values
from edgepanc.recipes.settings import parse_set
from edgepanc.training.config import PLANNABLE, TrainConfig

# Set by each invocation, never by a recipe: a recipe describes an experiment, not a run folder.
PER_RUN_KEYS = frozenset({"data", "out", "resume", "recipe", "recipe_reason", "planned"})
# With --init-from these come from the bundle, not from the recipe (unless given explicitly).
INIT_FROM_KEYS = ("target_spacing", "features")


@dataclass(frozen=True)
class Machine:
    """What chooses the recipe: whether torch sees a CUDA GPU, and the CPU's feature flags.

    Tests script it; :meth:`probe` reads this machine.

    Example: ``choose_recipe(Machine(cuda=False, cpu_flags=frozenset({"avx2"})))[0]`` ->
    ``"cpu-fp32"``.
    """

    cuda: bool
    cpu_flags: frozenset[str]

    @classmethod
    def probe(cls) -> Machine:
        """This machine, through the project's device and CPU-feature detection."""
        from edgepanc.backends.devices import cuda_available
        from edgepanc.backends.openvino_backend import machine_cpu_flags

        return cls(cuda=cuda_available(), cpu_flags=machine_cpu_flags())


def choose_recipe(machine: Machine, device: str = "auto") -> tuple[str, str]:
    """The recipe for ``machine`` (and ``--device``) and why, in words.

    Example::

        >>> choose_recipe(Machine(cuda=False, cpu_flags=frozenset({"amx_bf16"})))
        ('cpu-bf16', 'no CUDA GPU; the CPU computes bf16 natively (amx_bf16)')
    """
    # The flags with which oneDNN computes bf16 in hardware, as the OpenVINO backend checks them.
    from edgepanc.backends.openvino_backend import NATIVE_BF16_FLAGS

    if device == "cuda" or (device == "auto" and machine.cuda):
        return "gpu", "--device cuda" if device == "cuda" else "torch sees a CUDA GPU"
    where = "--device cpu" if device == "cpu" else "no CUDA GPU"
    native = [flag for flag in NATIVE_BF16_FLAGS if flag in machine.cpu_flags]
    if native:
        return "cpu-bf16", f"{where}; the CPU computes bf16 natively ({', '.join(native)})"
    return "cpu-fp32", (
        f"{where}; the CPU has neither {' nor '.join(NATIVE_BF16_FLAGS)}, so bf16 would be "
        "emulated (about 10x slower): fp32"
    )


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
