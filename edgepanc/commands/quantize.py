"""``edgepanc quantize``: compress a trained bundle into a new, quantized bundle.

The compression stage (``edgepanc/quantization/``) is imported inside the command, so the runtime commands work
without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgepanc.commands.params import FiniteFloat
from edgepanc.errors import InputError
from edgepanc.extras import require

EXPORT_KINDS = ("onnx", "int8", "tensorrt", "openvino")
# Set by each invocation, never by a recipe: which bundle, which data, which output.
_PER_RUN_KEYS = ("model", "data", "out", "recipe")


def _parse_export(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = sorted(set(kinds) - set(EXPORT_KINDS))
    if unknown or not kinds:
        raise click.BadParameter(
            f"{text!r}: a comma-separated subset of {','.join(EXPORT_KINDS)}", param_hint="--export"
        )
    return kinds


@click.command()
@click.option(
    "--model",
    "model",
    required=True,
    type=click.Path(path_type=Path),
    help="Trained model bundle (the run folder of `edgepanc train`).",
)
@click.option(
    "--data",
    "data",
    required=True,
    type=click.Path(path_type=Path),
    help="The data set it was trained on (calibration and validation cases).",
)
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(path_type=Path),
    help="New bundle folder to create (must not exist or be empty).",
)
@click.option(
    "--prune",
    type=FiniteFloat(0.0, 0.9, min_open=True),
    default=None,
    help="Share of channels to remove per stage, in (0, 0.9].",
)
@click.option(
    "--prune-criterion", type=click.Choice(["l1", "l2", "taylor"]), default="l1", show_default=True
)
@click.option(
    "--int8",
    "int8",
    type=click.Choice(["ptq", "qat", "both", "none"]),
    default="ptq",
    show_default=True,
)
@click.option(
    "--int8-layers",
    type=click.Choice(["measured", "all"]),
    default="measured",
    show_default=True,
    help="measured: INT8 only in the layers whose INT8 kernel is faster on this CPU "
    "(timed during the run); all: every Conv/ConvTranspose/Gemm.",
)
@click.option(
    "--calibration-cases",
    type=click.IntRange(2, 10000),
    default=8,
    show_default=True,
    help="Training cases to calibrate INT8 ranges on (at least 2).",
)
@click.option(
    "--calibration-method",
    type=click.Choice(["auto", "minmax", "entropy", "percentile"]),
    default="auto",
    show_default=True,
    help="auto: try each, keep the most accurate.",
)
@click.option(
    "--finetune-epochs",
    type=click.IntRange(0, 10000),
    default=2,
    show_default=True,
    help="Fine-tuning epochs after pruning.",
)
@click.option("--qat-epochs", type=click.IntRange(0, 10000), default=2, show_default=True)
@click.option(
    "--steps-per-epoch",
    type=click.IntRange(1, 1000000),
    default=20,
    show_default=True,
    help="Steps per fine-tuning / QAT epoch.",
)
@click.option(
    "--export",
    "export",
    default="onnx,int8,tensorrt,openvino",
    show_default=True,
    help="What to build: onnx, int8, tensorrt (TensorRT only where a GPU and TensorRT exist), "
    "openvino (OpenVINO bf16 where the CPU has it natively, and NNCF INT8; where installed).",
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="Device for fine-tuning.",
)
@click.option(
    "--latency-runs",
    type=click.IntRange(1, 1000),
    default=5,
    show_default=True,
    help="Timed calls per variant (median reported).",
)
@click.option(
    "--max-validation-cases",
    type=click.IntRange(1, 100000),
    default=None,
    help="Score on at most this many validation cases (default: all).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--recipe",
    default=None,
    metavar="NAME|FILE",
    help="Recipe: int8, prune-int8, demo, or a .toml file; the flags given here override it.",
)
@click.option(
    "--set",
    "assignments",
    multiple=True,
    metavar="KEY=VALUE",
    help="Set any configuration value over the recipe, e.g. --set prune=0.2 (repeatable).",
)
def quantize(**options: Any) -> None:
    """Prune, quantize and export a trained bundle; measure every variant; write a new bundle.

    Values: the defaults, then --recipe, then --set, then the flags given here.
    """
    require("quantize")  # before anything is read or written: one line naming the quant extra
    # imported here, not with the CLI: the other commands run without torch or the compression stage
    from edgepanc.ensemble import is_ensemble
    from edgepanc.quantization.config import QuantizeConfig
    from edgepanc.quantization.pipeline import run_quantize, run_quantize_ensemble
    from edgepanc.recipes import recipe_values

    context = click.get_current_context()
    recipe, assignments = options.pop("recipe"), options.pop("assignments")
    given = {
        name: value
        for name, value in options.items()
        if context.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
    }
    if "export" in given:
        given["export"] = _parse_export(given["export"])
    values = recipe_values(QuantizeConfig, "quant", recipe, assignments, skip=_PER_RUN_KEYS)
    values.update(given)
    for key in ("model", "data", "out"):
        values[key] = options[key]
    try:
        config = QuantizeConfig(recipe=None if recipe is None else str(recipe), **values)
    except ValueError as exc:  # a value out of range, from the recipe, --set or a flag
        raise InputError("configuration", f"{exc} (recipe {recipe} with --set and flags)") from None
    if is_ensemble(config.model):
        members = run_quantize_ensemble(
            config, on_member=lambda name: click.echo(f"quantizing member {name}", err=True)
        )
        defaults = ", ".join(f"{b.path.name} {b.default_artifact}" for b in members)
        click.echo(f"wrote the ensemble {config.out} ({len(members)} members; default {defaults})")
        return
    bundle = run_quantize(config)
    click.echo(
        f"wrote {bundle.path} ({len(bundle.artifacts)} artifacts, default {bundle.default_artifact}); "
        f"report: {bundle.path / 'quantization.md'}"
    )
