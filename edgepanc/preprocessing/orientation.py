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


def orientation_of(direction: Sequence[float]) -> str:
    """The three-letter orientation code (e.g. ``"RAS"``) of a row-major 3x3 direction."""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(tuple(direction))


def to_canonical(img: sitk.Image) -> sitk.Image:
    """``img`` with axes permuted/flipped into the canonical (LPS) orientation."""
    return sitk.DICOMOrient(img, CANONICAL_ORIENTATION)


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
