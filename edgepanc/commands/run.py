"""``edgepanc run``: segment pancreas and lesion and name the subtype, scan by scan."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from edgepanc.commands.params import FiniteFloat
from edgepanc.errors import BundleError, EdgepancError
from edgepanc.memory import parse_size

log = logging.getLogger(__name__)


def resolve_bundle_path(model: Path | None) -> Path:
    """``--model``, else the newest bundle under the default root; BundleError if there is none."""
    from edgepanc.bundle import default_bundle_root, find_latest_bundle

    if model is not None:
        return model
    root = default_bundle_root()
    latest = find_latest_bundle(root)
    if latest is None:
        raise BundleError(
            root,
            "no model bundle found; pass --model BUNDLE, or make one with "
            "`edgepanc train --data DATA --out RUN` (a demo data set: `edgepanc synth --out DATA`)",
        )
    return latest


def _tile_batch(value: str) -> int | None:
    if value == "auto":
        return None
    try:
        batch = int(value)
    except ValueError:
        raise click.BadParameter(f"expected a positive integer or 'auto', got {value!r}") from None
    if batch < 1:
        raise click.BadParameter(f"must be at least 1, got {batch}")
    return batch


@click.command("run")
@click.argument("scan", type=click.Path(path_type=Path))
@click.option(
    "--model",
    "model_path",
    type=click.Path(path_type=Path),
    help="Model bundle folder (default: newest under the bundle root).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=Path("edgepanc_out"),
    show_default=True,
    help="Output folder.",
)
@click.option(
    "--backend",
    type=click.Choice(["auto", "torch", "onnxruntime", "openvino", "tensorrt"]),
    default="auto",
    show_default=True,
)
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16", "fp16", "int8"]),
    default="auto",
    show_default=True,
)
@click.option(
    "--allow-failed-variant",
    is_flag=True,
    help="Let --backend/--precision pick a variant that failed the accuracy tolerance against "
    "fp32 in quantize (never chosen otherwise); it runs with a warning.",
)
@click.option(
    "--step",
    type=FiniteFloat(0.05, 1.0),
    default=0.5,
    show_default=True,
    help="Tile step as a fraction of the patch.",
)
@click.option(
    "--tile-batch",
    default="auto",
    show_default=True,
    help="Tiles per predictor call, or 'auto' (the largest the memory budget allows).",
)
@click.option(
    "--memory-budget", default=None, help="Bound on peak resident memory, e.g. 1.5GB or 2GiB."
)
@click.option(
    "--max-temp",
    type=FiniteFloat(),
    default=None,
    help="Back off above this temperature (C); default: CPU 68, GPU 72.",
)
@click.option("--require-thermal", is_flag=True, help="Fail when no temperature sensor is found.")
@click.option(
    "--roi",
    type=click.Choice(["auto", "on", "off"]),
    default="auto",
    show_default=True,
    help="Coarse-to-fine: tile only around the pancreas.",
)
@click.option("--no-largest-component", is_flag=True, help="Keep every pancreas component.")
@click.option(
    "--no-lesion-in-pancreas", is_flag=True, help="Keep lesion voxels outside the pancreas."
)
@click.option("--preview", is_flag=True, help="Write <name>_preview.png overlays.")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Recompute every case and replace existing outputs in --out (never an input, a reference "
    "mask or the model).",
)
def run(
    scan: Path,
    model_path: Path | None,
    out_dir: Path,
    backend: str,
    device: str,
    precision: str,
    allow_failed_variant: bool,
    step: float,
    tile_batch: str,
    memory_budget: str | None,
    max_temp: float | None,
    require_thermal: bool,
    roi: str,
    no_largest_component: bool,
    no_lesion_in_pancreas: bool,
    preview: bool,
    overwrite: bool,
) -> None:
    """Segment SCAN (an image file or DICOM series folder) or every scan in a folder.

    Writes NAME.nii.gz, NAME.json (and NAME_preview.png) per scan and subtype_results.csv.
    Rerunning the same command continues an interrupted run: a case whose JSON says it finished,
    with the same model and input, is skipped, and the CSV is rebuilt from the case JSONs.
    Existing files edgepanc did not write are refused unless --overwrite; inputs and reference
    masks are never written over. Every check is made before anything is written.
    """
    from edgepanc.io.atomic import remove_stale_temporaries
    from edgepanc.postprocessing import PostprocessConfig
    from edgepanc.runtime.model import load_model
    from edgepanc.runtime.outputs import plan_outputs
    from edgepanc.runtime.pipeline import RunConfig, run_cases
    from edgepanc.runtime.report import summary_table
    from edgepanc.runtime.roi import RoiConfig
    from edgepanc.runtime.scans import (
        check_output_folder,
        create_output_folder,
        discover_scans,
        remove_empty_folders,
    )
    from edgepanc.thermal import ThermalGuard, ThermalLimits

    try:
        batch = _tile_batch(tile_batch)
    except click.BadParameter as exc:
        raise click.BadParameter(str(exc), param_hint="--tile-batch") from None
    budget = parse_size(memory_budget) if memory_budget else None
    scans = discover_scans(scan)  # also refuses two scans that would write one mask name
    check_output_folder(out_dir)
    limits = ThermalLimits.from_max_temp(max_temp) if max_temp is not None else ThermalLimits()
    guard = ThermalGuard.discover(limits, require=require_thermal)
    bundle_path = resolve_bundle_path(model_path)
    loaded = load_model(bundle_path, backend, device, precision, allow_failed_variant)
    bundle_dir = bundle_path if bundle_path.is_dir() else bundle_path.parent
    plan = plan_outputs(
        scans,
        out_dir,
        loaded.model_id,
        overwrite=overwrite,
        preview=preview,
        protected=[p for p in bundle_dir.rglob("*") if p.is_file()],
    )
    config = RunConfig(
        out_dir=out_dir,
        step=step,
        tile_batch=batch,
        memory_budget=budget,
        roi=RoiConfig(mode=roi),
        postprocess=PostprocessConfig(
            largest_component=not no_largest_component,
            lesion_in_pancreas=not no_lesion_in_pancreas,
        ),
        preview=preview,
        overwrite=overwrite,
        progress=sys.stderr.isatty(),
    )
    created = create_output_folder(out_dir)
    for path in remove_stale_temporaries(out_dir):
        log.info("removed %s, left by an interrupted run", path)
    outcome = run_cases(plan, loaded, config, guard)
    remove_empty_folders(created)  # a run that wrote nothing leaves no folder behind
    if len(scans) == 1 and outcome.failures:  # a single scan: its one line is the error
        raise _SingleFailure(outcome.failures[0].message)
    click.echo(summary_table(outcome.reports, outcome.failures, outcome.skipped))
    if outcome.failures:
        sys.exit(1)


class _SingleFailure(EdgepancError):
    """Re-raises a single case's message so the CLI prints it as ``error: ...``."""
