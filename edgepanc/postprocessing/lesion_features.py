"""Features of the predicted lesion for a lesion-level subtype classifier (numpy and scipy only).

:func:`lesion_features` describes the largest connected lesion component (label 2) of a label map
and the gland round it, on the scan's own grid and in CT numbers (HU), as the runtime sees them
after inference: size, shape, attenuation statistics, the layer just inside its border, a rim of
gland just outside it, contrast with the gland and a gradient texture. The vector has a fixed
length and order (:data:`FEATURE_NAMES`) so that a model file can name what it was fitted on.

Shape features use voxel centres scaled by the spacing. The principal-axis moments add each
voxel's own second moment (``spacing**2 / 12`` per axis), so that a voxelised solid has the
moments of the solid it samples and a one-voxel lesion is still defined.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull

from edgepanc.networks.config import LESION_LABEL as LESION
from edgepanc.networks.config import PANCREAS_LABEL as PANCREAS

FEATURE_NAMES: tuple[str, ...] = (
    "has_lesion",  # 1.0 when any lesion voxel exists, else every lesion feature is 0
    "lesion_count",  # 26-connected lesion components
    "total_lesion_ml",  # all lesion components together
    "lesion_ml",  # the largest component; every feature below is about it
    "equivalent_diameter_mm",  # the diameter of a sphere of the same volume
    "longest_extent_mm",  # largest distance between two voxel centres (Feret diameter)
    "compactness",  # equivalent diameter / (longest extent + one voxel): lower when irregular
    "elongation",  # sqrt(second / first principal moment), 1 for a sphere
    "flatness",  # sqrt(third / first principal moment), 1 for a sphere
    "surface_ratio",  # border voxels (a face neighbour outside) / voxels
    "hu_mean",
    "hu_std",
    "hu_p10",
    "hu_p50",
    "hu_p90",
    "border_hu_mean",  # the lesion's own outermost voxel layer
    "interior_minus_border_hu",  # 0 when the lesion has no interior voxel
    "rim_hu_mean",  # a 2-voxel shell outside the lesion, within the gland where it touches it
    "rim_minus_lesion_hu",
    "pancreas_hu_mean",  # label 1 alone; 0 without pancreas voxels
    "lesion_minus_pancreas_hu",  # 0 without pancreas voxels
    "gradient_hu_per_mm",  # mean gradient magnitude inside the lesion: a simple texture measure
    "lesion_share",  # all lesion voxels / gland voxels (labels 1 and 2)
    "gland_ml",  # labels 1 and 2
)

_INDEX = {name: i for i, name in enumerate(FEATURE_NAMES)}
_FULL_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)
_FACE_CONNECTIVITY = ndimage.generate_binary_structure(3, 1)
RIM_VOXELS = 2
# Above this many border voxels the Feret diameter is searched among convex hull vertices only;
# below it, all pairs are cheaper than the hull.
_HULL_FROM = 400


def lesion_features(
    image_hu: np.ndarray, labels: np.ndarray, spacing_zyx: Sequence[float]
) -> np.ndarray:
    """The :data:`FEATURE_NAMES` vector (float64) of ``labels``' largest lesion component.

    ``image_hu`` and ``labels`` are (z, y, x) arrays of one shape (labels 0/1/2) and
    ``spacing_zyx`` their voxel spacing in mm. Without a lesion voxel every lesion feature is 0
    (``has_lesion`` too) while ``gland_ml`` and ``pancreas_hu_mean`` stay measured, since a
    classifier can still read the gland of a case whose lesion was missed.

    The rim is the part of a 2-voxel dilation shell round the lesion that lies in the pancreas
    (label 1): outside the gland the shell meets fat, vessels or bowel in proportions set by how
    close the lesion lies to the gland's edge, which says nothing about its subtype. Only a lesion
    whose shell touches no pancreas voxel takes the whole shell.

    Example::

        >>> labels = np.zeros((8, 8, 8), np.uint8); labels[1:7, 1:7, 1:7] = 1
        >>> labels[3:5, 3:5, 3:5] = 2
        >>> image = np.where(labels == 2, 20.0, 100.0)
        >>> f = lesion_features(image, labels, (1.0, 1.0, 1.0))
        >>> named = dict(zip(FEATURE_NAMES, f.tolist()))
        >>> named["lesion_ml"], named["lesion_minus_pancreas_hu"], named["has_lesion"]
        (0.008, -80.0, 1.0)
    """
    spacing = _check_inputs(image_hu, labels, spacing_zyx)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    out = np.zeros(len(FEATURE_NAMES), dtype=np.float64)
    # Everything below happens within reach of the labels: a whole CT's worth of temporaries
    # (an int32 component map of a 512 x 512 x 300 scan is 300 MB) would break the run's budget.
    reach = _labelled_box(labels, RIM_VOXELS + 1)
    if reach is None:
        return out
    image_hu, labels = image_hu[reach], labels[reach]
    gland_voxels = int(np.count_nonzero(labels))
    pancreas = labels == PANCREAS
    pancreas_hu = float(image_hu[pancreas].mean(dtype=np.float64)) if pancreas.any() else None
    out[_INDEX["gland_ml"]] = gland_voxels * voxel_ml
    out[_INDEX["pancreas_hu_mean"]] = 0.0 if pancreas_hu is None else pancreas_hu
    components, count = ndimage.label(labels == LESION, structure=_FULL_CONNECTIVITY)
    if count == 0:
        return out
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    largest = int(np.argmax(sizes))  # the lowest id among equals: a fixed choice
    box = _grown_box(ndimage.find_objects(components)[largest - 1], labels.shape, RIM_VOXELS + 1)
    lesion = components[box] == largest
    image = np.asarray(image_hu[box], dtype=np.float64)
    values = image[lesion]
    border = lesion & ~ndimage.binary_erosion(lesion, _FACE_CONNECTIVITY, border_value=0)
    interior = lesion & ~border
    rim = _rim(lesion, labels[box])
    rim_hu = float(image[rim].mean()) if rim.any() else float(values.mean())
    lesion_hu = float(values.mean())
    elongation, flatness = _axis_ratios(np.argwhere(lesion) * spacing, spacing)
    volume_mm3 = values.size * float(np.prod(spacing))
    out[_INDEX["has_lesion"]] = 1.0
    out[_INDEX["lesion_count"]] = float(count)
    out[_INDEX["total_lesion_ml"]] = float(sizes.sum()) * voxel_ml
    out[_INDEX["lesion_ml"]] = values.size * voxel_ml
    out[_INDEX["equivalent_diameter_mm"]] = (6.0 * volume_mm3 / np.pi) ** (1.0 / 3.0)
    extent = _feret_mm(np.argwhere(border) * spacing)
    out[_INDEX["longest_extent_mm"]] = extent
    # One voxel's width added: centre-to-centre distances fall short of the outer extent by it.
    out[_INDEX["compactness"]] = out[_INDEX["equivalent_diameter_mm"]] / (
        extent + float(np.prod(spacing)) ** (1.0 / 3.0)
    )
    out[_INDEX["elongation"]] = elongation
    out[_INDEX["flatness"]] = flatness
    out[_INDEX["surface_ratio"]] = np.count_nonzero(border) / values.size
    out[_INDEX["hu_mean"]] = lesion_hu
    out[_INDEX["hu_std"]] = float(values.std())
    percentiles = np.percentile(values, [10.0, 50.0, 90.0])
    out[[_INDEX["hu_p10"], _INDEX["hu_p50"], _INDEX["hu_p90"]]] = percentiles
    border_hu = float(image[border].mean())
    out[_INDEX["border_hu_mean"]] = border_hu
    if interior.any():
        out[_INDEX["interior_minus_border_hu"]] = float(image[interior].mean()) - border_hu
    out[_INDEX["rim_hu_mean"]] = rim_hu
    out[_INDEX["rim_minus_lesion_hu"]] = rim_hu - lesion_hu
    if pancreas_hu is not None:
        out[_INDEX["lesion_minus_pancreas_hu"]] = lesion_hu - pancreas_hu
    out[_INDEX["gradient_hu_per_mm"]] = _mean_gradient(image, lesion, spacing)
    out[_INDEX["lesion_share"]] = float(sizes.sum()) / gland_voxels
    return out


def _check_inputs(image: np.ndarray, labels: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    if image.ndim != 3 or image.shape != labels.shape:
        raise ValueError(f"image {image.shape} and labels {labels.shape} must be one 3D shape")
    values = np.asarray(spacing, dtype=np.float64)
    if values.shape != (3,) or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"spacing must be three positive numbers (mm), got {spacing}")
    return values


def _labelled_box(labels: np.ndarray, margin: int) -> tuple[slice, ...] | None:
    """The box of every non-zero label, grown by ``margin`` voxels; None when there is none."""
    box = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(np.any(labels, axis=others))
        if hit.size == 0:
            return None
        box.append(slice(max(0, hit[0] - margin), min(labels.shape[axis], hit[-1] + 1 + margin)))
    return tuple(box)


def _grown_box(box: tuple[slice, ...], shape: Sequence[int], margin: int) -> tuple[slice, ...]:
    return tuple(
        slice(max(0, s.start - margin), min(n, s.stop + margin))
        for s, n in zip(box, shape, strict=True)
    )


def _rim(lesion: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The 2-voxel shell round ``lesion`` outside every lesion voxel, within the gland if it
    touches it (see :func:`lesion_features`)."""
    shell = ndimage.binary_dilation(lesion, _FACE_CONNECTIVITY, iterations=RIM_VOXELS)
    shell &= labels != LESION
    in_gland = shell & (labels == PANCREAS)
    return in_gland if in_gland.any() else shell


def _axis_ratios(points_mm: np.ndarray, spacing: np.ndarray) -> tuple[float, float]:
    """(elongation, flatness): square roots of the principal moments' ratios to the largest."""
    centred = points_mm - points_mm.mean(axis=0)
    moments = centred.T @ centred / len(points_mm) + np.diag(spacing**2 / 12.0)
    smallest, middle, largest = np.linalg.eigvalsh(moments)  # ascending
    return float(np.sqrt(middle / largest)), float(np.sqrt(smallest / largest))


def _feret_mm(points_mm: np.ndarray) -> float:
    """Largest distance between two of ``points_mm``; the two ends are always hull vertices."""
    if len(points_mm) >= _HULL_FROM:
        # Joggled input gives a flat, one-slice lesion a hull too; Qhull's errors derive from
        # RuntimeError, and all pairs stay the exact answer if it fails.
        with contextlib.suppress(RuntimeError, ValueError):
            points_mm = points_mm[ConvexHull(points_mm, qhull_options="QJ").vertices]
    longest = 0.0
    for start in range(0, len(points_mm), 512):  # bounded memory for a large flat lesion
        chunk = points_mm[start : start + 512]
        squared = ((chunk[:, None, :] - points_mm[None, :, :]) ** 2).sum(axis=-1)
        longest = max(longest, float(squared.max()))
    return float(np.sqrt(longest))


def _mean_gradient(image: np.ndarray, lesion: np.ndarray, spacing: np.ndarray) -> float:
    """Mean HU gradient magnitude (HU/mm) over ``lesion``; axes one voxel long contribute 0."""
    squared = np.zeros(image.shape, dtype=np.float64)
    for axis in range(3):
        if image.shape[axis] > 1:
            squared += np.gradient(image, spacing[axis], axis=axis) ** 2
    return float(np.sqrt(squared[lesion]).mean())


__all__ = ["FEATURE_NAMES", "RIM_VOXELS", "lesion_features"]
