"""``edgepanc train``: train the multi-task network into a run folder that is a model bundle.

The values come from a recipe (``--recipe NAME|FILE``; without one, the recipe for this machine:
:mod:`edgepanc.training.recipes`), then ``--set key=value``, then the flags given on the command
line. The flags are what a user decides (data, run folder, hardware, time, seed, folds); the
recipe's knobs (network, patch, losses, sampling, learning rate, epochs, ...) are set in a recipe
or with ``--set``. The training stage is imported inside the command, so ``edgepanc run`` and the
other runtime commands never load it.
"""

from __future__ import annotations

import re
import time
from functools import partial
from pathlib import Path
from typing import Any

import click

from edgepanc.commands.grouped import GroupedCommand, GroupedOption
from edgepanc.errors import InputError
from edgepanc.extras import require

# Options that are not TrainConfig fields, or that need parsing before they are.
_COMMAND_ONLY = ("recipe", "assignments", "print_config")
_PARSED = ("fold",)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h)?\s*$")
_UNIT_SECONDS = {None: 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


class Duration(click.ParamType):
    """A duration such as ``90s``, ``45m``, ``2h`` or ``1.5h`` (a bare number: seconds), as
    seconds.

    Example: ``Duration().convert("45m", None, None)`` -> ``2700.0``.
    """

    name = "duration"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:  # noqa: D102
        if isinstance(value, int | float):
            return float(value)
        match = _DURATION.match(str(value))
        if match is None or float(match.group(1)) <= 0:
            self.fail(f"{value!r} is not a duration such as 90s, 45m or 2h", param, ctx)
        return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def _parse_fold(text: str | None) -> int | None | str:
    if text is None or text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise click.BadParameter(f"{text!r}: a fold number or 'all'", param_hint="--fold") from None


data_option = partial(click.option, cls=GroupedOption, group="data and run folder")
recipe_option = partial(click.option, cls=GroupedOption, group="recipe")
hardware_option = partial(click.option, cls=GroupedOption, group="hardware")
schedule_option = partial(click.option, cls=GroupedOption, group="schedule")


@click.command(cls=GroupedCommand)
@data_option(
    "--data",
    "data",
    required=True,
    type=click.Path(path_type=Path),
    help="Data set folder (quiz or nnU-Net layout).",
)
@data_option(
    "--out",
    "out",
    required=True,
    type=click.Path(path_type=Path),
    help="Run folder to create (becomes a model bundle).",
)
@data_option("--resume", is_flag=True, help="Continue the run in --out from its last.pt.")
@data_option(
    "--init-from",
    default=None,
    metavar="BUNDLE",
    help="Start from this trained bundle's weights, network and preprocessing plan "
    "(fine-tuning on new data).",
)
@data_option(
    "--folds",
    type=click.IntRange(0, 100),
    default=None,
    help="K-fold cross-validation over train+validation (0: the data set's split, or a "
    "drawn one when it has none).",
)
@data_option("--fold", default=None, help="Which fold to train (0..K-1) or 'all'.")
@recipe_option(
    "--recipe",
    default=None,
    metavar="NAME|FILE",
    help="Recipe: cpu-bf16, cpu-fp32, gpu, demo, or a .toml file or a run's config.json "
    "(default: the recipe for this machine, printed with the reason).",
)
@recipe_option(
    "--set",
    "assignments",
    multiple=True,
    metavar="KEY=VALUE",
    help="Set any configuration value over the recipe, e.g. --set lr=0.001 (repeatable; "
    "keys as --print-config shows them).",
)
@recipe_option(
    "--print-config",
    is_flag=True,
    help="Print the resolved configuration (a valid recipe) and exit without training.",
)
@hardware_option(
    "--device",
    type=click.Choice(("auto", "cuda", "cpu")),
    default=None,
    help="Where to train [default: auto, a CUDA GPU when torch sees one].",
)
@hardware_option(
    "--threads",
    type=click.IntRange(1, 256),
    default=None,
    help="Torch CPU threads per process (default: torch's choice; 1 is fastest on a busy "
    "2-core machine).",
)
@hardware_option(
    "--workers",
    type=click.IntRange(0, 64),
    default=None,
    help="Background processes drawing training patches (0: the training process). On a GPU the "
    "sampler sets the pace; on a 2-core CPU leave 0.",
)
@hardware_option(
    "--require-thermal",
    is_flag=True,
    default=None,
    help="Refuse to train without a temperature sensor (limits: --set cpu_max_temp=68, "
    "gpu_max_temp=72 degrees C).",
)
@schedule_option(
    "--time-budget",
    type=Duration(),
    default=None,
    metavar="DURATION",
    help="Wall time for the whole run, e.g. 90s, 45m, 2h: the epoch count follows from the "
    "measured step and validation times (validation and head refit included).",
)
@schedule_option(
    "--seed", type=click.IntRange(0, 2**31 - 1), default=None, help="Random seed of the run."
)
@schedule_option(
    "--head-refit/--no-head-refit",
    default=None,
    help="After the last epoch, refit the subtype head on the runtime's tiles of the training "
    "cases, then validate again. With --resume on a finished run: refit without training.",
)
def train(**options: Any) -> None:
    """Train the multi-task UNet on DATA; write a model bundle, metrics, logs and curves to OUT.

    With no --recipe, the recipe for this machine: gpu where torch sees a CUDA GPU, cpu-bf16 on a
    CPU with AVX512-BF16 or AMX, cpu-fp32 on any other CPU. Values: the recipe, then --set, then
    the flags given here. DATA is checked first (every image header, every label in full): the
    problems stop it with one line naming each file, and a labelled case whose label is all
    background (no pancreas, no lesion) is trained on with a warning naming that file. Nothing
    is written to OUT until every check has passed; a run that fails before its first
    checkpoint leaves OUT as it was.
    """
    started = time.monotonic()  # a time budget counts from here: the run's whole wall time
    require("train")  # before anything is read or written: one line if PyTorch is missing
    from edgepanc.training.recipes import resolve_train_config

    context = click.get_current_context()
    given = {
        name: value
        for name, value in options.items()
        if context.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
    }
    flags = {k: v for k, v in given.items() if k not in _COMMAND_ONLY + _PARSED}
    flags.update(_parsed_flags(options))
    data, out = Path(flags.pop("data")), Path(flags.pop("out"))
    config = resolve_train_config(
        str(data), str(out), flags, options["recipe"], options["assignments"]
    )
    _check_folds(config)
    if options["print_config"]:
        _print_config(config)
        return
    if not data.is_dir():
        raise InputError(data, "data folder does not exist")
    from edgepanc.training.runner import run_training
    from edgepanc.training.time_budget import TimeBudget

    budget = None if config.time_budget is None else TimeBudget(config.time_budget, started=started)
    summary = run_training(config, budget=budget)
    if "best_score" in summary:
        click.echo(
            f"best combined score {summary['best_score']:.4f} at epoch {summary['best_epoch']}: {config.out}"
        )
    else:
        click.echo(f"cross-validation summary written to {Path(config.out) / 'cv_summary.json'}")


def _print_config(config: Any) -> None:
    """The resolved configuration as a recipe, with what was planned for this data set and
    device (a data folder that does not exist yet leaves the planned values open)."""
    from edgepanc.errors import DatasetError
    from edgepanc.recipes import to_toml

    planning, problem = None, "no data folder yet"
    if config.planned and Path(config.data).is_dir():
        from edgepanc.training.runner import labelled_cases, plan_run

        try:
            config, planning = plan_run(config, labelled_cases(Path(config.data)))
        except (InputError, DatasetError) as exc:
            problem = f"the data cannot be planned from: {exc}"
    click.echo(to_toml(config.to_dict(), f"recipe {config.recipe}: {config.recipe_reason}"))
    if planning is not None:
        from edgepanc.training.planning import describe_plan

        click.echo(describe_plan(planning))
    elif config.planned:
        click.echo(
            f"# planned from the data and the device: {', '.join(config.planned)} ({problem})"
        )


def _parsed_flags(options: dict[str, Any]) -> dict[str, Any]:
    """The options given as text that become typed TrainConfig fields (only those given)."""
    parsed: dict[str, Any] = {}
    fold = _parse_fold(options["fold"])
    if fold is not None:
        if options["folds"] is None or options["folds"] < 2:
            raise click.BadParameter("--fold needs --folds K with K >= 2", param_hint="--fold")
        if isinstance(fold, int) and not 0 <= fold < options["folds"]:
            raise click.BadParameter(
                f"{fold} is not in 0..{options['folds'] - 1}", param_hint="--fold"
            )
        parsed["fold"] = None if fold == "all" else fold
    return parsed


def _check_folds(config: Any) -> None:
    if config.fold is not None and not (config.folds >= 2 and 0 <= config.fold < config.folds):
        raise InputError("--set", f"fold {config.fold} needs folds >= 2 and fold < folds")
