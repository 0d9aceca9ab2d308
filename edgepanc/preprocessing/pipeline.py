"""From a scan to the network's grid and back.

``preprocess_image`` reorients to the canonical orientation, resamples to the plan's spacing and
normalises intensities, recording every grid on the way in a :class:`GridRecord`.
``restore_label`` walks the same way back, so a prediction lands on exactly the input's grid.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import SimpleITK as sitk

from edgepanc.io.itk_buffer import writable_array
from edgepanc.preprocessing.normalization import normalize_ct
from edgepanc.preprocessing.orientation import (
    box_in_original_order,
    canonical_array_in_original_order,
    canonical_geometry,
    orientation_of,
    to_canonical,
)
from edgepanc.preprocessing.plan import PreprocessingPlan
from edgepanc.preprocessing.resampling import (
    SPACING_TOLERANCE,
    resample_onto,
    resampled_origin,
    resampled_size,
)

if TYPE_CHECKING:
    from edgepanc.inferers.probabilities import RegionProbabilities

GEOMETRY_TOLERANCE = 1e-4  # relative, as in the data set integrity check
# Input-grid voxels restored at a time: the resampled slab and its mask are two uint8 copies.
RESTORE_SLAB_VOXELS = 8_000_000


@dataclass(frozen=True)
class Geometry:
    """A voxel grid in SimpleITK terms: size, spacing and origin in (x, y, z), row-major direction."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, img: sitk.Image) -> Geometry:
        return cls(
            tuple(img.GetSize()),  # type: ignore[arg-type]
            tuple(img.GetSpacing()),  # type: ignore[arg-type]
            tuple(img.GetOrigin()),  # type: ignore[arg-type]
            tuple(img.GetDirection()),
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape (z, y, x) of an image on this grid."""
        return self.size[2], self.size[1], self.size[0]

    def matches(self, other: Geometry) -> bool:
        """Same size, and spacing, origin and direction equal within the relative tolerance."""
        if self.size != other.size:
            return False
        for a, b in (
            (self.spacing, other.spacing),
            (self.origin, other.origin),
            (self.direction, other.direction),
        ):
            a_, b_ = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
            scale = np.maximum(1.0, np.maximum(np.abs(a_), np.abs(b_)))
            if (np.abs(a_ - b_) > GEOMETRY_TOLERANCE * scale).any():
                return False
        return True

    def stamp(self, img: sitk.Image) -> sitk.Image:
        """Give ``img`` (same size) exactly this grid's spacing, origin and direction, in place."""
        if tuple(img.GetSize()) != self.size:
            raise ValueError(f"image size {img.GetSize()} does not match grid size {self.size}")
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Geometry:
        return cls(*(tuple(data[k]) for k in ("size", "spacing", "origin", "direction")))  # type: ignore[arg-type]


@dataclass(frozen=True)
class GridRecord:
    """The grids a scan passed through: as read, reoriented, and resampled for the network."""

    original: Geometry
    original_orientation: str
    canonical: Geometry
    resampled: Geometry

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GridRecord:
        return cls(
            Geometry.from_dict(data["original"]),
            str(data["original_orientation"]),
            Geometry.from_dict(data["canonical"]),
            Geometry.from_dict(data["resampled"]),
        )


def preprocess_image(img: sitk.Image, plan: PreprocessingPlan) -> tuple[np.ndarray, GridRecord]:
    """The network input for ``img`` as float32 (z, y, x), and the record needed to invert it:
    :func:`resample_for_network` then :func:`normalize_ct`.

    A caller that can let go of ``img`` (the runtime) calls the two itself and drops the image in
    between, so that the scan and two float32 volumes are never held at once.
    """
    resampled, grid = resample_for_network(img, plan)
    return normalize_ct(sitk.GetArrayViewFromImage(resampled), plan), grid


def resample_for_network(img: sitk.Image, plan: PreprocessingPlan) -> tuple[sitk.Image, GridRecord]:
    """``img`` on the canonical grid at the plan's spacing (float32, not yet normalised), and the
    record needed to invert it.

    Resampling works in physical space, so when the spacing changes the image is resampled
    straight from its stored orientation onto the canonical grid: the reoriented full-resolution
    copy (as large as the input) is never made.
    """
    grid = network_grid(img, plan)
    if grid.canonical.spacing == grid.resampled.spacing:
        resampled = sitk.Cast(to_canonical(img), sitk.sitkFloat32)  # reorder only, no interpolation
    else:
        resampled = _resample_image_onto(img, grid.resampled)
    return resampled, grid


def network_grid(img: sitk.Image, plan: PreprocessingPlan) -> GridRecord:
    """The grids ``img`` passes through on its way to the network, computed without resampling.

    Example: ``network_grid(ct, plan).resampled.shape`` -> ``(264, 302, 302)`` for a 512 x 512 x
    294 CT at 0.71 x 0.71 x 1.8 mm and a 2.0 x 1.2 x 1.2 mm plan.
    """
    canonical = Geometry(
        *canonical_geometry(img.GetSize(), img.GetSpacing(), img.GetOrigin(), img.GetDirection())
    )
    new_spacing = tuple(float(s) for s in reversed(plan.target_spacing))
    if np.allclose(canonical.spacing, new_spacing, rtol=SPACING_TOLERANCE, atol=0):
        resampled = canonical
    else:
        resampled = Geometry(
            resampled_size(canonical.size, canonical.spacing, new_spacing),
            new_spacing,  # type: ignore[arg-type]
            resampled_origin(canonical.origin, canonical.direction, canonical.spacing, new_spacing),
            canonical.direction,
        )
    return GridRecord(
        original=Geometry.of(img),
        original_orientation=orientation_of(img.GetDirection()),
        canonical=canonical,
        resampled=resampled,
    )


def resample_box_for_network(
    img: sitk.Image, grid: GridRecord, box: tuple[slice, slice, slice], pad: float | None = None
) -> np.ndarray:
    """The (z, y, x) ``box`` of ``img`` on its network grid (``grid.resampled``), float32 HU, not
    yet normalised: the values a whole-grid :func:`resample_for_network` has there (the same
    physical points, interpolated alike), at the cost of the box alone. ``pad``: the value
    outside the scan, its minimum by default (pass it to skip finding it again).

    Example: ``resample_box_for_network(ct, grid, (slice(0, 32), slice(0, 64), slice(0, 64)))
    .shape`` -> ``(32, 64, 64)``.
    """
    if grid.canonical.spacing == grid.resampled.spacing:
        # no interpolation: the reordered scan's own voxels
        return sitk.GetArrayViewFromImage(to_canonical(img))[box].astype(np.float32)
    part = _resample_image_onto(img, _box_geometry(grid.resampled, box), pad)
    return sitk.GetArrayFromImage(part)


def network_box_geometry(grid: GridRecord, box: tuple[slice, slice, slice]) -> Geometry:
    """The grid of the (z, y, x) ``box`` of ``grid``'s network grid: its spacing and direction,
    the origin moved to the box's first voxel.

    Example: ``network_box_geometry(grid, (slice(10, 11), slice(0, 302), slice(0, 302))).size``
    -> ``(302, 302, 1)``: one axial plane.
    """
    return _box_geometry(grid.resampled, box)


def _resample_image_onto(img: sitk.Image, grid: Geometry, pad: float | None = None) -> sitk.Image:
    return resample_onto(
        img, grid.size, grid.spacing, grid.origin, grid.direction, is_label=False, pad=pad
    )


def _label_box_on(
    label_zyx: np.ndarray, source: Geometry, target: Geometry
) -> tuple[slice, slice, slice] | None:
    """The (z, y, x) box of ``target`` that the labelled voxels of ``label_zyx`` can reach.

    Linear interpolation spreads a label at most one ``source`` voxel, so the box is the labels'
    bounding box grown by one source voxel, mapped into ``target`` indices (both grids share
    the direction). Outside it the restored map is exactly 0: only the box is resampled, which
    on a 512 x 512 x 300 CT turns seconds of resampling mostly background into a fraction.
    """
    occupied_zyx = [np.flatnonzero(label_zyx.any(axis=other)) for other in ((1, 2), (0, 2), (0, 1))]
    if any(axis.size == 0 for axis in occupied_zyx):
        return None
    box = tuple(slice(int(axis[0]), int(axis[-1]) + 1) for axis in occupied_zyx)
    return _box_on(box, source, target)  # type: ignore[arg-type]


def _box_on(
    box_zyx: tuple[slice, slice, slice], source: Geometry, target: Geometry
) -> tuple[slice, slice, slice] | None:
    """The (z, y, x) box of ``target`` that linear interpolation from the ``box_zyx`` voxels of
    ``source`` can reach: the box grown by one source voxel, in ``target`` indices."""
    low_xyz = np.array([sl.start for sl in reversed(box_zyx)], dtype=float) - 1
    high_xyz = np.array([sl.stop - 1 for sl in reversed(box_zyx)], dtype=float) + 1
    matrix = np.asarray(target.direction, dtype=float).reshape(3, 3)
    offset = matrix.T @ (np.asarray(source.origin) - np.asarray(target.origin))
    scale = np.asarray(source.spacing) / np.asarray(target.spacing)
    ends = [(offset / np.asarray(target.spacing)) + index * scale for index in (low_xyz, high_xyz)]
    start = np.clip(np.floor(np.minimum(*ends)).astype(int), 0, target.size)
    stop = np.clip(np.ceil(np.maximum(*ends)).astype(int) + 1, 0, target.size)
    if (stop <= start).any():
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(start[::-1], stop[::-1], strict=True))  # type: ignore[return-value]


def reachable_box(
    box_zyx: tuple[slice, slice, slice], grid: GridRecord
) -> tuple[slice, slice, slice] | None:
    """Where a mask restored from labels inside the network-grid ``box_zyx`` can be non-zero: a
    (z, y, x) box in the input's own voxel order (see :func:`restored_box`).

    Example: ``reachable_box((slice(60, 140), slice(60, 183), slice(60, 302)), grid)`` -> the
    box of the scan the fine pass's labels can land in.
    """
    box = _box_on(box_zyx, grid.resampled, grid.canonical)
    if box is None:
        return None
    return box_in_original_order(box, grid.canonical.shape, grid.original.direction)


def _box_geometry(grid: Geometry, box: tuple[slice, ...]) -> Geometry:
    """The grid of the (z, y, x) ``box`` of ``grid``: same spacing and direction, shifted origin."""
    start_xyz = np.array([box[2].start, box[1].start, box[0].start], dtype=float)
    matrix = np.asarray(grid.direction, dtype=float).reshape(3, 3)
    origin = np.asarray(grid.origin) + matrix @ (start_xyz * np.asarray(grid.spacing))
    size = (box[2].stop - box[2].start, box[1].stop - box[1].start, box[0].stop - box[0].start)
    return Geometry(
        tuple(int(s) for s in size),  # type: ignore[arg-type]
        grid.spacing,
        tuple(float(v) for v in origin),  # type: ignore[arg-type]
        grid.direction,
    )


def _resample_label_onto(label: sitk.Image, grid: Geometry) -> sitk.Image:
    return resample_onto(label, grid.size, grid.spacing, grid.origin, grid.direction, is_label=True)


def preprocess_label(label: sitk.Image, grid: GridRecord) -> np.ndarray:
    """``label`` (on the image's original grid) as uint8 (z, y, x) on the preprocessed grid."""
    if not Geometry.of(label).matches(grid.original):
        raise ValueError(
            f"label grid {Geometry.of(label)} does not match the image grid {grid.original}"
        )
    resampled = _resample_label_onto(to_canonical(label), grid.resampled)
    return sitk.GetArrayFromImage(resampled)


def restored_box(label_zyx: np.ndarray, grid: GridRecord) -> tuple[slice, slice, slice] | None:
    """Where :func:`restore_label`'s mask of ``label_zyx`` can be non-zero: a (z, y, x) box in
    the input's own voxel order (None: nowhere), so the mask's measures read that box alone.

    Example: ``restored_box(labels, grid)`` -> ``(slice(60, 140), slice(200, 330), ...)``.
    """
    box = _label_box_on(label_zyx, grid.resampled, grid.canonical)
    if box is None:
        return None
    return box_in_original_order(box, grid.canonical.shape, grid.original.direction)


def restore_label(
    label_zyx: np.ndarray,
    grid: GridRecord,
    probabilities: RegionProbabilities | None = None,
) -> sitk.Image:
    """Map a label map on the preprocessed grid back onto the original input grid (uint8).

    Each nested region (label >= 1: the whole pancreas, then label >= 2: the lesion) is resampled
    with linear interpolation and kept where it reaches one half. Without ``probabilities`` the
    region is a 0/255 mask: on the finer input grid the boundary then follows the region's
    outline instead of the coarse voxels' staircase (on phantoms it raised the whole-pancreas Dice
    of a perfect label restored from 3 x 2 x 2 mm from 0.938 to 0.950). With them (the network's
    soft maps, already limited to the kept regions: see
    :func:`edgepanc.postprocessing.labels.mask_region_probabilities`) the boundary falls where the
    network's probability crosses one half, as nnU-Net resamples probabilities before its argmax
    (on the CPU recipe's 12 validation phantoms: whole-pancreas Dice 0.8904 -> 0.8929, lesion
    0.3915 -> 0.4027). Only the box the labels can reach is resampled (see
    :func:`_label_box_on`). The axes are then permuted/flipped back; the result carries exactly
    the input's size, spacing, origin and direction.

    Example: ``restore_label(labels, grid).GetSize()`` -> the input's size, e.g. ``(512, 512, 300)``.
    """
    if tuple(label_zyx.shape) != grid.resampled.shape:
        raise ValueError(
            f"label shape {label_zyx.shape} does not match the preprocessed shape {grid.resampled.shape}"
        )
    target = grid.canonical
    # Only the window the labels can reach is built, a slab at a time (bounded temporaries even
    # when the labels cover the whole scan), straight into the mask SimpleITK allocated.
    image = grid.original.stamp(sitk.Image(list(grid.original.size), sitk.sitkUInt8))
    restored = writable_array(image)
    box = _label_box_on(label_zyx, grid.resampled, target)
    if box is None:
        return image
    regions = []
    for value in range(1, int(label_zyx.max(initial=0)) + 1):
        if probabilities is None:
            region = np.where(label_zyx >= value, np.uint8(255), np.uint8(0))
            regions.append(grid.resampled.stamp(sitk.GetImageFromArray(region)))
        else:
            region = probabilities.values[value - 1]
            regions.append(
                _box_geometry(grid.resampled, probabilities.box).stamp(
                    sitk.GetImageFromArray(region)
                )
            )
        del region
    plane = (box[1].stop - box[1].start) * (box[2].stop - box[2].start)
    step = max(1, RESTORE_SLAB_VOXELS // plane)
    for start in range(box[0].start, box[0].stop, step):
        slab_box = (slice(start, min(start + step, box[0].stop)), box[1], box[2])
        slab_grid = _box_geometry(target, slab_box)
        slab = np.zeros(slab_grid.shape, dtype=np.uint8)
        for value, on_network_grid in enumerate(regions, start=1):
            resampled = sitk.Resample(
                on_network_grid,
                list(slab_grid.size),
                sitk.Transform(),
                sitk.sitkLinear,
                list(slab_grid.origin),
                list(target.spacing),
                list(target.direction),
                0.0,
                sitk.sitkUInt8,
            )
            slab[sitk.GetArrayViewFromImage(resampled) >= 128] = value
            del resampled
        # permuted/flipped back in numpy: a view of the slab in the input's voxel order
        placed = box_in_original_order(slab_box, target.shape, grid.original.direction)
        restored[placed] = canonical_array_in_original_order(slab, grid.original.direction)
    del restored
    return image
