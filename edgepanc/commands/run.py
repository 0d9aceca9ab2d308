"""``edgepanc run``: segment pancreas and lesion and name the subtype, scan by scan."""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path

import click

from edgepanc.commands.params import FiniteFloat
from edgepanc.errors import BundleError, EdgepancError, InputError
from edgepanc.memory import parse_size

log = logging.getLogger(__name__)


def resolve_bundle_path(model: Path | None) -> Path:
    """``--model``, else the newest bundle under the default root (logged, naming it); BundleError
    if there is none.

    Example: ``resolve_bundle_path(None)`` -> ``Path("~/.cache/edgepanc/bundles/run1")``.
    """
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
    log.info("no --model given: using the newest bundle under %s: %s", root, latest)
    return latest


def parse_part(value: str | None) -> tuple[int, int] | None:
    """``--part K/N`` as ``(K, N)``; click.BadParameter unless 1 <= K <= N.

    Example: ``parse_part("2/3")`` -> ``(2, 3)``.
    """
    if value is None:
        return None
    try:
        part, parts = (int(v) for v in value.split("/"))
    except ValueError:
        raise click.BadParameter(f"expected K/N such as 2/3, got {value!r}") from None
    if not 1 <= part <= parts:
        raise click.BadParameter(f"K must be within 1..N, got {value!r}")
    return part, parts


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
@click.option(
    "--tta",
    is_flag=True,
    help="Test-time mirroring: average each fine-pass tile over mirrors along y and x (the axes "
    "training flips): 4 passes, about 4x the fine pass's time.",
)
@click.option("--no-largest-component", is_flag=True, help="Keep every pancreas component.")
@click.option(
    "--no-lesion-in-pancreas", is_flag=True, help="Keep lesion voxels outside the pancreas."
)
@click.option(
    "--preview/--no-preview",
    default=True,
    show_default=True,
    help="Write <name>_preview.png per case (and overview.png for a folder).",
)
@click.option(
    "--output-type",
    type=click.Choice(["auto", "nifti", "dicom-seg", "both"]),
    default="auto",
    show_default=True,
    help="Masks as NIfTI, DICOM SEG (a DICOM series input only) or both; auto: both for a DICOM "
    "series, NIfTI otherwise.",
)
@click.option(
    "--part",
    default=None,
    metavar="K/N",
    help="Run only the K-th of every N scans (sorted by name), so that N processes share a "
    "folder; then `edgepanc summarize OUT`.",
)
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
    tta: bool,
    no_largest_component: bool,
    no_lesion_in_pancreas: bool,
    preview: bool,
    output_type: str,
    part: str | None,
    overwrite: bool,
) -> None:
    """Segment SCAN (an image file or DICOM series folder) or every scan in a folder.

    Writes NAME.nii.gz (and NAME.seg.dcm for a DICOM series), NAME.json and NAME_preview.png
    per scan, and subtype_results.csv, statistics.csv and overview.png across them; prints one
    line per case.
    Rerunning the same command continues an interrupted run: a case whose JSON says it finished,
    with the same model and input, is skipped, and the CSV is rebuilt from the case JSONs.
    Existing files edgepanc did not write are refused unless --overwrite; inputs and reference
    masks are never written over. Every check is made before anything is written.
    """
    from edgepanc.bundle import load_bundle
    from edgepanc.ensemble import is_ensemble, read_ensemble
    from edgepanc.inferers.mirroring import TRAINED_MIRRORS
    from edgepanc.io.atomic import remove_stale_temporaries
    from edgepanc.postprocessing import PostprocessConfig
    from edgepanc.runtime.model import load_model
    from edgepanc.runtime.outputs import plan_outputs
    from edgepanc.runtime.pipeline import RunConfig, run_cases
    from edgepanc.runtime.provenance import bundle_summary, describe_bundle, model_warnings
    from edgepanc.runtime.report import case_line, records_of, summary_table
    from edgepanc.runtime.roi import RoiConfig
    from edgepanc.runtime.scans import (
        check_output_folder,
        create_output_folder,
        discover_scans,
        remove_empty_folders,
        take_part,
    )
    from edgepanc.runtime.summary import write_overview
    from edgepanc.thermal import ThermalGuard, ThermalLimits

    try:
        batch = _tile_batch(tile_batch)
    except click.BadParameter as exc:
        raise click.BadParameter(str(exc), param_hint="--tile-batch") from None
    try:
        share = parse_part(part)
    except click.BadParameter as exc:
        raise click.BadParameter(str(exc), param_hint="--part") from None
    budget = parse_size(memory_budget) if memory_budget else None
    scans = discover_scans(scan)  # also refuses two scans that would write one mask name
    folder_run = scans != [scan]
    if share is not None:
        scans = take_part(scans, *share)
    nifti, dicom_seg = _output_kinds(output_type, scans)
    check_output_folder(out_dir)
    limits = ThermalLimits.from_max_temp(max_temp) if max_temp is not None else ThermalLimits()
    # said once per run at INFO: most machines running this have no sensor, nothing is wrong
    guard = ThermalGuard.discover(limits, require=require_thermal, missing_level=logging.INFO)
    bundle_path = resolve_bundle_path(model_path)
    loaded = load_model(bundle_path, backend, device, precision, allow_failed_variant)
    mirror_axes = TRAINED_MIRRORS if tta else ()
    if tta and loaded.model_id is not None:
        # a mirrored prediction is another model's: a finished case without it is redone
        loaded = dataclasses.replace(
            loaded, model_id=f"{loaded.model_id}+mirror-{''.join(mirror_axes)}"
        )
    bundle_dir = bundle_path if bundle_path.is_dir() else bundle_path.parent
    if is_ensemble(bundle_dir):
        # the members share their provenance's data; the record names the ensemble's folder
        model_info = bundle_summary(read_ensemble(bundle_dir).members[0], loaded.model_id)
        model_info |= {"path": str(bundle_dir.absolute()), "ensemble_members": loaded.members}
    else:
        model_info = bundle_summary(load_bundle(bundle_dir), loaded.model_id)
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
        nifti=nifti,
        dicom_seg=dicom_seg,
        model_info=model_info,
        mirror_axes=mirror_axes,
    )
    kinds = dataclasses.replace(config.kinds, overview=preview and folder_run)
    plan = plan_outputs(
        scans,
        out_dir,
        loaded.model_id,
        overwrite=overwrite,
        protected=[p for p in bundle_dir.rglob("*") if p.is_file()],
        kinds=kinds,
    )
    click.echo(describe_bundle(model_info))
    for warning in model_warnings(model_info, model_path is None, scans):
        log.warning(warning)
    created = create_output_folder(out_dir)
    for path in remove_stale_temporaries(out_dir):
        log.info("removed %s, left by an interrupted run", path)
    outcome = run_cases(plan, loaded, config, guard, on_case=lambda r: click.echo(case_line(r)))
    if kinds.overview and (outcome.reports or plan.skipped):
        write_overview(out_dir, {**plan.records, **records_of(outcome.reports)})
    remove_empty_folders(created)  # a run that wrote nothing leaves no folder behind
    if len(scans) == 1 and outcome.failures:  # a single scan: its one line is the error
        raise _SingleFailure(outcome.failures[0].message)
    click.echo(summary_table(outcome.reports, outcome.failures, outcome.skipped))
    if outcome.failures:
        sys.exit(1)


def _output_kinds(output_type: str, scans: list[Path]) -> tuple[bool, bool]:
    """(NIfTI, DICOM SEG) for ``--output-type``; a SEG asked for a scan that is no DICOM series
    is refused before anything runs."""
    if output_type == "auto":
        return True, True  # a SEG for each DICOM series among the scans
    if output_type != "nifti":
        not_dicom = [s for s in scans if not s.is_dir()]
        if not_dicom:
            raise InputError(
                not_dicom[0],
                f"--output-type {output_type} needs DICOM series inputs (a DICOM SEG references "
                "its source series); use --output-type nifti",
            )
    return output_type in ("nifti", "both"), output_type in ("dicom-seg", "both")


class _SingleFailure(EdgepancError):
    """Re-raises a single case's message so the CLI prints it as ``error: ...``."""
