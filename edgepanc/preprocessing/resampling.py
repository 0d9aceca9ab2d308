"""Resampling to a target voxel spacing: linear for images, nearest neighbour for labels.

The new grid keeps the field of view: the outer faces of the first voxel stay where they were,
and the voxel count per axis is the old extent over the new spacing, rounded. This is what makes
going back to the original grid line up without a half-voxel shift.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

SPACING_TOLERANCE = 1e-6  # relative: spacings this close need no resampling


def resampled_size(
    size_xyz: Sequence[int], spacing_xyz: Sequence[float], new_spacing_xyz: Sequence[float]
) -> tuple[int, int, int]:
    """Voxel count per axis that covers the same extent at the new spacing (at least 1)."""
    extent = np.asarray(size_xyz, dtype=float) * np.asarray(spacing_xyz, dtype=float)
    counts = np.maximum(1, np.round(extent / np.asarray(new_spacing_xyz, dtype=float)))
    return tuple(int(c) for c in counts)  # type: ignore[return-value]


def resampled_origin(
    origin: Sequence[float],
    direction: Sequence[float],
    spacing_xyz: Sequence[float],
    new_spacing_xyz: Sequence[float],
) -> tuple[float, float, float]:
    """Origin (first voxel centre) of the new grid whose first voxel shares the old one's corner."""
    matrix = np.asarray(direction, dtype=float).reshape(3, 3)
    shift = (np.asarray(new_spacing_xyz, dtype=float) - np.asarray(spacing_xyz, dtype=float)) / 2
    return tuple(float(v) for v in np.asarray(origin, dtype=float) + matrix @ shift)  # type: ignore[return-value]


def resample_onto(
    img: sitk.Image,
    size: Sequence[int],
    spacing: Sequence[float],
    origin: Sequence[float],
    direction: Sequence[float],
    is_label: bool,
    pad: float | None = None,
) -> sitk.Image:
    """Resample ``img`` onto the grid given in SimpleITK (x, y, z) terms.

    Images come out float32 (linear interpolation, padded with ``pad``, by default their
    minimum, i.e. air); labels come out uint8 (nearest neighbour, padded with background).
    """
    if is_label:
        interpolator, pixel_type, pad = sitk.sitkNearestNeighbor, sitk.sitkUInt8, 0.0
    else:
        interpolator, pixel_type = sitk.sitkLinear, sitk.sitkFloat32
        pad = image_minimum(img) if pad is None else pad
    return sitk.Resample(
        img,
        [int(s) for s in size],
        sitk.Transform(),
        interpolator,
        [float(v) for v in origin],
        [float(v) for v in spacing],
        [float(v) for v in direction],
        pad,
        pixel_type,
    )


def image_minimum(img: sitk.Image) -> float:
    """The smallest value of ``img``: what resampling pads with beyond it (air, for a CT).

    Example: ``image_minimum(ct)`` -> ``-1024.0``.
    """
    stats = sitk.MinimumMaximumImageFilter()
    stats.Execute(img)
    return float(stats.GetMinimum())


def resample_to_spacing(
    img: sitk.Image,
    spacing_zyx: Sequence[float],
    is_label: bool,
    frame: tuple[Sequence[int], Sequence[float], Sequence[float], Sequence[float]] | None = None,
) -> sitk.Image:
    """Resample ``img`` to ``spacing_zyx`` (mm, numpy axis order), keeping its field of view.

    ``frame`` (size, spacing, origin, direction in SimpleITK terms) is the grid whose field of
    view and axis order the result takes, default ``img``'s own; giving a reoriented header
    resamples straight into that orientation (resampling works in physical space).
    """
    new_spacing = tuple(float(s) for s in reversed(spacing_zyx))
    if frame is None:
        frame = (img.GetSize(), img.GetSpacing(), img.GetOrigin(), img.GetDirection())
        if np.allclose(frame[1], new_spacing, rtol=SPACING_TOLERANCE, atol=0):
            return sitk.Cast(img, sitk.sitkUInt8 if is_label else sitk.sitkFloat32)
    size, old_spacing, origin, direction = frame
    return resample_onto(
        img,
        resampled_size(size, old_spacing, new_spacing),
        new_spacing,
        resampled_origin(origin, direction, old_spacing, new_spacing),
        direction,
        is_label,
    )
