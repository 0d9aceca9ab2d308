"""The Python API: segment a scan in memory, with the steps ``edgepanc run`` takes.

:func:`load_bundle` loads a model once; :func:`segment` prepares, segments and finishes a scan
through the runtime's own steps (:func:`~edgepanc.runtime.pipeline.prepare_case`,
:func:`~edgepanc.runtime.pipeline.segment_case`,
:func:`~edgepanc.postprocessing.finish_prediction`,
:func:`~edgepanc.runtime.pipeline.restore_mask`,
:func:`~edgepanc.runtime.measures.measure_labels`) and returns the mask on the input's grid,
so a notebook gets what ``edgepanc run`` writes without a file. Nothing is written to disk.

Example::

    import edgepanc
    model = edgepanc.load_bundle("bundles/pancreas")
    for path in ["ct_001.nii.gz", "ct_002.nii.gz"]:
        result = edgepanc.segment(path, model=model)
        print(result.pancreas_volume_ml, result.lesion_found, result.subtype)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from edgepanc.inferers.sliding_window import BatchPolicy
from edgepanc.memory import parse_size
from edgepanc.postprocessing import PostprocessConfig, finish_prediction
from edgepanc.preprocessing import restored_box
from edgepanc.runtime.backoff import ThermalBackoff
from edgepanc.runtime.measures import measure_labels
from edgepanc.runtime.model import LoadedModel, load_model
from edgepanc.runtime.pipeline import (
    IN_MEMORY,
    RunConfig,
    StageTimer,
    prepare_case,
    restore_mask,
    segment_case,
)
from edgepanc.runtime.roi import RoiConfig
from edgepanc.thermal import ThermalGuard, ThermalLimits


@dataclass(frozen=True)
class Result:
    """One segmented scan.

    ``mask``: uint8 (0 background, 1 pancreas, 2 lesion) on exactly the input's grid;
    ``subtype``: the most probable subtype, None when no lesion was kept (or the bundle's head was
    never trained); ``probabilities``: the subtype head's, also when there is no lesion;
    volumes (ml), the lesion's longest diameter (mm) and mean HU measured on ``mask`` as
    ``edgepanc run`` measures them; ``timings_s``: seconds per stage.

    Example: ``edgepanc.segment("ct.nii.gz").lesion_volume_ml`` -> ``1.84``.
    """

    mask: sitk.Image
    subtype: int | None
    probabilities: tuple[float, ...]
    pancreas_volume_ml: float
    lesion_volume_ml: float
    lesion_diameter_mm: float | None
    pancreas_mean_hu: float | None
    lesion_mean_hu: float | None
    timings_s: dict[str, float]
    backend: str
    device: str
    precision: str
    model_id: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def lesion_found(self) -> bool:
        """Whether any lesion voxel was kept.

        Example: ``edgepanc.segment(scan_without_lesion).lesion_found`` -> ``False``.
        """
        return self.lesion_volume_ml > 0

    def mask_array(self) -> np.ndarray:
        """The mask as a (z, y, x) uint8 array (a copy).

        Example: ``(result.mask_array() == 2).sum()`` -> the lesion's voxel count.
        """
        return sitk.GetArrayFromImage(self.mask)


def load_bundle(
    path: str | Path | None = None,
    backend: str = "auto",
    device: str = "auto",
    precision: str = "auto",
) -> LoadedModel:
    """Load a model bundle once, with the backend ``edgepanc run`` would choose, to segment many.

    ``path`` None takes the bundle ``edgepanc run`` takes without ``--model``.

    Example::

        model = edgepanc.load_bundle("bundles/pancreas", backend="onnxruntime")
        results = [edgepanc.segment(p, model=model) for p in paths]
    """
    from edgepanc.commands.run import resolve_bundle_path  # the one rule for a default bundle

    bundle = resolve_bundle_path(None if path is None else Path(path))
    return load_model(bundle, backend, device, precision)


def segment(
    image_or_path: sitk.Image | str | Path,
    model: LoadedModel | str | Path | None = None,
    *,
    step: float = 0.5,
    tile_batch: int | None = None,
    memory_budget: int | str | None = None,
    roi: str = "auto",
    largest_component: bool = True,
    lesion_in_pancreas: bool = True,
    max_temp: float | None = None,
) -> Result:
    """Segment pancreas and lesion in one CT and read the lesion's subtype, in memory.

    ``image_or_path``: a 3D SimpleITK image, or a NIfTI/NRRD/MHA file or DICOM series folder
    (read, never written). ``model``: a :func:`load_bundle` result (load once, segment many), a
    bundle folder, or None for ``edgepanc run``'s default bundle. The options are ``edgepanc
    run``'s: sliding-window ``step``, ``tile_batch`` (None: the most the budget allows),
    ``memory_budget`` (bytes or ``"1.5GB"``), ``roi`` (``auto``/``on``/``off``), the two
    post-processing switches and ``max_temp`` (degrees C). Bad input raises
    :class:`~edgepanc.errors.InputError`, a budget too small for the scan
    :class:`~edgepanc.errors.BudgetError`.

    Example::

        result = edgepanc.segment("ct.nii.gz", model="bundles/pancreas")
        sitk.WriteImage(result.mask, "mask.nii.gz")  # same mask as `edgepanc run` writes
        result.subtype, result.probabilities  # -> (1, (0.08, 0.85, 0.07))
    """
    loaded = model if isinstance(model, LoadedModel) else load_bundle(model)
    source = image_or_path if isinstance(image_or_path, sitk.Image) else Path(image_or_path)
    config = RunConfig(
        out_dir=Path("."),  # never written to: the steps below read and compute only
        step=step,
        tile_batch=tile_batch,
        memory_budget=parse_size(memory_budget)
        if isinstance(memory_budget, str)
        else memory_budget,
        roi=RoiConfig(mode=roi),
        postprocess=PostprocessConfig(
            largest_component=largest_component, lesion_in_pancreas=lesion_in_pancreas
        ),
    )
    limits = ThermalLimits() if max_temp is None else ThermalLimits.from_max_temp(max_temp)
    timer, notes = StageTimer(), []
    name = str(source) if isinstance(source, Path) else IN_MEMORY
    scan, memory_plan = prepare_case(source, loaded, config, timer, notes)
    backoff = ThermalBackoff(ThermalGuard.discover(limits), BatchPolicy(memory_plan.tile_batch))
    result, _, _ = segment_case(scan, loaded, config, backoff, timer, notes, name)
    with timer("postprocess"):
        finished = finish_prediction(
            result, loaded.target_spacing, config.postprocess, loaded.lesion_margins_mm
        )
    del result
    with timer("restore"):
        mask = restore_mask(finished, scan.grid)
    with timer("measure"):  # on the scan as read, as `edgepanc run` measures
        within = restored_box(finished.labels, scan.grid)
        measures = measure_labels(mask, scan.image, within, scan.image_box)
    del scan
    probabilities = tuple(float(p) for p in finished.subtype_probabilities)
    return Result(
        mask=mask,
        subtype=finished.subtype if loaded.classifier and measures.lesion_found else None,
        probabilities=probabilities if loaded.classifier else (),
        pancreas_volume_ml=measures.pancreas_ml,
        lesion_volume_ml=measures.lesion_ml,
        lesion_diameter_mm=measures.lesion_diameter_mm,
        pancreas_mean_hu=measures.pancreas_mean_hu,
        lesion_mean_hu=measures.lesion_mean_hu,
        timings_s=dict(timer.seconds),
        backend=str(loaded.predictor.name),
        device=str(loaded.predictor.device),
        precision=str(loaded.predictor.precision),
        model_id=loaded.model_id,
        notes=tuple(notes),
    )


__all__ = ["Result", "load_bundle", "segment"]
