"""The per-case runner behind ``edgepanc run``.

One case runs in three steps, each freeing the previous one's buffers (the phases
:mod:`edgepanc.runtime.budget` plans against):

1. :func:`prepare_case`: read, plan the memory of the first pass;
2. :func:`segment_case`: coarse pass (optional: the scan resampled straight to 2-2.5 times the
   network's spacing, :func:`~edgepanc.runtime.roi.coarse_factors`, to find the pancreas), then
   the fine pass (streaming sliding window over the ROI box, the only part of the scan resampled
   onto the network's grid: :class:`~edgepanc.preprocessing.network_input.NetworkInput`);
3. finish: post-process and read the subtype
   (:func:`~edgepanc.postprocessing.finish_prediction`), resample the preview's three planes,
   then restore onto the input's exact grid and :func:`write_restored_case`: measure there
   (:mod:`edgepanc.runtime.measures`, with the part of the scan the mask can reach, kept for
   it), write the preview, the DICOM SEG, the mask and the case JSON.

No lesion kept, no subtype claimed: the JSON then says ``lesion_found: false`` and
``subtype: null``, still with the head's probabilities, and ``subtype_results.csv`` keeps the
head's argmax (``submission_subtype``) because the submission format needs a row per case.

A case either leaves all its outputs (mask, JSON, preview) or none: anything written before a
failure is removed again. :func:`run_cases` follows an :class:`~edgepanc.runtime.outputs.OutputPlan`
checked before the first case: it skips the cases an earlier run finished and rewrites
``subtype_results.csv`` and ``statistics.csv`` after every case, so a killed run loses at most the
case in progress.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from tqdm.auto import tqdm

from edgepanc.backends.base import Predictor
from edgepanc.errors import EdgepancError
from edgepanc.inferers.mirroring import MirroredPredictor
from edgepanc.inferers.sliding_window import BatchPolicy, SlidingWindowResult, plan_sliding_window
from edgepanc.inferers.streaming import slab_memory_bytes, streaming_sliding_window_inference
from edgepanc.inferers.tiling import bounding_box
from edgepanc.io.atomic import atomic_path
from edgepanc.io.volume import check_image, looks_like_label, read_image, write_label
from edgepanc.memory import peak_rss
from edgepanc.postprocessing import (
    FinishedPrediction,
    PostprocessConfig,
    finish_prediction,
    keep_main_components,
)
from edgepanc.preprocessing import GridRecord, restore_label, restored_box
from edgepanc.preprocessing.network_input import NetworkInput
from edgepanc.preprocessing.pipeline import reachable_box
from edgepanc.runtime.backoff import ThermalBackoff
from edgepanc.runtime.budget import BudgetPlan, VolumeSizes, plan_tile_batch
from edgepanc.runtime.measures import CaseMeasures, measure_labels
from edgepanc.runtime.model import LoadedModel
from edgepanc.runtime.outputs import OutputKinds, OutputPlan, file_sha256, scan_sha256
from edgepanc.runtime.preview import (
    PreviewPanel,
    draw_preview,
    panels_through,
    preview_centre,
    preview_title,
)
from edgepanc.runtime.report import (
    FINISHED,
    SUBTYPE_CSV,
    WRITING,
    CaseFailure,
    CaseReport,
    records_of,
    statistics_row,
    write_case_json,
    write_result_tables,
)
from edgepanc.runtime.roi import (
    Box,
    RoiConfig,
    box_fraction,
    box_to_list,
    coarse_factors,
    expand_box,
    scale_box,
    should_use_roi,
)
from edgepanc.runtime.scans import CaseOutputs, all_or_none
from edgepanc.thermal import ThermalGuard

log = logging.getLogger(__name__)

IN_MEMORY = "<image in memory>"  # what messages name for a scan given as an image, not a path


@dataclass(frozen=True)
class RunConfig:
    """Options of one ``edgepanc run`` that apply to every case.

    Example: ``RunConfig(out_dir=Path("masks"), roi=RoiConfig(mode="off"), preview=True)``.
    """

    out_dir: Path
    step: float = 0.5
    tile_batch: int | None = None  # None: auto (largest batch the budget allows)
    memory_budget: int | None = None  # bytes
    roi: RoiConfig = field(default_factory=RoiConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    preview: bool = False
    overwrite: bool = False
    progress: bool = False
    nifti: bool = True  # the NIfTI mask
    dicom_seg: bool = False  # a DICOM SEG beside it (a DICOM series input only)
    model_info: dict[str, Any] = field(default_factory=dict)  # see runtime.provenance
    # Mirror axes of test-time augmentation (--tta) in the fine pass; empty: none.
    mirror_axes: tuple[str, ...] = ()

    @property
    def kinds(self) -> OutputKinds:
        """The files each case writes, as :mod:`edgepanc.runtime.outputs` checks them."""
        return OutputKinds(nifti=self.nifti, seg=self.dicom_seg, preview=self.preview)


@dataclass
class RunOutcome:
    """The cases of one run that succeeded, those that failed, and how many were skipped."""

    reports: list[CaseReport]
    failures: list[CaseFailure]
    skipped: int = 0


# --- one case --------------------------------------------------------------------------------


class StageTimer:
    """Wall-clock seconds per named stage.

    Example: ``with timer("read"): image = read_image(path)`` adds the read's seconds to
    ``timer.seconds["read"]``.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


def plan_case_memory(
    source: NetworkInput,
    tiled_shape: Sequence[int],
    model: LoadedModel,
    config: RunConfig,
    scan: Path,
    coarse: bool = False,
    kept_input_voxels: int | None = None,
) -> BudgetPlan:
    """Tile batch for a pass over a ``tiled_shape`` volume of ``source`` within
    ``config.memory_budget`` (BudgetError if none fits). The ``coarse`` pass tiles without
    overlap and keeps its labels only (no probability maps to restore); ``kept_input_voxels``:
    the scan's voxels still held during the pass (None: all).

    Example: ``plan_case_memory(source, (120, 200, 200), model, config, scan).tile_batch`` -> ``4``.
    """
    image = source.image
    sizes = VolumeSizes.from_shapes(
        image.GetSize(),
        image.GetSizeOfPixelComponent(),
        tiled_shape,
        2 if coarse else 6,
        kept_input_voxels,
    )
    step = config.roi.coarse_step if coarse else config.step
    slab = slab_memory_bytes(tiled_shape, model.patch_size, step, keep_probabilities=not coarse)
    return plan_tile_batch(
        config.memory_budget,
        model.baseline_rss,
        sizes,
        slab,
        model.patch_size,
        model.activation_bytes_per_voxel,
        config.tile_batch,
        source=str(scan),
        engine=model.predictor.name,
        members=model.members,
    )


def coarse_roi(
    coarse: np.ndarray,
    coarse_spacing: Sequence[float],
    shape: Sequence[int],
    model: LoadedModel,
    config: RunConfig,
    policy: BatchPolicy,
    between_batches: Callable[[], None] | None,
) -> tuple[Box | None, int]:
    """Find the pancreas in ``coarse`` (the scan on the coarse grid, ``coarse_spacing``); return
    the box to tile on the ``shape`` grid (or None) and the coarse tile count.

    Example: ``coarse_roi(coarse, (4.0, 2.4, 2.4), source.shape, model, config, BatchPolicy(2),
    None)``
    -> ``((slice(40, 104), slice(96, 200), slice(120, 232)), 16)``.
    """
    result = streaming_sliding_window_inference(
        coarse,
        model.predictor,
        model.patch_size,
        step_fraction=config.roi.coarse_step,
        tile_batch=policy,
        between_batches=between_batches,
    )
    # The box holds what post-processing would keep at coarse resolution (the largest organ
    # component and the large-enough others), so that a false-positive speck far from the
    # pancreas does not stretch it over the whole abdomen.
    organ = result.labels > 0
    if config.postprocess.largest_component:
        cleanup = config.postprocess
        kept = keep_main_components(
            result.labels,
            coarse_spacing,
            cleanup.min_fraction,
            cleanup.min_volume_ml,
            cleanup.max_gap_mm,
        )
        organ = kept > 0
    box = bounding_box(organ)
    tiles = len(result.tiles)
    if box is None:
        return None, tiles
    full = scale_box(box, coarse.shape, shape)
    grown = expand_box(full, shape, model.target_spacing, config.roi.margin_mm)
    # what the fine pass will tile: the whole-volume tiles covering the grown box
    return plan_sliding_window(shape, model.patch_size, config.step, grown).region, tiles


def prepare_case(
    scan: Path | sitk.Image,
    model: LoadedModel,
    config: RunConfig,
    timer: StageTimer,
    notes: list[str],
) -> tuple[NetworkInput, BudgetPlan]:
    """Read ``scan`` and plan the memory of its first pass (the coarse one, when the ROI mode
    asks for it, else the whole grid's).

    ``scan`` may also be an image in memory (the Python API, :mod:`edgepanc.api`), checked as a
    read one is and left as it was. Returns the scan with its way to the network's grid
    (resampled pass by pass in :func:`segment_case`) and the memory plan. A scan that looks like
    a label mask adds a note and goes on.

    Example: ``source, plan = prepare_case(scan, model, config, StageTimer(), [])``.
    """
    if isinstance(scan, sitk.Image):
        # a copy (SimpleITK shares the voxels until written) so a direction fix stays ours
        image, scan = check_image(sitk.Image(scan), IN_MEMORY), Path(IN_MEMORY)
    else:
        with timer("read"):
            image = read_image(scan, max_bytes=config.memory_budget)
    if looks_like_label(image):
        note = f"{scan}: looks like a label mask (only integer values 0..2), not a CT; continuing"
        log.warning(note)
        notes.append(note)
    source = NetworkInput(image, model.plan)
    if should_use_roi(source.shape, model.patch_size, config.roi):
        factors = coarse_factors(source.shape, model.patch_size, config.roi)
        return source, plan_case_memory(
            source, source.coarse_shape(factors), model, config, scan, coarse=True
        )
    return source, plan_case_memory(source, source.shape, model, config, scan)


def segment_case(
    source: NetworkInput,
    model: LoadedModel,
    config: RunConfig,
    backoff: ThermalBackoff,
    timer: StageTimer,
    notes: list[str],
    scan: Path | str = IN_MEMORY,
) -> tuple[SlidingWindowResult, dict[str, Any], BudgetPlan | None]:
    """The coarse pass (when the ROI mode asks for it), then the fine pass over its box.

    Returns the fine pass's result (with its soft maps), the case JSON's ``roi`` record and,
    after a coarse pass, the memory plan of the fine pass over its box (its tile batch caps
    ``backoff.policy``'s; a budget the box does not fit raises BudgetError naming ``scan``).
    ``backoff`` runs between tile batches and holds the batch policy both passes follow.

    Example: ``result, roi, plan = segment_case(source, model, config, backoff, StageTimer(), [])``.
    """
    box: Box | None = None
    fine_plan: BudgetPlan | None = None
    roi: dict[str, Any] = {"mode": config.roi.mode, "used": False, "box": None, "coarse_tiles": 0}
    if should_use_roi(source.shape, model.patch_size, config.roi):
        factors = coarse_factors(source.shape, model.patch_size, config.roi)
        with timer("preprocess"):
            coarse = source.coarse(factors)
        with timer("coarse"):
            box, coarse_tiles = coarse_roi(
                coarse,
                source.coarse_spacing(factors),
                source.shape,
                model,
                config,
                backoff.policy,
                backoff,
            )
        del coarse
        roi.update(used=box is not None, coarse_tiles=coarse_tiles, box=box_to_list(box))
        if box is None:
            roi["fallback"] = "coarse pass found no pancreas: tiled the whole volume"
            notes.append(roi["fallback"])
        else:
            roi["fraction"] = round(box_fraction(box, source.shape), 4)
        tiled = source.shape if box is None else tuple(sl.stop - sl.start for sl in box)
        kept = None if box is None else reachable_box(box, source.grid)
        kept_voxels = None if kept is None else math.prod(sl.stop - sl.start for sl in kept)
        fine_plan = plan_case_memory(source, tiled, model, config, Path(scan), False, kept_voxels)
        backoff.policy.tile_batch = min(backoff.policy.tile_batch, fine_plan.tile_batch)
    with timer("preprocess"):
        volume = source.fine(box)
        if box is not None:
            source.release_outside(box)
    # The coarse pass only finds the box, so only the fine pass pays for the mirrors.
    fine = MirroredPredictor(model.predictor, config.mirror_axes) if config.mirror_axes else None
    with timer("fine"):
        result = streaming_sliding_window_inference(
            volume,
            fine or model.predictor,
            model.patch_size,
            step_fraction=config.step,
            tile_batch=backoff.policy,
            between_batches=backoff,
            region=box,
            progress=config.progress,
            keep_probabilities=True,
        )
    return result, roi, fine_plan


@dataclass(frozen=True)
class CaseRun:
    """How a case was run, as its JSON records it beside the prediction and the timings.

    Example: ``CaseRun(predictor, None, tile_batch=2, tile_count=48, roi={"mode": "off"})``.
    """

    predictor: Predictor
    artifact: str | None
    tile_batch: int
    tile_count: int
    roi: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    throttle_events: list[dict[str, Any]] = field(default_factory=list)
    memory_plan: dict[str, Any] | None = None
    classifier: bool = True  # False: no subtype is reported (the head was never trained)
    model_id: str | None = None
    model_info: dict[str, Any] = field(default_factory=dict)
    nifti: bool = True
    dicom_seg: bool = False
    mirror_axes: tuple[str, ...] = ()
    ensemble_members: int = 1  # models averaged on each tile
    lesion_margin_mm: float = 0.0  # how far the finishing step grew the lesion


def restore_mask(finished: FinishedPrediction, grid: GridRecord) -> sitk.Image:
    """``finished``'s labels as a uint8 mask on exactly the scan's own grid (what is written and
    measured: :func:`~edgepanc.runtime.measures.measure_labels`).

    Example: ``restore_mask(finished, grid).GetSize()`` -> the scan's size, e.g. ``(512, 512, 120)``.
    """
    return restore_label(finished.labels, grid, finished.region_probabilities)


def write_case_outputs(
    scan: Path,
    outputs: CaseOutputs,
    finished: FinishedPrediction,
    grid: GridRecord,
    run: CaseRun,
    timer: StageTimer,
    written: list[Path],
    panels: list[PreviewPanel] | None = None,
) -> CaseReport:
    """Restore ``finished`` onto the scan's grid, then :func:`write_restored_case`.

    Example: ``write_case_outputs(scan, outputs, finished, grid, run, timer, written).subtype``
    -> ``1``.
    """
    with timer("restore"):
        restored = restore_mask(finished, grid)
    probabilities = finished.subtype_probabilities
    return write_restored_case(scan, outputs, restored, probabilities, run, timer, written, panels)


def write_restored_case(
    scan: Path,
    outputs: CaseOutputs,
    restored: sitk.Image,
    probabilities: np.ndarray,
    run: CaseRun,
    timer: StageTimer,
    written: list[Path],
    panels: list[PreviewPanel] | None = None,
    image: sitk.Image | None = None,
    within: tuple[slice, slice, slice] | None = None,
    image_box: tuple[slice, slice, slice] | None = None,
) -> CaseReport:
    """Measure the ``restored`` mask on the scan's grid, write the preview (from ``panels``), the
    DICOM SEG (``run.dicom_seg``), the mask and the case JSON beside it; ``probabilities`` are the
    subtype head's; ``image`` is the scan as read (None: read it again); ``within``: the box
    outside which the mask is 0 (:func:`~edgepanc.preprocessing.restored_box`), when known;
    ``image_box``: ``image`` is only that box of the scan.

    ``written`` gets each path once it is written (see :func:`~edgepanc.runtime.scans.all_or_none`).
    The volumes, the lesion diameter and the mean HU are measured on the input grid, as the mask
    is written, with the HU of ``image``. The JSON goes in twice: saying ``writing``
    (with the digests of the input and every output) before the mask takes its name, ``finished``
    after, so that a kill in between leaves a mask its JSON owns but does not call finished,
    which the next run redoes.

    Example: ``write_restored_case(scan, outputs, mask, probabilities, run, timer, []).subtype``
    -> ``1``.
    """
    with timer("measure"):
        if image is None:
            image, image_box = read_image(scan), None
        measures = measure_labels(restored, image, within, image_box)
    report = _case_report(scan, outputs, probabilities, run, timer, measures)
    report.input_sha256 = scan_sha256(scan)
    if panels is not None:
        with timer("preview"):
            title = preview_title(outputs.name, statistics_row(report.to_dict()))
            written.append(draw_preview(panels, outputs.preview, title))
        report.preview_sha256 = file_sha256(outputs.preview)
    if run.dicom_seg:
        from edgepanc.runtime.dicom_seg import write_dicom_seg

        with timer("dicom_seg"):
            written.append(write_dicom_seg(restored, scan, outputs.seg))
        report.seg, report.seg_sha256 = str(outputs.seg), file_sha256(outputs.seg)
    with timer("write"):
        if run.nifti:
            with atomic_path(outputs.mask) as staged:
                write_label(restored, staged)
                report.mask_sha256 = file_sha256(staged)
                written.append(write_case_json(outputs.mask.parent, report))
                written.append(outputs.mask)
        else:
            report.mask = None
            written.append(write_case_json(outputs.mask.parent, report))
    timings = {k: round(v, 4) for k, v in timer.seconds.items()}  # now with the write
    report = dataclasses.replace(report, status=FINISHED, timings_s=timings)
    write_case_json(outputs.mask.parent, report)
    return report


def _case_report(
    scan: Path,
    outputs: CaseOutputs,
    probabilities: np.ndarray,
    run: CaseRun,
    timer: StageTimer,
    measures: CaseMeasures,
) -> CaseReport:
    head = run.classifier
    subtype = int(np.argmax(probabilities))
    # no lesion kept, no subtype claimed; the CSV row keeps the head's argmax (the format's need)
    return CaseReport(
        name=outputs.name,
        input=str(scan),
        mask=str(outputs.mask),
        subtype=subtype if head and measures.lesion_found else None,
        probabilities=[round(float(p), 6) for p in probabilities] if head else [],
        pancreas_volume_ml=measures.pancreas_ml,
        lesion_volume_ml=measures.lesion_ml,
        timings_s={k: round(v, 4) for k, v in timer.seconds.items()},
        peak_memory_bytes=peak_rss(),
        backend=str(run.predictor.name),
        precision=str(run.predictor.precision),
        artifact=run.artifact,
        device=str(run.predictor.device),
        tile_batch=run.tile_batch,
        tile_count=run.tile_count,
        roi=run.roi,
        mirror_axes=list(run.mirror_axes),
        ensemble_members=run.ensemble_members,
        lesion_margin_mm=run.lesion_margin_mm,
        throttle_events=run.throttle_events,
        memory_plan=run.memory_plan,
        notes=run.notes,
        status=WRITING,
        model_id=run.model_id,
        lesion_found=measures.lesion_found,
        lesion_diameter_mm=measures.lesion_diameter_mm,
        pancreas_mean_hu=measures.pancreas_mean_hu,
        lesion_mean_hu=measures.lesion_mean_hu,
        submission_subtype=subtype if head else None,
        model=run.model_info,
    )


def run_case(
    scan: Path,
    model: LoadedModel,
    config: RunConfig,
    thermal_guard: ThermalGuard,
    outputs: CaseOutputs | None = None,
) -> CaseReport:
    """Segment and classify one scan, write its outputs; raise EdgepancError on bad input.

    ``outputs`` come from a checked :class:`~edgepanc.runtime.outputs.OutputPlan`; without them
    the mask's name is checked here alone.

    Example: ``run_case(Path("ct_0000.nii.gz"), load_model(bundle), RunConfig(Path("out")),
    ThermalGuard.discover()).subtype`` -> ``1``.
    """
    if outputs is None:
        outputs = CaseOutputs.for_scan(scan, config.out_dir, config.overwrite)
    timer = StageTimer()
    notes: list[str] = []  # the missing temperature sensor is said once per run, not per case
    source, memory_plan = prepare_case(scan, model, config, timer, notes)
    backoff = ThermalBackoff(thermal_guard, BatchPolicy(memory_plan.tile_batch))
    result, roi, fine_plan = segment_case(source, model, config, backoff, timer, notes, scan)
    memory_plan = fine_plan or memory_plan
    with timer("postprocess"):
        finished = finish_prediction(
            result, model.target_spacing, config.postprocess, model.lesion_margins_mm
        )
    tile_count = len(result.tiles)
    del result  # the raw labels and soft maps: the restore phase is planned without them
    panels = None
    if config.preview:  # three planes resampled from the scan, not a whole HU volume
        centre = preview_centre(finished.labels)
        planes = source.hu_planes(centre)
        panels = panels_through(planes, finished.labels, centre, model.target_spacing)
    with all_or_none() as written:
        run = CaseRun(
            model.predictor,
            model.artifact,
            tile_batch=memory_plan.tile_batch,
            tile_count=tile_count,
            roi=roi,
            notes=notes,
            throttle_events=[e.to_dict() for e in backoff.events],
            memory_plan=memory_plan.to_dict(),
            classifier=model.classifier,
            model_id=model.model_id,
            model_info=config.model_info,
            nifti=config.nifti,
            dicom_seg=config.kinds.seg_for(scan),
            mirror_axes=config.mirror_axes,
            ensemble_members=model.members,
            lesion_margin_mm=finished.lesion_margin_mm,
        )
        with timer("restore"):
            restored = restore_mask(finished, source.grid)
            within = restored_box(finished.labels, source.grid)
        probabilities = finished.subtype_probabilities
        del finished
        return write_restored_case(
            scan,
            outputs,
            restored,
            probabilities,
            run,
            timer,
            written,
            panels,
            source.image,
            within,
            source.image_box,
        )


def run_cases(
    plan: OutputPlan,
    model: LoadedModel,
    config: RunConfig,
    thermal_guard: ThermalGuard,
    on_case: Callable[[CaseReport], None] | None = None,
) -> RunOutcome:
    """Run every case of ``plan`` not finished earlier; a case that fails is recorded and the
    others go on. ``subtype_results.csv`` and ``statistics.csv`` hold the plan's earlier cases
    and each case that finishes, rewritten after each one; ``on_case`` gets each finished report.

    Example: ``run_cases(plan_outputs(scans, out, model.model_id), model, config, guard).skipped``
    -> ``0``.
    """
    outcome = RunOutcome([], [], skipped=plan.skipped)
    records = dict(plan.records)
    todo = [case for case in plan.cases if not case.skip]
    if not todo and records:
        write_result_tables(plan.out_dir, records)
    if not model.classifier:
        log.warning(
            "this model was trained without subtype labels: no subtype is reported "
            "(subtype null in the case JSON, no row in %s)",
            SUBTYPE_CSV,
        )
    for case in tqdm(todo, desc="cases", unit="case", disable=not config.progress or len(todo) < 2):
        scan = case.scan
        try:
            report = run_case(scan, model, config, thermal_guard, case.outputs)
            outcome.reports.append(report)
            records.update(records_of([report]))
            write_result_tables(plan.out_dir, records)
            if on_case is not None:
                on_case(report)
        except EdgepancError as exc:
            log.debug("case failed: %s", exc)
            outcome.failures.append(CaseFailure(str(scan), str(exc)))
        except (RuntimeError, ValueError, OSError, MemoryError) as exc:
            # an unexpected failure in one case must not lose the others' results
            message = f"{scan}: {type(exc).__name__}: {exc}"
            log.debug("case failed: %s", message)
            outcome.failures.append(CaseFailure(str(scan), message))
    return outcome
