"""The per-case runner behind ``edgepanc run``.

One case: read -> preprocess (canonical orientation, target spacing, CT normalisation) ->
coarse pass (optional: find the pancreas at half resolution) -> fine pass (streaming sliding
window over the ROI box, subtype from lesion-weighted tiles) -> post-process -> restore onto the
input's exact grid -> write mask, preview and case JSON. Each phase frees the previous phase's
buffers, which is what :mod:`edgepanc.runtime.budget` plans against.

A case either leaves all its outputs (mask, JSON, preview) or none: anything written before a
failure is removed again.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from tqdm.auto import tqdm

from edgepanc.errors import EdgepancError, InputError
from edgepanc.inferers.sliding_window import (
    BatchPolicy,
    classify_from_tiles,
    plan_sliding_window,
)
from edgepanc.inferers.streaming import slab_memory_bytes, streaming_sliding_window_inference
from edgepanc.io.volume import is_dicom_series_folder, looks_like_label, read_image, write_label
from edgepanc.memory import current_rss, peak_rss
from edgepanc.runtime.backoff import ThermalBackoff
from edgepanc.runtime.budget import BudgetPlan, VolumeSizes, plan_tile_batch
from edgepanc.runtime.postprocess import (
    PostprocessConfig,
    keep_main_components,
    mask_region_probabilities,
    postprocess_labels,
    voxel_volume_ml,
)
from edgepanc.runtime.preview import save_preview
from edgepanc.runtime.report import CaseFailure, CaseReport, case_json_path, write_case_json
from edgepanc.runtime.roi import (
    Box,
    RoiConfig,
    bounding_box,
    box_fraction,
    box_to_list,
    downsample,
    expand_box,
    scale_box,
    should_use_roi,
)
from edgepanc.thermal import ThermalGuard

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
CHANNEL_SUFFIX = "_0000"
MASK_SUFFIX = ".nii.gz"


@dataclass(frozen=True)
class RunConfig:
    """Options of one ``edgepanc run`` that apply to every case."""

    out_dir: Path
    step: float = 0.5
    tile_batch: int | None = None  # None: auto (largest batch the budget allows)
    memory_budget: int | None = None  # bytes
    roi: RoiConfig = field(default_factory=RoiConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    preview: bool = False
    overwrite: bool = False
    progress: bool = False


@dataclass
class LoadedModel:
    """A predictor with what the pipeline needs to know about the network behind it."""

    predictor: Any  # edgepanc.backends.Predictor
    plan: Any  # edgepanc.preprocessing.PreprocessingPlan
    activation_bytes_per_voxel: float
    baseline_rss: int  # process RSS once imports and the model are loaded
    artifact: str | None = None

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return tuple(int(p) for p in self.plan.patch_size)  # type: ignore[return-value]


@dataclass
class RunOutcome:
    reports: list[CaseReport]
    failures: list[CaseFailure]


# --- inputs and output names ---------------------------------------------------------------


def _image_stem(path: Path) -> str | None:
    for suffix in IMAGE_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return None


def mask_name_for(scan: Path) -> str:
    """The mask file name for a scan: ``quiz_037_0000.nii.gz`` -> ``quiz_037.nii.gz``.

    Any other image keeps its stem (``name.nrrd`` -> ``name.nii.gz``); a DICOM folder gives its
    folder name. Masks are always NIfTI.
    """
    stem = None if scan.is_dir() else _image_stem(scan)
    stem = stem or scan.name
    if stem.endswith(CHANNEL_SUFFIX):
        stem = stem[: -len(CHANNEL_SUFFIX)]
    return stem + MASK_SUFFIX


def discover_scans(path: Path) -> list[Path]:
    """The scans to run: ``path`` itself, or the images and DICOM series folders below it.

    Folders are searched recursively, so a data set split such as ``validation/`` with its
    ``subtype0..2/`` folders runs as one batch. In a folder, a file ``X.nii.gz`` beside
    ``X_0000.nii.gz`` is that image's reference mask (quiz and nnU-Net layouts) and is not run.
    Two scans that would write the same mask name are an error, since one would overwrite the other.
    """
    if not path.exists():
        raise InputError(path, "no such file or folder")
    if path.is_file() or is_dicom_series_folder(path):
        return [path]
    scans = _scans_below(path)
    if not scans:
        raise InputError(path, "no scans found (NIfTI, NRRD, MHA files or DICOM series folders)")
    seen: dict[str, Path] = {}
    for scan in scans:
        name = mask_name_for(scan)
        if name in seen:
            raise InputError(scan, f"would write the same mask {name} as {seen[name]}")
        seen[name] = scan
    return scans


def _scans_below(folder: Path) -> list[Path]:
    entries = sorted(folder.iterdir())
    files = [p for p in entries if p.is_file() and _image_stem(p) is not None]
    stems = {_image_stem(p) for p in files}
    scans = [p for p in files if f"{_image_stem(p)}{CHANNEL_SUFFIX}" not in stems]
    for sub in (p for p in entries if p.is_dir() and not p.name.startswith(".")):
        scans.extend([sub] if is_dicom_series_folder(sub) else _scans_below(sub))
    return scans


def check_output_folder(out_dir: Path) -> None:
    """Create ``out_dir`` if needed; InputError if it is not a writable folder."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "output folder is a file, not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".edgepanc_write_test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise InputError(
            out_dir, f"output folder is not writable ({exc.strerror or exc})"
        ) from None


# --- one case --------------------------------------------------------------------------------


class StageTimer:
    """Wall-clock seconds per named stage."""

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
    image: sitk.Image,
    preprocessed_shape: Sequence[int],
    model: LoadedModel,
    config: RunConfig,
    source: Path,
) -> BudgetPlan:
    """Tile batch for this case within ``config.memory_budget`` (BudgetError if none fits)."""
    sizes = VolumeSizes.from_shapes(
        image.GetSize(), image.GetSizeOfPixelComponent(), preprocessed_shape
    )
    slab = slab_memory_bytes(preprocessed_shape, model.patch_size, config.step)
    return plan_tile_batch(
        config.memory_budget,
        model.baseline_rss,
        sizes,
        slab,
        model.patch_size,
        model.activation_bytes_per_voxel,
        config.tile_batch,
        source=str(source),
    )


def estimate_preprocessed_shape(
    image: sitk.Image, target_spacing_zyx: Sequence[float]
) -> tuple[int, int, int]:
    """Shape (z, y, x) the image will have at target spacing in canonical orientation.

    Each image axis maps to the physical axis its direction vector points along most; canonical
    array axes (z, y, x) are physical (S/I, A/P, L/R).
    """
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    shape = [0, 0, 0]
    for axis, (size, spacing) in enumerate(zip(image.GetSize(), image.GetSpacing(), strict=True)):
        physical = int(np.argmax(np.abs(direction[:, axis])))  # 0: x, 1: y, 2: z
        array_axis = 2 - physical
        shape[array_axis] = max(1, round(size * spacing / target_spacing_zyx[array_axis]))
    return tuple(shape)  # type: ignore[return-value]


def coarse_roi(
    volume: np.ndarray,
    model: LoadedModel,
    config: RunConfig,
    policy: BatchPolicy,
    between_batches: Any,
) -> tuple[Box | None, int]:
    """Find the pancreas at ``1/factor`` resolution; return the box to tile (or None), tile count."""
    factor = config.roi.factor
    coarse = downsample(volume, factor)
    result = streaming_sliding_window_inference(
        coarse,
        model.predictor,
        model.patch_size,
        step_fraction=config.roi.coarse_step,
        tile_batch=policy,
        between_batches=between_batches,
    )
    spacing = tuple(float(s) for s in model.plan.target_spacing)
    # The box holds what post-processing would keep at coarse resolution (the largest organ
    # component and the large-enough others), so that a false-positive speck far from the
    # pancreas does not stretch it over the whole abdomen.
    organ = result.labels > 0
    if config.postprocess.largest_component:
        cleanup = config.postprocess
        coarse_spacing = tuple(s * factor for s in spacing)
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
    full = scale_box(box, coarse.shape, volume.shape)
    grown = expand_box(full, volume.shape, spacing, config.roi.margin_mm)
    # what the fine pass will tile: the whole-volume tiles covering the grown box
    return plan_sliding_window(volume.shape, model.patch_size, config.step, grown).region, tiles


def _remove_quietly(paths: Sequence[Path]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def run_case(
    scan: Path, model: LoadedModel, config: RunConfig, thermal_guard: ThermalGuard
) -> CaseReport:
    """Segment and classify one scan, write its outputs; raise EdgepancError on bad input."""
    from edgepanc.preprocessing import normalize_ct, resample_for_network, restore_label

    name = mask_name_for(scan)
    mask_path = config.out_dir / name
    if mask_path.exists() and not config.overwrite:
        raise InputError(mask_path, "mask already exists; pass --overwrite to replace it")
    if mask_path.resolve() == scan.resolve():
        raise InputError(scan, "the mask would overwrite its own input; choose another --out")
    timer = StageTimer()
    notes: list[str] = []
    if not thermal_guard.enabled:
        notes.append("no temperature sensor found: thermal protection is off")

    with timer("read"):
        image = read_image(scan)
    if looks_like_label(image):
        note = f"{scan}: looks like a label mask (only integer values 0..2), not a CT; continuing"
        log.warning(note)
        notes.append(note)
    spacing = tuple(float(s) for s in model.plan.target_spacing)
    memory_plan = plan_case_memory(
        image, estimate_preprocessed_shape(image, spacing), model, config, scan
    )
    with timer("preprocess"):
        resampled, grid = resample_for_network(image, model.plan)
        # The grid record keeps the geometry; the scan's voxels go before the normalised copy
        # is made, so the scan and two float32 volumes are never held at once.
        del image
        volume = normalize_ct(sitk.GetArrayViewFromImage(resampled), model.plan)
        del resampled

    policy = BatchPolicy(memory_plan.tile_batch)
    backoff = ThermalBackoff(thermal_guard, policy)
    box: Box | None = None
    roi: dict[str, Any] = {"mode": config.roi.mode, "used": False, "box": None, "coarse_tiles": 0}
    if should_use_roi(volume.shape, model.patch_size, config.roi):
        with timer("coarse"):
            box, coarse_tiles = coarse_roi(volume, model, config, policy, backoff)
        roi.update(used=box is not None, coarse_tiles=coarse_tiles, box=box_to_list(box))
        if box is None:
            roi["fallback"] = "coarse pass found no pancreas: tiled the whole volume"
            notes.append(roi["fallback"])
        else:
            roi["fraction"] = round(box_fraction(box, volume.shape), 4)
    with timer("fine"):
        result = streaming_sliding_window_inference(
            volume,
            model.predictor,
            model.patch_size,
            step_fraction=config.step,
            tile_batch=policy,
            between_batches=backoff,
            region=box,
            progress=config.progress,
            keep_probabilities=True,
        )
    with timer("postprocess"):
        labels = postprocess_labels(result.labels, spacing, config.postprocess)
        assert result.probabilities is not None
        soft_regions = mask_region_probabilities(result.probabilities, labels)
        probabilities = classify_from_tiles(result, labels, soft_regions)
    tile_count = len(result.tiles)
    del result
    preview_path = config.out_dir / f"{name[: -len(MASK_SUFFIX)]}_preview.png"
    written: list[Path] = []
    try:
        if config.preview:
            with timer("preview"):
                save_preview(volume, labels, spacing, preview_path, title=name)
            written.append(preview_path)
        del volume
        with timer("restore"):
            restored = restore_label(labels, grid, soft_regions)
        del labels, soft_regions
        restored_view = sitk.GetArrayViewFromImage(restored)
        ml = voxel_volume_ml(tuple(reversed(restored.GetSpacing())))
        pancreas_ml = float(np.count_nonzero(restored_view)) * ml
        lesion_ml = float(np.count_nonzero(restored_view == 2)) * ml
        with timer("write"):
            write_label(restored, mask_path)
            written.append(mask_path)
        report = CaseReport(
            name=name,
            input=str(scan),
            mask=str(mask_path),
            subtype=int(np.argmax(probabilities)),
            probabilities=[round(float(p), 6) for p in probabilities],
            pancreas_volume_ml=round(pancreas_ml, 3),
            lesion_volume_ml=round(lesion_ml, 3),
            timings_s={k: round(v, 4) for k, v in timer.seconds.items()},
            peak_memory_bytes=peak_rss(),
            backend=str(model.predictor.name),
            precision=str(model.predictor.precision),
            artifact=model.artifact,
            device=str(model.predictor.device),
            tile_batch=memory_plan.tile_batch,
            tile_count=tile_count,
            roi=roi,
            throttle_events=[e.to_dict() for e in backoff.events],
            memory_plan=memory_plan.to_dict(),
            notes=notes,
        )
        write_case_json(config.out_dir, report)
        written.append(case_json_path(config.out_dir, name))
    except BaseException:
        _remove_quietly(written)
        raise
    return report


def run_cases(
    scans: Sequence[Path], model: LoadedModel, config: RunConfig, thermal_guard: ThermalGuard
) -> RunOutcome:
    """Run every scan; a case that fails is recorded and the others go on."""
    outcome = RunOutcome([], [])
    for scan in tqdm(
        scans, desc="cases", unit="case", disable=not config.progress or len(scans) < 2
    ):
        try:
            outcome.reports.append(run_case(scan, model, config, thermal_guard))
        except EdgepancError as exc:
            log.debug("case failed: %s", exc)
            outcome.failures.append(CaseFailure(str(scan), str(exc)))
        except (RuntimeError, ValueError, OSError, MemoryError) as exc:
            # an unexpected failure in one case must not lose the others' results
            message = f"{scan}: {type(exc).__name__}: {exc}"
            log.debug("case failed: %s", message)
            outcome.failures.append(CaseFailure(str(scan), message))
    return outcome


def measure_baseline_rss() -> int:
    """Process RSS now (after imports and model load): the floor of every case's peak."""
    return current_rss()
