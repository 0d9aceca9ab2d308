"""``edgepanc quantize``: compress a trained bundle into a new, quantized bundle.

The compression stage (``edgepanc/quantization/``) is imported inside the command, so the runtime commands work
without it.
"""

from __future__ import annotations

from pathlib import Path

import click

from edgepanc.commands.params import FiniteFloat

EXPORT_KINDS = ("onnx", "int8", "tensorrt")


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
    default="onnx,int8,tensorrt",
    show_default=True,
    help="What to build: onnx, int8, tensorrt (TensorRT only where a GPU and TensorRT exist).",
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
def quantize(
    model: Path,
    data: Path,
    out: Path,
    prune: float | None,
    prune_criterion: str,
    int8: str,
    int8_layers: str,
    calibration_cases: int,
    calibration_method: str,
    finetune_epochs: int,
    qat_epochs: int,
    steps_per_epoch: int,
    export: str,
    device: str,
    latency_runs: int,
    max_validation_cases: int | None,
    seed: int,
) -> None:
    """Prune, quantize and export a trained bundle; measure every variant; write a new bundle."""
    # imported here, not with the CLI: the other commands run without torch or the compression stage
    from edgepanc.quantization.config import QuantizeConfig
    from edgepanc.quantization.pipeline import run_quantize

    config = QuantizeConfig(
        model=model,
        data=data,
        out=out,
        prune=prune,
        prune_criterion=prune_criterion,
        int8=int8,
        int8_layers=int8_layers,
        calibration_cases=calibration_cases,
        calibration_method=calibration_method,
        finetune_epochs=finetune_epochs,
        qat_epochs=qat_epochs,
        steps_per_epoch=steps_per_epoch,
        export=_parse_export(export),
        device=device,
        latency_runs=latency_runs,
        max_validation_cases=max_validation_cases,
        seed=seed,
    )
    bundle = run_quantize(config)
    click.echo(
        f"wrote {bundle.path} ({len(bundle.artifacts)} artifacts, default {bundle.default_artifact}); "
        f"report: {bundle.path / 'quantization.md'}"
    )
