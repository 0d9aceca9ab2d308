"""One fixed orientation for every volume the network sees.

The canonical orientation is ``LPS`` in SimpleITK's (DICOM) convention, i.e. an identity direction
for axis-aligned scans. In numpy's (z, y, x) array order this means: z runs inferior -> superior,
y anterior -> posterior, x right -> left (the patient's), so a scan stored as RAS (NIfTI style),
LPS (DICOM style) or with swapped axes all reach the network the same way round.
Reorienting only permutes and flips axes (``sitk.DICOMOrient``); no voxel is interpolated, so it is
exactly invertible. An oblique scan keeps its small obliquity, with axes put in the nearest order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

CANONICAL_ORIENTATION = "LPS"
_AXIS_LETTERS = ("LR", "PA", "SI")  # canonical axis 0, 1, 2 and the letters that lie along it


def orientation_of(direction: Sequence[float]) -> str:
    """The three-letter orientation code (e.g. ``"RAS"``) of a row-major 3x3 direction."""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(tuple(direction))


def to_canonical(img: sitk.Image) -> sitk.Image:
    """``img`` with axes permuted/flipped into the canonical (LPS) orientation."""
    return sitk.DICOMOrient(img, CANONICAL_ORIENTATION)


def canonical_axes(direction: Sequence[float]) -> list[tuple[int, bool]]:
    """For each image axis (x, y, z): the canonical axis it becomes and whether it is flipped.

    Each axis goes to the physical axis its orientation letter names, flipped where the letter
    is the opposite of the canonical one.
    """
    axes = []
    for letter in orientation_of(direction):
        target = next(i for i, pair in enumerate(_AXIS_LETTERS) if letter in pair)
        axes.append((target, letter != CANONICAL_ORIENTATION[target]))
    return axes


def canonical_array_in_original_order(
    canonical_zyx: np.ndarray, direction: Sequence[float]
) -> np.ndarray:
    """A (z, y, x) array on the canonical grid as a view in the voxel order of an image with
    ``direction``: what :func:`from_canonical` does to the voxels, without copying them.

    Restoring a mask onto a 512 x 512 x 300 CT then needs no second full-size image for the
    reorientation (SimpleITK's ``DICOMOrient`` writes a new one).
    """
    axes = canonical_axes(direction)
    # array axis i is image axis 2 - i (z, y, x order); image axis a came from canonical axis t
    order = [2 - axes[2 - i][0] for i in range(3)]
    view = np.transpose(canonical_zyx, order)
    flipped = tuple(i for i in range(3) if axes[2 - i][1])
    return np.flip(view, flipped) if flipped else view


def box_in_original_order(
    box_zyx: Sequence[slice], canonical_shape: Sequence[int], direction: Sequence[float]
) -> tuple[slice, slice, slice]:
    """Where the (z, y, x) ``box`` of a canonical array lies in the voxel order of an image with
    ``direction``: :func:`canonical_array_in_original_order` of the box's contents belongs there.

    Example: ``box_in_original_order((slice(0, 2), slice(0, 4), slice(1, 3)), (10, 20, 30),
    RAS)`` -> ``(slice(0, 2), slice(16, 20), slice(27, 29))`` (RAS flips y and x).
    """
    axes = canonical_axes(direction)
    out = []
    for i in range(3):
        source = 2 - axes[2 - i][0]  # as in canonical_array_in_original_order
        start, stop = int(box_zyx[source].start), int(box_zyx[source].stop)
        size = int(canonical_shape[source])
        out.append(slice(size - stop, size - start) if axes[2 - i][1] else slice(start, stop))
    return out[0], out[1], out[2]


def canonical_geometry(
    size: Sequence[int],
    spacing: Sequence[float],
    origin: Sequence[float],
    direction: Sequence[float],
) -> tuple[tuple[int, ...], tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """Size, spacing, origin and direction :func:`to_canonical` would give, from the header alone.

    Lets the preprocessing resample straight from the stored orientation onto the canonical grid
    instead of first copying every voxel into it (a 512 x 512 x 300 CT: 150 MB less at peak).
    Axes map as :func:`canonical_axes` says; the new origin is the centre of the voxel that
    becomes the first.
    """
    matrix = np.asarray(direction, dtype=float).reshape(3, 3)
    new_size, new_spacing, columns = [0, 0, 0], [0.0, 0.0, 0.0], [None, None, None]
    first_index = np.zeros(3)
    for axis, (target, flip) in enumerate(canonical_axes(direction)):
        new_size[target] = int(size[axis])
        new_spacing[target] = float(spacing[axis])
        columns[target] = -matrix[:, axis] if flip else matrix[:, axis]
        first_index[axis] = int(size[axis]) - 1 if flip else 0
    new_origin = np.asarray(origin, dtype=float) + matrix @ (first_index * np.asarray(spacing))
    new_direction = np.stack(columns, axis=1)  # type: ignore[arg-type]
    return (
        tuple(new_size),
        tuple(new_spacing),
        tuple(float(v) for v in new_origin),
        tuple(float(v) for v in new_direction.ravel()),
    )


def from_canonical(img: sitk.Image, orientation: str) -> sitk.Image:
    """Undo :func:`to_canonical`: permute/flip ``img`` back into ``orientation``."""
    return sitk.DICOMOrient(img, orientation)


def canonical_spacing(
    spacing_xyz: Sequence[float], direction: Sequence[float]
) -> tuple[float, float, float]:
    """Spacing in (z, y, x) order after :func:`to_canonical`, from a header alone.

    Image axis i ends up along the physical axis its direction column points at most.
    """
    columns = np.abs(np.asarray(direction, dtype=float).reshape(3, 3))
    canonical_xyz = [0.0, 0.0, 0.0]
    for axis, spacing in enumerate(spacing_xyz):
        canonical_xyz[int(np.argmax(columns[:, axis]))] = float(spacing)
    return canonical_xyz[2], canonical_xyz[1], canonical_xyz[0]
