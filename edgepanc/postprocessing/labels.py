"""Post-processing of predicted label maps (0 background, 1 pancreas, 2 lesion).

Pure functions on uint8 ``(z, y, x)`` arrays, built on :mod:`scipy.ndimage`:

- :func:`keep_main_components` treats pancreas and lesion together as one organ (labels 1 + 2)
  and keeps its largest 26-connected component plus every other component of at least
  ``min_fraction`` of the largest's size, at least ``min_volume_ml`` *and* within ``max_gap_mm``
  of the largest (a pancreas split by a thin gap or a partial-volume break keeps both halves;
  specks of false positives, and organ-sized false positives elsewhere in the abdomen, go).
- :func:`restrict_lesion_to_pancreas` removes lesion components that neither lie inside nor touch
  a pancreas voxel: a lesion of the pancreas always borders pancreatic tissue in the reference
  labels of this data set.
- :func:`keep_main_lesions` turns lesion components smaller than ``lesion_min_fraction`` of the
  largest lesion into pancreas: the network leaves 5-10 small lesion specks inside the gland on
  most phantoms, and they are gland, not background (docs/measurements/cpu_recipe.md).
- :func:`mask_region_probabilities` makes the soft maps kept for restoring agree with the
  cleaned labels: what post-processing removed does not come back through them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from edgepanc.inferers.probabilities import RegionProbabilities
from edgepanc.inferers.tiling import bounding_box, grow_box
from edgepanc.networks.config import LESION_LABEL as LESION
from edgepanc.networks.config import PANCREAS_LABEL as PANCREAS

# 26-connectivity: diagonal neighbours belong together, as in the reference annotations
_FULL_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class PostprocessConfig:
    """Which clean-up steps run, and the component size thresholds.

    A secondary organ component survives only if it is at least ``min_fraction`` of the largest
    component, at least ``min_volume_ml`` millilitres *and* no further than ``max_gap_mm`` from
    the largest (None: any distance).

    Example: ``PostprocessConfig(max_gap_mm=None)`` keeps large components at any distance.
    """

    largest_component: bool = True
    lesion_in_pancreas: bool = True
    # A quarter of the largest drops the false organ components of whole-CT predictions without
    # costing the quiz-size cases (docs/measurements/coarse_to_fine.md).
    min_fraction: float = 0.25
    min_volume_ml: float = 1.0
    # A split gland's halves lie a few mm apart, organ-sized false positives 18 mm or more away
    # (docs/measurements/component_gap.md).
    max_gap_mm: float | None = 15.0
    # Lesion specks under a quarter of the largest lesion are gland, not a second lesion: making
    # them pancreas raised lesion DSC without moving whole DSC (docs/measurements/cpu_recipe.md).
    lesion_min_fraction: float = 0.25


DEFAULT_POSTPROCESS = PostprocessConfig()


def voxel_volume_ml(spacing_zyx: Sequence[float]) -> float:
    """Volume of one voxel in millilitres (spacing in mm).

    Example: ``voxel_volume_ml((2.0, 1.0, 0.5))`` -> ``0.001``.
    """
    return float(np.prod(np.asarray(spacing_zyx, dtype=np.float64))) / 1000.0


def keep_main_components(
    labels: np.ndarray,
    spacing_zyx: Sequence[float],
    min_fraction: float = PostprocessConfig.min_fraction,
    min_volume_ml: float = PostprocessConfig.min_volume_ml,
    max_gap_mm: float | None = PostprocessConfig.max_gap_mm,
) -> np.ndarray:
    """Zero every organ component (labels 1+2) except the largest and the large-enough others
    that lie within ``max_gap_mm`` of it.

    Example: a 6400-voxel gland and a 20-voxel speck at 1 mm spacing -> the gland alone.
    """
    components, sizes = connected_components(labels > 0)
    if len(sizes) <= 1:
        return labels.copy()
    min_voxels = max(min_fraction * sizes.max(), min_volume_ml / voxel_volume_ml(spacing_zyx))
    keep = sizes >= min_voxels
    main = int(sizes.argmax())
    if max_gap_mm is not None and np.count_nonzero(keep) > 1:
        keep &= component_gaps_mm(components, main + 1, len(sizes), spacing_zyx, max_gap_mm) <= (
            max_gap_mm
        )
    keep[main] = True  # the largest always stays, whatever the thresholds
    keep_lut = np.concatenate(([False], keep))
    return np.where(keep_lut[components], labels, 0).astype(labels.dtype, copy=False)


def component_gaps_mm(
    components: np.ndarray,
    main: int,
    count: int,
    spacing_zyx: Sequence[float],
    reach_mm: float,
) -> np.ndarray:
    """Distance (mm) from component ``main`` to the nearest voxel of each component 1..count
    (0 for ``main`` itself), measured only up to ``reach_mm``: beyond it the gap is ``inf``.

    The distance transform runs on ``main``'s bounding box grown by ``reach_mm``, not the whole
    grid, so its cost follows the gland, not the scan.

    Example: ``component_gaps_mm(components, 1, 3, (1.0, 1.0, 1.0), 15.0)`` ->
    ``array([0.0, 4.0, inf])`` for a second component 4 mm away and a third beyond 15 mm.
    """
    spacing = np.asarray(spacing_zyx, dtype=np.float64)
    margins = tuple(int(np.ceil(reach_mm / s)) + 1 for s in spacing)
    box = bounding_box(components == main)
    assert box is not None, "the main component has voxels"
    box = grow_box(box, components.shape, margins)
    near = components[box]
    distance = ndimage.distance_transform_edt(near != main, sampling=spacing)
    gaps = np.full(count, np.inf)
    present = np.unique(near[near > 0])
    gaps[present - 1] = ndimage.minimum(distance, near, present)
    gaps[gaps > reach_mm] = np.inf
    return gaps


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """26-connected components of ``mask`` (0 outside) and the voxel count of each, 1..n.

    Example: two diagonal voxels -> one component: ``connected_components(mask)[1]`` ->
    ``array([2])``.
    """
    components, count = ndimage.label(mask, structure=_FULL_CONNECTIVITY)
    return components, np.bincount(components.ravel(), minlength=count + 1)[1:]


def restrict_lesion_to_pancreas(labels: np.ndarray) -> np.ndarray:
    """Set lesion components that neither touch nor lie inside the pancreas to background.

    Example: a lesion blob ten voxels from the gland -> 0 there; one inside it stays 2.
    """
    lesion = labels == LESION
    if not lesion.any():
        return labels.copy()
    components, count = ndimage.label(lesion, structure=_FULL_CONNECTIVITY)
    # a lesion component touches the pancreas when its one-voxel dilation meets label 1
    near_pancreas = ndimage.binary_dilation(labels == PANCREAS, structure=_FULL_CONNECTIVITY)
    touching = np.unique(components[near_pancreas & lesion])
    keep_lut = np.zeros(count + 1, dtype=bool)
    keep_lut[touching[touching > 0]] = True
    out = labels.copy()
    out[lesion & ~keep_lut[components]] = 0
    return out


def keep_main_lesions(labels: np.ndarray, min_fraction: float) -> np.ndarray:
    """Relabel as pancreas every lesion component (26-connected) smaller than ``min_fraction``
    of the largest; the largest always stays. A new array.

    Example: lesions of 400 and 30 voxels with ``min_fraction=0.25`` -> the 30 become 1.
    """
    components, sizes = connected_components(labels == LESION)
    if len(sizes) <= 1 or min_fraction <= 0:
        return labels.copy()
    small = np.concatenate(([False], sizes < min_fraction * sizes.max()))
    out = labels.copy()
    out[small[components]] = PANCREAS
    return out


def postprocess_labels(
    labels: np.ndarray, spacing_zyx: Sequence[float], config: PostprocessConfig
) -> np.ndarray:
    """Apply the steps ``config`` switches on; the input array is never modified.

    The steps run on the labels' bounding box (grown by one voxel) only: everything outside it
    is background and stays so, and on a whole CT the box is a small part of the grid, where a
    whole-grid connected-components pass set the run's memory peak
    (docs/measurements/full_phantom_memory.md).

    Example: ``postprocess_labels(labels, (2.0, 1.2, 1.2), PostprocessConfig())`` -> the labels
    with false organ components and stray lesions removed.
    """
    out = np.zeros_like(labels)
    box = _grown_bounding_box(labels > 0)
    if box is None:
        return out
    cropped = labels[box]
    if config.largest_component:
        cropped = keep_main_components(
            cropped, spacing_zyx, config.min_fraction, config.min_volume_ml, config.max_gap_mm
        )
    if config.lesion_in_pancreas:
        cropped = restrict_lesion_to_pancreas(cropped)
    if config.lesion_min_fraction > 0:
        cropped = keep_main_lesions(cropped, config.lesion_min_fraction)
    out[box] = cropped
    return out


def mask_region_probabilities(
    probabilities: RegionProbabilities, labels: np.ndarray
) -> RegionProbabilities:
    """The soft maps zeroed beyond one voxel round the regions that ``labels`` keeps.

    ``labels`` is the post-processed label map of the whole volume. Each map keeps its values on
    its region (labels >= 1, labels == 2) grown by one voxel, so the interpolation that restores
    the mask still sees the network's probabilities just outside the boundary, while removed
    components and lesions outside the pancreas stay removed. A new object; the input is not
    modified.

    Example: ``mask_region_probabilities(result.probabilities, postprocess_labels(...))``
    zeroes the lesion map where post-processing removed the lesion.
    """
    box_labels = labels[probabilities.box]
    values = np.zeros_like(probabilities.values)
    for index, region in enumerate((box_labels >= PANCREAS, box_labels == LESION)):
        occupied = _grown_bounding_box(region)
        if occupied is None:
            continue
        near = ndimage.binary_dilation(region[occupied], structure=_FULL_CONNECTIVITY)
        values[(index, *occupied)] = np.where(near, probabilities.values[(index, *occupied)], 0)
    return RegionProbabilities(values, probabilities.box)


def _grown_bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The box of ``mask``'s true voxels grown by one voxel (what a 26-neighbourhood reaches)."""
    box = bounding_box(mask)
    return None if box is None else grow_box(box, mask.shape, (1,) * mask.ndim)
