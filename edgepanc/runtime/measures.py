"""What a case's mask measures on the input's grid: volumes, the lesion's longest diameter and the
mean CT number under each label, as the case JSON, the console and ``statistics.csv`` give them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from edgepanc.postprocessing import voxel_volume_ml

# Voxels summed at a time for the mean HU: two float64/intp temporaries of this size (16 MB).
MEAN_HU_SLAB_VOXELS = 1_000_000


@dataclass(frozen=True)
class CaseMeasures:
    """Volumes (ml), the kept lesion's longest diameter (mm) and mean HU of pancreas and lesion.

    Example: ``measure_labels(mask, image).lesion_found`` -> ``True``.
    """

    pancreas_ml: float  # labels 1 + 2: the lesion lies in the pancreas
    lesion_ml: float
    lesion_diameter_mm: float | None  # None: no lesion kept
    pancreas_mean_hu: float | None  # None: no pancreas (or no image to measure)
    lesion_mean_hu: float | None

    @property
    def lesion_found(self) -> bool:
        """Whether any lesion voxel was kept."""
        return self.lesion_ml > 0


Box = tuple[slice, slice, slice]


def label_boxes(labels: sitk.Image, within: Box | None = None) -> list[Box | None]:
    """The (z, y, x) bounding box of each label value 1, 2, ... of ``labels`` (None where a
    value is absent), searched only ``within`` a box known to hold every labelled voxel.

    Example: ``label_boxes(mask)[1]`` -> the lesion's box, e.g. ``(slice(40, 52), ...)``.
    """
    view = sitk.GetArrayViewFromImage(labels)
    if within is None:
        return list(ndimage.find_objects(view))
    starts = [sl.start for sl in within]
    return [
        None
        if box is None
        else tuple(slice(b.start + s, b.stop + s) for b, s in zip(box, starts, strict=True))
        for box in ndimage.find_objects(view[within])
    ]


def lesion_diameter_mm(labels: sitk.Image, boxes: list[Box | None] | None = None) -> float | None:
    """The longest diameter of the largest lesion (label 2) component, in mm: the longest
    distance between two of its voxels' centres (the Feret diameter); None without a lesion.

    The largest component alone, as a reader measures a lesion: over all components together,
    two specks far apart would read as one lesion of their distance.

    ``boxes``: :func:`label_boxes` of ``labels``, when already found.

    Example: ``lesion_diameter_mm(mask)`` -> ``21.4``.
    """
    # On the lesion's bounding box alone: over a 512 x 512 x 300 mask the component labels
    # (uint32) alone would take 300 MB. RegionOfInterest keeps the physical geometry.
    boxes = label_boxes(labels) if boxes is None else boxes
    if len(boxes) < 2 or boxes[1] is None:
        return None
    z, y, x = boxes[1]
    lesion = sitk.RegionOfInterest(
        labels,
        [x.stop - x.start, y.stop - y.start, z.stop - z.start],
        [x.start, y.start, z.start],
    )
    components = sitk.ConnectedComponent(sitk.Cast(lesion == 2, sitk.sitkUInt8), True)
    sizes = sitk.LabelShapeStatisticsImageFilter()
    sizes.Execute(components)
    largest = max(sizes.GetLabels(), key=sizes.GetNumberOfPixels)
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.ComputeFeretDiameterOn()  # on that component alone: larger borders would be slow
    shape.Execute(sitk.Cast(components == largest, sitk.sitkUInt8))
    return float(shape.GetFeretDiameter(1))


def mean_hu(
    image: sitk.Image, labels: sitk.Image, boxes: list[Box | None] | None = None
) -> tuple[float | None, float | None]:
    """Mean of ``image`` over the pancreas (labels 1 and 2) and over the lesion (label 2).

    Summed in numpy over the labels' bounding box only (ITK's label statistics take seconds on
    a 512 x 512 x 300 scan, most of it outside the pancreas), a slab of slices at a time, so
    that a mask covering the whole scan (a model that does not fit it) stays within the memory
    budget the run planned. ``boxes``: :func:`label_boxes` of ``labels``, when already found.

    Example: ``mean_hu(ct, mask)`` -> ``(42.1, 18.7)``.
    """
    label_view = sitk.GetArrayViewFromImage(labels)
    # one box per label value, straight on the uint8 view: no full-size temporary
    boxes = [b for b in (label_boxes(labels) if boxes is None else boxes) if b is not None]
    if not boxes:
        return None, None
    box = tuple(
        slice(min(b[axis].start for b in boxes), max(b[axis].stop for b in boxes))
        for axis in range(3)
    )
    image_view = sitk.GetArrayViewFromImage(image)
    plane = (box[1].stop - box[1].start) * (box[2].stop - box[2].start)
    step = max(1, MEAN_HU_SLAB_VOXELS // plane)
    counts = np.zeros(3, dtype=np.int64)
    sums = np.zeros(3, dtype=np.float64)
    for start in range(box[0].start, box[0].stop, step):
        slab = (slice(start, min(start + step, box[0].stop)), box[1], box[2])
        inside = label_view[slab].ravel()
        counts += np.bincount(inside, minlength=3)[:3]
        sums += np.bincount(inside, weights=image_view[slab].ravel(), minlength=3)[:3]
    pancreas = (sums[1] + sums[2]) / (counts[1] + counts[2])
    lesion = sums[2] / counts[2] if counts[2] else None
    return round(float(pancreas), 1), None if lesion is None else round(float(lesion), 1)


def measure_labels(
    labels: sitk.Image,
    image: sitk.Image | None,
    within: Box | None = None,
    image_box: Box | None = None,
) -> CaseMeasures:
    """Measure ``labels`` (uint8, 0/1/2) on its own grid; mean HU from ``image`` on that grid.
    ``within``: a (z, y, x) box outside which ``labels`` is known to be 0 (the restore's
    window): only it is read, not the whole mask. ``image_box``: ``image`` is only that box of
    the scan (it must hold ``within``); the labels are measured on the same box.

    Example: ``measure_labels(mask, read_image(scan)).pancreas_ml`` -> ``74.2``.
    """
    if image_box is not None:
        labels, within = _crop_to(labels, within, image_box)
    view = sitk.GetArrayViewFromImage(labels)
    view = view if within is None else view[within]
    ml = voxel_volume_ml(tuple(reversed(labels.GetSpacing())))
    counts = _label_counts(view)
    pancreas_ml = float(counts[1] + counts[2]) * ml
    lesion_ml = float(counts[2]) * ml
    del view
    boxes = label_boxes(labels, within)
    diameter = lesion_diameter_mm(labels, boxes) if lesion_ml > 0 else None
    pancreas_hu, lesion_hu = mean_hu(image, labels, boxes) if image is not None else (None, None)
    return CaseMeasures(
        pancreas_ml=round(pancreas_ml, 3),
        lesion_ml=round(lesion_ml, 3),
        lesion_diameter_mm=None if diameter is None else round(diameter, 1),
        pancreas_mean_hu=pancreas_hu,
        lesion_mean_hu=lesion_hu,
    )


def _label_counts(view: np.ndarray) -> np.ndarray:
    """Voxels of each label 0, 1, 2, a slab of slices at a time: a whole-mask comparison or
    bincount would take one or eight bytes per voxel of the scan at once."""
    counts = np.zeros(3, dtype=np.int64)
    if view.size == 0:
        return counts
    step = max(1, MEAN_HU_SLAB_VOXELS // max(1, view[0].size))
    for start in range(0, view.shape[0], step):
        counts += np.bincount(view[start : start + step].ravel(), minlength=3)[:3]
    return counts


def _crop_to(labels: sitk.Image, within: Box | None, box: Box) -> tuple[sitk.Image, Box | None]:
    """``labels`` cut to ``box`` (geometry kept), and ``within`` relative to it."""
    if within is not None and any(
        w.start < b.start or w.stop > b.stop for w, b in zip(within, box, strict=True)
    ):
        raise ValueError(f"the labelled box {within} reaches outside the scan part {box}")
    z, y, x = box
    size = [x.stop - x.start, y.stop - y.start, z.stop - z.start]
    cropped = sitk.RegionOfInterest(labels, size, [x.start, y.start, z.start])
    if within is None:
        return cropped, None
    shifted = tuple(
        slice(w.start - b.start, w.stop - b.start) for w, b in zip(within, box, strict=True)
    )
    return cropped, shifted  # type: ignore[return-value]


__all__ = ["CaseMeasures", "label_boxes", "lesion_diameter_mm", "mean_hu", "measure_labels"]
