"""``edgepanc train``: train the multi-task network into a run folder that is a model bundle.

The values come from a recipe (``--recipe NAME|FILE``; without one, the recipe for this machine:
:mod:`edgepanc.training.recipes`), then ``--set key=value``, then the flags given on the command
line. The training stage (``edgepanc/training/``) is imported inside the command, so the runtime
commands work without it; only its option lists come from ``edgepanc.training.config``, which
needs the standard library alone.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import click

from edgepanc.commands.grouped import GroupedCommand, GroupedOption
from edgepanc.commands.params import FiniteFloat
from edgepanc.errors import InputError
from edgepanc.extras import require
from edgepanc.training.config import (
    DEVICE_NAMES,
    HEAD_STATISTICS_MODES,
    LESION_DICE_MODES,
    PRESET_NAMES,
)

# Options that are not TrainConfig fields, or that need parsing before they are.
_COMMAND_ONLY = ("recipe", "assignments", "print_config")
_PARSED = ("patch_size", "target_spacing", "features", "depth", "fold")


def _parse_triple(text: str | None, kind: type, name: str) -> tuple | None:
    """``"64"`` -> (64, 64, 64); ``"32,64,64"`` -> (32, 64, 64), in (z, y, x) order."""
    if text is None:
        return None
    try:
        values = tuple(kind(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not a number or three comma-separated numbers", param_hint=name
        ) from None
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or min(values) <= 0:
        raise click.BadParameter(
            f"{text!r}: need one or three positive values (z,y,x)", param_hint=name
        )
    return values


def _parse_fold(text: str | None) -> int | None | str:
    if text is None or text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise click.BadParameter(f"{text!r}: a fold number or 'all'", param_hint="--fold") from None


data_option = partial(click.option, cls=GroupedOption, group="data and run")
hardware_option = partial(click.option, cls=GroupedOption, group="hardware")
schedule_option = partial(click.option, cls=GroupedOption, group="schedule")
advanced_option = partial(
    click.option, cls=GroupedOption, group="advanced (recipe values; also --set KEY=VALUE)"
)


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
@data_option(
    "--recipe",
    default=None,
    metavar="NAME|FILE",
    help="Recipe: cpu-bf16, cpu-fp32, gpu, demo, or a .toml file or a run's config.json "
    "(default: the recipe for this machine, printed with the reason).",
)
@data_option(
    "--set",
    "assignments",
    multiple=True,
    metavar="KEY=VALUE",
    help="Set any configuration value over the recipe, e.g. --set epochs=60 (repeatable; "
    "keys as --print-config shows them).",
)
@data_option(
    "--print-config",
    is_flag=True,
    help="Print the resolved configuration (a valid recipe) and exit without training.",
)
@data_option("--resume", is_flag=True, help="Continue the run in --out from its last.pt.")
@data_option(
    "--init-from",
    default=None,
    help="Start from this trained bundle's weights, network and preprocessing plan "
    "(fine-tuning on new data); --preset/--features/--target-spacing then come from it.",
)
@data_option(
    "--folds",
    type=click.IntRange(0, 100),
    default=None,
    help="K-fold cross-validation over train+validation (0: the data set's split, or a "
    "drawn one when it has none).",
)
@data_option("--fold", default=None, help="Which fold to train (0..K-1) or 'all'.")
@hardware_option(
    "--device",
    type=click.Choice(DEVICE_NAMES),
    default=None,
    help="Where to train [default: auto, a CUDA GPU when torch sees one].",
)
@hardware_option(
    "--amp/--no-amp",
    default=None,
    help="Mixed precision: fp16 on CUDA, bf16 on CPU (fast only with native bf16).",
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
    "sampler sets the pace; on a 2-core CPU leave 0. Part of the experiment: other batches.",
)
@hardware_option(
    "--cpu-max-temp",
    type=FiniteFloat(20, 120),
    default=None,
    help="Pause training above this CPU temperature, degrees C [default: 68].",
)
@hardware_option(
    "--gpu-max-temp",
    type=FiniteFloat(20, 120),
    default=None,
    help="Pause training above this GPU temperature, degrees C [default: 72].",
)
@hardware_option(
    "--thermal-timeout",
    type=FiniteFloat(1, 86400),
    default=None,
    help="Seconds a thermal pause may last before training stops with a checkpoint "
    "[default: 1800].",
)
@hardware_option(
    "--require-thermal", is_flag=True, help="Refuse to train without a temperature sensor."
)
@schedule_option("--epochs", type=click.IntRange(1, 100000), default=None, help="Epochs to train.")
@schedule_option(
    "--steps-per-epoch",
    type=click.IntRange(1, 1000000),
    default=None,
    help="Optimiser steps (batches) per epoch.",
)
@schedule_option(
    "--val-every",
    type=click.IntRange(1, 100000),
    default=None,
    help="Epochs between validations (the last epoch always validates).",
)
@schedule_option(
    "--patience",
    type=click.IntRange(0, 100000),
    default=None,
    help="Validations without improvement before stopping (0: never).",
)
@schedule_option(
    "--seed", type=click.IntRange(0, 2**31 - 1), default=None, help="Random seed of the run."
)
@advanced_option(
    "--preset",
    type=click.Choice(PRESET_NAMES),
    default=None,
    help="Network size: tiny (tests), cpu (~1.4M parameters), default (~23M, for a GPU).",
)
@advanced_option(
    "--features",
    "--width",
    "features",
    default=None,
    help="Channels per stage, e.g. 16,32,64,128 (overrides the preset).",
)
@advanced_option(
    "--depth",
    type=click.IntRange(2, 7),
    default=None,
    help="Stages (with --width as one number: doubling widths).",
)
@advanced_option(
    "--patch-size",
    default=None,
    help="Patch (z,y,x) in voxels of the target grid, or one number for a cube.",
)
@advanced_option(
    "--target-spacing",
    default=None,
    help="Target spacing (z,y,x) in mm, or one number; --set target_spacing=none: the data's "
    "median spacing.",
)
@advanced_option(
    "--batch-size", type=click.IntRange(1, 512), default=None, help="Patches per step."
)
@advanced_option(
    "--lr",
    type=FiniteFloat(0, 1, min_open=True),
    default=None,
    help="Peak learning rate of AdamW (after warm-up; cosine decay to the end).",
)
@advanced_option("--weight-decay", type=FiniteFloat(0, 1), default=None, help="AdamW weight decay.")
@advanced_option(
    "--warmup-epochs",
    type=click.IntRange(0, 100000),
    default=None,
    help="Epochs of linear learning-rate warm-up.",
)
@advanced_option(
    "--seg-weight",
    type=FiniteFloat(0, 100),
    default=None,
    help="Weight of the segmentation loss (Dice + cross-entropy).",
)
@advanced_option(
    "--cls-weight",
    type=FiniteFloat(0, 100),
    default=None,
    help="Weight of the subtype loss.",
)
@advanced_option(
    "--teacher-forcing",
    type=FiniteFloat(0, 1),
    default=None,
    help="Share of patches whose subtype head pools under the reference lesion mask.",
)
@advanced_option(
    "--teacher-forcing-end",
    type=FiniteFloat(0, 1),
    default=None,
    help="Move that share linearly to this value by the last step (default: constant).",
)
@advanced_option(
    "--teacher-mask-jitter",
    type=click.IntRange(0, 8),
    default=None,
    help="Shift the reference lesion by up to this many voxels per axis and grow it by up to as "
    "many or shrink it by one before the head pools under it (margins like a prediction's).",
)
@advanced_option(
    "--head-statistics",
    type=click.Choice(HEAD_STATISTICS_MODES),
    default=None,
    help="Whether the subtype head's attenuation statistics read the intensity-augmented "
    "training patch or the same patch before intensity augmentation.",
)
@advanced_option(
    "--head-refit/--no-head-refit",
    default=None,
    help="After the last epoch, refit the subtype head alone on the training cases' runtime "
    "tiles (as `edgepanc run` tiles and weighs them), then validate again. With --resume on a "
    "finished run: refit it without training again.",
)
@advanced_option(
    "--lesion-fraction",
    type=FiniteFloat(0, 1),
    default=None,
    help="Share of patches centred on a lesion voxel.",
)
@advanced_option(
    "--pancreas-fraction",
    type=FiniteFloat(0, 1),
    default=None,
    help="Share of patches centred on a pancreas voxel.",
)
@advanced_option(
    "--lesion-dice",
    type=click.Choice(LESION_DICE_MODES),
    default=None,
    help="Lesion Dice over the whole batch, or per patch with lesion (small lesions count more).",
)
@advanced_option(
    "--deep-supervision/--no-deep-supervision",
    default=None,
    help="Add losses on the decoder's coarser outputs.",
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
        from edgepanc.recipes import to_toml

        click.echo(to_toml(config.to_dict(), f"recipe {config.recipe}: {config.recipe_reason}"))
        return
    if not data.is_dir():
        raise InputError(data, "data folder does not exist")
    from edgepanc.training.runner import run_training

    summary = run_training(config)
    if "best_score" in summary:
        click.echo(
            f"best combined score {summary['best_score']:.4f} at epoch {summary['best_epoch']}: {config.out}"
        )
    else:
        click.echo(f"cross-validation summary written to {Path(config.out) / 'cv_summary.json'}")


def _parsed_flags(options: dict[str, Any]) -> dict[str, Any]:
    """The options given as text that become typed TrainConfig fields (only those given)."""
    parsed: dict[str, Any] = {}
    patch = _parse_triple(options["patch_size"], int, "--patch-size")
    if patch is not None:
        parsed["patch_size"] = patch
    spacing = _parse_triple(options["target_spacing"], float, "--target-spacing")
    if spacing is not None:
        parsed["target_spacing"] = spacing
    features = _features(options["features"], options["depth"])
    if features is not None:
        parsed["features"] = features
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


def _features(text: str | None, depth: int | None) -> tuple[int, ...] | None:
    if text is None:
        if depth is not None:
            raise click.BadParameter("--depth needs --width", param_hint="--depth")
        return None
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: comma-separated channel counts", param_hint="--features"
        ) from None
    if len(values) == 1:
        if depth is None:
            raise click.BadParameter("one width needs --depth", param_hint="--width")
        values = tuple(values[0] * 2**i for i in range(depth))
    elif depth is not None and depth != len(values):
        raise click.BadParameter(
            f"--depth {depth} disagrees with {len(values)} --features", param_hint="--depth"
        )
    if min(values) < 1 or len(values) < 2:
        raise click.BadParameter(
            f"{text!r}: at least two positive channel counts", param_hint="--features"
        )
    return values
